"""The embedded default configuration (`sozu start` without `-c`) and its runtime directory.

It serves something useful on loopback: http://localhost:8080/ and tcp 127.0.0.1:8081 relay
to 127.0.0.1:8000 (`python -m http.server`'s port), udp 127.0.0.1:8053 relays DNS queries to
the local stub resolver at 127.0.0.53:53, and Prometheus metrics are on 127.0.0.1:9191.
Its command socket is `./sozu.sock`, relative to the current directory, so that `sozu status`
run without `-c` finds a daemon started without `-c` in the same directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

DEFAULT_CONFIG: Final = """\
# sozu's embedded default configuration: loopback only.
worker_count = 2

[metrics]
prometheus_address = "127.0.0.1:9191"

[[listeners]]
protocol = "http"
address = "127.0.0.1:8080"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:8081"

[[listeners]]
protocol = "udp"
address = "127.0.0.1:8053"

[clusters.web]
protocol = "http"
frontends = [
    { address = "127.0.0.1:8080", hostname = "localhost" },
    { address = "127.0.0.1:8080", hostname = "127.0.0.1" },
]
backends = [{ address = "127.0.0.1:8000", backend_id = "web-local" }]

[clusters.relay]
protocol = "tcp"
frontends = [{ address = "127.0.0.1:8081" }]
backends = [{ address = "127.0.0.1:8000", backend_id = "relay-local" }]

[clusters.dns]
protocol = "tcp"
frontends = [{ address = "127.0.0.1:8053" }]
backends = [{ address = "127.0.0.53:53", backend_id = "dns-stub" }]

[clusters.dns.udp]
responses = 1
"""


def runtime_dir() -> Path:
    """`$XDG_RUNTIME_DIR/sozu`, else `/tmp/sozu-<uid>` (the daemon creates it, mode 0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isabs(base):
        return Path(base) / "sozu"
    return Path("/tmp") / f"sozu-{os.getuid()}"


def default_command_socket() -> Path:
    """The command socket of the embedded default configuration: `./sozu.sock`, made absolute."""
    return Path.cwd() / "sozu.sock"
