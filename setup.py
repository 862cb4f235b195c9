"""The optional native OTLP decoder (``spanprism.ingest._otlp_native``); everything else is in pyproject.toml.

``optional=True``: without a C compiler or the Python headers the build still succeeds and the pure-Python
decoder (``spanprism.ingest.otlp_proto``) is used; ``SPANPRISM_REQUIRE_NATIVE=1`` makes that a test failure in CI.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "spanprism.ingest._otlp_native",
            sources=["ingest/_otlp_native.c"],
            extra_compile_args=[
                "-O2",
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
            ],
            optional=True,
        )
    ]
)
