"""Every command path of upstream's `sozu` CLI (its `bin/src/cli.rs`), written as upstream's
documentation writes it, run in order against one live daemon: each exits 0.

`start` is how the daemon runs; `top` has its own issue. `events` streams until interrupted,
so it is checked by the first event it prints. The commands without a test of their own
elsewhere (`connection-limit`, `metrics enable|disable` and the `metrics get` filters,
`state stats`, `cluster h2`, `--reset-alpn`) also have their effect checked here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme

from e2e.support.daemon import Daemon, DaemonFactory
from e2e.support.http_backends import listener
from e2e.support.net import free_port
from sozu.command.certificates import fingerprint

pytestmark = pytest.mark.e2e

# (command path as upstream names it, arguments): placeholders are filled in below.
TABLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("status", ("status",)),
    ("logging", ("logging", "info")),
    ("config check", ("config", "check")),
    ("listener http add", ("listener", "http", "add", "-a", "{http}")),
    ("listener http update", ("listener", "http", "update", "-a", "{http}",
                              "--front-timeout", "30")),
    ("listener http activate", ("listener", "http", "activate", "-a", "{http}")),
    ("listener https add", ("listener", "https", "add", "-a", "{https}",
                            "--tls-cipher-list", "ECDHE-RSA-AES128-GCM-SHA256",
                            "--answer-404", "{answer}")),
    ("listener https update", ("listener", "https", "update", "-a", "{https}",
                               "--alpn-protocols", "http/1.1")),
    ("listener https update --reset-alpn", ("listener", "https", "update", "-a", "{https}",
                                            "--reset-alpn")),
    ("listener https activate", ("listener", "https", "activate", "-a", "{https}")),
    ("listener tcp add", ("listener", "tcp", "add", "-a", "{tcp}")),
    ("listener tcp update", ("listener", "tcp", "update", "-a", "{tcp}",
                             "--back-timeout", "20")),
    ("listener tcp activate", ("listener", "tcp", "activate", "-a", "{tcp}")),
    ("listener udp add", ("listener", "udp", "add", "-a", "{udp}")),
    ("listener udp update", ("listener", "udp", "update", "-a", "{udp}",
                             "--max-flows", "100")),
    ("listener udp activate", ("listener", "udp", "activate", "-a", "{udp}")),
    ("listener list", ("listener", "list")),
    ("cluster add", ("cluster", "add", "-i", "web", "--load-balancing-policy", "ROUND_ROBIN",
                     "-s", "--send-proxy")),
    ("cluster add (second)", ("cluster", "add", "-i", "db")),
    ("cluster list", ("cluster", "list")),
    ("cluster list -i", ("cluster", "list", "-i", "web")),
    ("cluster list -d", ("cluster", "list", "-d", "a.test")),
    ("cluster h2 enable", ("cluster", "h2", "enable", "-i", "web")),
    ("cluster h2 disable", ("cluster", "h2", "disable", "-i", "db")),
    ("cluster health-check set", ("cluster", "health-check", "set", "-i", "web", "-u",
                                  "/health", "--interval", "30", "--timeout", "2",
                                  "--healthy-threshold", "2", "--unhealthy-threshold", "2",
                                  "--expected-status", "200")),
    ("cluster health-check list", ("cluster", "health-check", "list", "-i", "web")),
    ("cluster health-check remove", ("cluster", "health-check", "remove", "-i", "web")),
    ("backend add", ("backend", "add", "-i", "web", "--backend-id", "w1",
                     "-a", "127.0.0.1:9", "-s", "sticky-1", "-b", "false")),
    ("backend add (second)", ("backend", "add", "-i", "db", "--backend-id", "d1",
                              "-a", "127.0.0.1:9")),
    ("frontend http add", ("frontend", "http", "add", "-a", "{http}", "--hostname", "a.test",
                           "-p", "/api", "--method", "GET", "id", "web")),
    ("frontend http add (deny)", ("frontend", "http", "add", "-a", "{http}",
                                  "--hostname", "b.test", "deny")),
    ("frontend https add", ("frontend", "https", "add", "-a", "{https}",
                            "--hostname", "a.test", "id", "web")),
    ("frontend tcp add", ("frontend", "tcp", "add", "-i", "db", "-a", "{tcp}")),
    ("frontend udp add", ("frontend", "udp", "add", "-i", "db", "-a", "{udp}")),
    ("frontend list", ("frontend", "list")),
    ("frontend list --http -d", ("frontend", "list", "--http", "-d", "a.test")),
    ("certificate add", ("certificate", "add", "-a", "{https}", "--certificate", "{cert}",
                         "--certificate-chain", "{chain}", "--key", "{key}",
                         "--tls-versions", "TLS_V12")),
    ("certificate list", ("certificate", "list")),
    ("certificate list -d", ("certificate", "list", "-d", "a.test")),
    ("certificate list -w", ("certificate", "list", "-w")),
    ("certificate replace", ("certificate", "replace", "-a", "{https}",
                             "--new-certificate", "{cert2}", "--new-certificate-chain",
                             "{chain}", "--new-key", "{key2}", "-f", "{fingerprint}")),
    ("certificate remove", ("certificate", "remove", "-a", "{https}",
                            "--certificate", "{cert2}")),
    ("metrics get", ("metrics", "get")),
    ("metrics get -l", ("metrics", "get", "-l")),
    ("metrics get -n", ("metrics", "get", "-n",
                        "sozu_http_requests_total,sozu_worker_active_connections")),
    ("metrics get -k -b", ("metrics", "get", "-k", "web", "-b", "w1")),
    ("metrics get --no-clusters -w", ("metrics", "get", "--no-clusters", "-w")),
    ("metrics disable", ("metrics", "disable")),
    ("metrics enable", ("metrics", "enable")),
    ("metrics clear", ("metrics", "clear")),
    ("connection-limit set", ("connection-limit", "set", "5")),
    ("connection-limit show", ("connection-limit", "show")),
    ("connection-limit remove", ("connection-limit", "remove")),
    ("state save", ("state", "save", "-f", "{state}")),
    ("state load", ("state", "load", "-f", "{state}")),
    ("state save --format upstream", ("state", "save", "-f", "{upstream_state}",
                                      "--format", "upstream")),
    ("state load (upstream's format)", ("state", "load", "-f", "{upstream_state}")),
    ("state stats", ("state", "stats")),
    ("frontend http remove", ("frontend", "http", "remove", "-a", "{http}",
                              "--hostname", "a.test", "-p", "/api", "--method", "GET",
                              "id", "web")),
    ("frontend https remove", ("frontend", "https", "remove", "-a", "{https}",
                               "--hostname", "a.test", "id", "web")),
    ("frontend tcp remove", ("frontend", "tcp", "remove", "-i", "db", "-a", "{tcp}")),
    ("frontend udp remove", ("frontend", "udp", "remove", "-i", "db", "-a", "{udp}")),
    ("backend remove", ("backend", "remove", "-i", "web", "--backend-id", "w1",
                        "-a", "127.0.0.1:9")),
    ("cluster remove", ("cluster", "remove", "-i", "web")),
    ("listener http deactivate", ("listener", "http", "deactivate", "-a", "{http}")),
    ("listener http remove", ("listener", "http", "remove", "-a", "{http}")),
    ("listener https deactivate", ("listener", "https", "deactivate", "-a", "{https}")),
    ("listener https remove", ("listener", "https", "remove", "-a", "{https}")),
    ("listener tcp deactivate", ("listener", "tcp", "deactivate", "-a", "{tcp}")),
    ("listener tcp remove", ("listener", "tcp", "remove", "-a", "{tcp}")),
    ("listener udp deactivate", ("listener", "udp", "deactivate", "-a", "{udp}")),
    ("listener udp remove", ("listener", "udp", "remove", "-a", "{udp}")),
    ("reload", ("reload",)),
    ("reload -f", ("reload", "-f", "{config}")),
    ("upgrade --worker", ("-t", "0", "upgrade", "--worker", "{worker}")),
    ("upgrade", ("-t", "0", "upgrade")),
    ("status (after the upgrades)", ("status",)),
    ("shutdown", ("shutdown",)),
)  # fmt: skip

UPSTREAM_PATHS = {
    "status", "logging", "config check", "events", "reload", "upgrade", "shutdown",
    "state save", "state load", "state stats",
    "metrics enable", "metrics disable", "metrics clear", "metrics get",
    "connection-limit set", "connection-limit remove", "connection-limit show",
    "cluster add", "cluster remove", "cluster list", "cluster h2 enable", "cluster h2 disable",
    "cluster health-check set", "cluster health-check remove", "cluster health-check list",
    "backend add", "backend remove",
    "frontend http add", "frontend http remove", "frontend https add", "frontend https remove",
    "frontend tcp add", "frontend tcp remove", "frontend udp add", "frontend udp remove",
    "frontend list",
    *(f"listener {proxy} {verb}" for proxy in ("http", "https", "tcp", "udp")
      for verb in ("add", "remove", "activate", "deactivate", "update")),
    "listener list",
    "certificate list", "certificate add", "certificate remove", "certificate replace",
}  # fmt: skip


def _path_of(name: str) -> str:
    """`cluster add (second)` -> `cluster add`; `metrics get -l` -> `metrics get`."""
    words = name.split(" (")[0].split()
    return " ".join(w for w in words if not w.startswith("-"))


def test_the_table_covers_every_upstream_command_path() -> None:
    covered = {_path_of(name) for name, _ in TABLE} | {"events"}
    assert covered >= UPSTREAM_PATHS, sorted(UPSTREAM_PATHS - covered)


def _pem_files(directory: Path) -> dict[str, str]:
    authority = trustme.CA()
    first, second = authority.issue_cert("a.test"), authority.issue_cert("a.test", "www.a.test")
    files = {
        "cert": first.cert_chain_pems[0].bytes(),
        "key": first.private_key_pem.bytes(),
        "chain": authority.cert_pem.bytes(),
        "cert2": second.cert_chain_pems[0].bytes(),
        "key2": second.private_key_pem.bytes(),
    }
    paths = {}
    for name, pem in files.items():
        path = directory / f"{name}.pem"
        path.write_bytes(pem)
        paths[name] = str(path)
    paths["fingerprint"] = fingerprint(files["cert"].decode())
    return paths


def _first_event(daemon: Daemon) -> dict[str, Any]:
    """The first line `sozu -j events` prints: its subscription, acknowledged."""
    command = [sys.executable, "-m", "sozu.cli", "-c", str(daemon.config_path), "-j", "events"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as events:
        try:
            assert events.stdout is not None
            line = events.stdout.readline()
        finally:
            events.terminate()
    return dict(json.loads(line))


def test_every_upstream_command_path_exits_0_against_a_live_daemon(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    answer = tmp_path / "404.html"
    answer.write_text("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    values = {
        "http": f"127.0.0.1:{free_port()}",
        "https": f"127.0.0.1:{free_port()}",
        "tcp": f"127.0.0.1:{free_port()}",
        "udp": f"127.0.0.1:{free_port()}",
        "answer": str(answer),
        "state": str(tmp_path / "state.json"),
        "upstream_state": str(tmp_path / "upstream-state.json"),
        **_pem_files(tmp_path),
    }
    daemon = start_daemon(extra=listener(free_port()), worker_count=1)
    daemon.wait_running()
    values["config"] = str(daemon.config_path)
    values["worker"] = str(daemon.sozu_json("status")["workers"][0]["id"])

    assert _first_event(daemon)["kind"] == "EVENTS_SUBSCRIBED"

    for name, arguments in TABLE:
        filled = tuple(argument.format(**values) for argument in arguments)
        result = daemon.sozu(*filled, timeout=60)
        assert result.returncode == 0, (name, filled, result.stdout, result.stderr)
        if name == "shutdown":
            break
        _check_effect(daemon, name, values)


def _check_effect(daemon: Daemon, name: str, values: dict[str, str]) -> None:
    """What the steps without a test of their own must have done."""
    if name == "listener https update --reset-alpn":
        (https,) = daemon.sozu_json("listener", "list")["content"]["https"].values()
        assert https.get("alpn_protocols", ["h2", "http/1.1"]) == ["h2", "http/1.1"]
    elif name == "listener https update":
        (https,) = daemon.sozu_json("listener", "list")["content"]["https"].values()
        assert https["alpn_protocols"] == ["http/1.1"]
    elif name in ("cluster h2 enable", "cluster h2 disable"):
        cluster_id, wanted = ("web", True) if name.endswith("enable") else ("db", False)
        answer = daemon.sozu_json("cluster", "list", "-i", cluster_id)
        (info,) = answer["content"]["map"]["main"]["content"]["clusters"]
        assert info["configuration"].get("http2", False) is wanted
    elif name == "connection-limit set":
        assert _limit(daemon) == 5
    elif name == "connection-limit remove":
        assert _limit(daemon) == 0
    elif name == "state save --format upstream":
        records = Path(values["upstream_state"]).read_bytes().split(b"\n\0")
        assert records[-1] == b""
        kinds = {next(iter(json.loads(r)["content"]["request_type"])) for r in records[:-1]}
        assert {"ADD_CLUSTER", "ADD_BACKEND", "ADD_HTTP_FRONTEND", "ADD_UDP_LISTENER"} <= kinds
    elif name == "state stats":
        counts = daemon.sozu_json("state", "stats")["content"]["map"]
        assert counts["AddCluster"] >= 4  # two adds, two `cluster h2`
        assert counts["AddBackend"] >= 2
    elif name == "metrics get -l":
        names = daemon.sozu_json("metrics", "get", "-l")["content"]
        assert "sozu_worker_active_connections" in names["proxy_metrics"]
    elif name == "metrics get --no-clusters -w":
        report = daemon.sozu_json("metrics", "get", "--no-clusters", "-w")["content"]
        assert report.get("clusters", {}) == {}
        assert report.get("backends", {}) == {}
        assert report["main"]
        assert report["workers"]
    elif name == "metrics get -n":
        report = daemon.sozu_json(
            "metrics", "get", "-n", "sozu_http_requests_total,sozu_worker_active_connections"
        )["content"]
        assert {key.split("{")[0] for key in report["main"]} <= {
            "sozu_http_requests_total",
            "sozu_worker_active_connections",
        }
        assert "sozu_worker_active_connections" in report["main"]


def _limit(daemon: Daemon) -> int:
    return int(daemon.sozu_json("connection-limit", "show")["content"].get("limit", 0))
