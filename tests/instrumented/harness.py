"""Runs every instrumented child at once against one fake OpenAI server, each exporting to its own receiver.

All children import and instrument in parallel (the slow part) and wait at a barrier; then each in turn makes its
calls, so a child's timed calls never compete with another child's imports or calls for the two CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from instrumented import child
from instrumented.fake_openai import FAIL_MODEL, REQUEST_MODEL
from instrumented.otlp_capture import OtlpCaptureServer

CHILD_SCRIPT = Path(child.__file__).resolve()
STARTUP_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class LibSpec:
    """One instrumentation run: the module that must be importable, extra environment, OTLP compression, and the
    interpreter of the child (``python``: another venv's, for a library whose pins clash with the project's)."""

    lib: str
    module: str
    env: dict[str, str] = field(default_factory=dict)
    gzip: bool = False
    script: Path = CHILD_SCRIPT
    python: Path | None = None

    def importable(self) -> bool:
        if self.python is None:
            return importlib.util.find_spec(self.module) is not None
        if not self.python.exists():
            return False
        probe = [
            str(self.python),
            "-c",
            f"import importlib.util as u, sys; sys.exit(u.find_spec({self.module!r}) is None)",
        ]
        return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0


LIBS: tuple[LibSpec, ...] = (
    LibSpec("openai_v2", "opentelemetry.instrumentation.openai_v2"),
    LibSpec(
        "openai_v2_latest",
        "opentelemetry.instrumentation.openai_v2",
        env={"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental"},
        gzip=True,
    ),
    LibSpec("openinference", "openinference.instrumentation.openai", gzip=True),
    LibSpec("openllmetry", "opentelemetry.instrumentation.openai"),
)


@dataclass(slots=True)
class ChildRun:
    """What one child left behind: the capture file, the receiver's counts and the client's own observations."""

    lib: str
    capture: Path
    service_name: str
    observed: dict[str, Any]
    exports: int
    spans: int
    encodings: list[str]
    stderr: str

    def call(self, name: str) -> dict[str, Any]:
        """The client's observation of one call: ``non_stream``, ``stream`` or ``error``."""
        return next(c for c in self.observed["calls"] if c["call"] == name)


def _child_env(spec: LibSpec) -> dict[str, str]:
    # Drop the developer's own OTEL_* settings: they would change what the libraries emit or where they send it.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "TRACELOOP_", "OPENAI_", "ANTHROPIC_", "LOGFIRE_", "LANGFUSE_"))}  # fmt: skip
    env.update(spec.env)
    return env


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


class _Child:
    """A running child process; stdout is read line by line in a thread (so waits can time out), stderr to a file."""

    def __init__(self, spec: LibSpec, cfg: dict[str, Any], stderr_path: Path) -> None:
        self.spec = spec
        self.stderr_path = stderr_path
        with stderr_path.open("w") as stderr:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [str(spec.python or sys.executable), str(spec.script), json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=_child_env(spec),
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=_pump, args=(self.proc.stdout, self.lines), daemon=True).start()

    def _fail(self, what: str) -> RuntimeError:
        tail = self.stderr_path.read_text()[-3000:]
        return RuntimeError(f"{self.spec.lib}: {what}; child stderr:\n{tail}")

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix``; raises (with the child's stderr) on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise self._fail(f"no {prefix!r} line within {timeout:.0f} s") from None
            if line is None:
                raise self._fail(f"exited with {self.proc.wait()} before {prefix!r}")
            if line.startswith(prefix):
                return line[len(prefix) :]

    def go(self) -> dict[str, Any]:
        """Release the child from the barrier and wait for its result (its spans are exported by then)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.close()
        result = json.loads(self.wait_for(child.RESULT, RUN_TIMEOUT_S))
        self.proc.wait(timeout=RUN_TIMEOUT_S)
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _config(spec: LibSpec, base_url: str, receiver: OtlpCaptureServer, model: str) -> dict[str, Any]:
    return {
        "lib": spec.lib,
        "base_url": base_url,
        "otlp_endpoint": receiver.endpoint,
        "gzip": spec.gzip,
        "service_name": f"spanprism-it-{spec.lib}",
        "model": model,
        "fail_model": FAIL_MODEL,
    }


def run_children(specs: list[LibSpec], server: Any, workdir: Path, *, base_url: str | None = None,
                 model: str = REQUEST_MODEL) -> dict[str, ChildRun]:  # fmt: skip
    """Run one child per spec against ``server`` (``base_url``: its URL as the client wants it); returns each
    lib's run once its spans are in its capture file."""
    receivers = {s.lib: OtlpCaptureServer(workdir / f"{s.lib}.otlp.pb").start() for s in specs}
    children: list[_Child] = []
    results: dict[str, dict[str, Any]] = {}
    url = base_url or server.base_url
    try:
        for s in specs:
            cfg = _config(s, url, receivers[s.lib], model)
            children.append(_Child(s, cfg, workdir / f"{s.lib}.stderr.txt"))
        for c in children:
            c.wait_for(child.READY, STARTUP_TIMEOUT_S)
        for c in children:  # one at a time: a child's timed calls never share the 2 cores with another's
            results[c.spec.lib] = c.go()
    finally:
        for c in children:
            c.stop()
        for r in receivers.values():
            r.stop()
    return {
        c.spec.lib: ChildRun(
            lib=c.spec.lib,
            capture=receivers[c.spec.lib].path,
            service_name=f"spanprism-it-{c.spec.lib}",
            observed=results[c.spec.lib],
            exports=receivers[c.spec.lib].exports,
            spans=receivers[c.spec.lib].spans,
            encodings=receivers[c.spec.lib].encodings,
            stderr=c.stderr_path.read_text(),
        )
        for c in children
    }
