"""Fixtures of the UDP tests."""

from __future__ import annotations

import pytest

from sozu.worker.shell import udp_batching


@pytest.fixture(params=["batched", "per-datagram"])
def udp_syscalls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a shell test with recvmmsg/sendmmsg and with one call per datagram (the fallback)."""
    mode: str = request.param
    if mode == "per-datagram":
        monkeypatch.setenv("SOZU_UDP_MMSG", "0")
    else:
        monkeypatch.delenv("SOZU_UDP_MMSG", raising=False)
        if not udp_batching.available():
            pytest.skip("sozu_mmsg is not built here (`uv sync` builds it)")
    return mode
