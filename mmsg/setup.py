"""Build of the `sozu_mmsg` extension module (the project's metadata is in pyproject.toml)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sozu_mmsg",
            sources=["src/sozu_mmsg.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            # A machine that cannot build it still installs: the worker then makes one system
            # call per datagram (worker/src/sozu/worker/shell/udp_batching.py).
            optional=True,
        )
    ],
    py_modules=[],
)
