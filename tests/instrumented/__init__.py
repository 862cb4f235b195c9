"""Real instrumentation libraries against a fake OpenAI server, captured as a Collector-style OTLP file.

``fake_openai`` serves chat completions with known tokens and timing, ``otlp_capture`` receives the spans the
instrumented client exports, ``child`` is the program each instrumentation runs in (its own process), and
``harness`` starts them all and collects what the children observed.
"""
