"""HTTP/2 client streams get what HTTP/1.1 requests get, through the real daemon (one daemon
for the module): routing by path prefix, sticky sessions, retries past a refused backend,
header edits both ways, the access log, the SNI / :authority binding (421), a body shorter
than its content-length refused, nghttp and h2load through the h2c listener and to an h2c
backend, and the h2 metrics (streams, frames by type, and the active streams gauge)."""

from __future__ import annotations

import random
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from e2e.support.daemon import Daemon, wait_for
from e2e.support.h2_parity import GatedBackend, H2Client
from e2e.support.h2c_backend import H2cBackend, h2c_backend, pattern
from e2e.support.http_backends import EchoHeaders, cluster, listener
from e2e.support.net import Series, free_port, prometheus_series
from e2e.support.nginx import Nginx, nginx_backends
from e2e.support.programs import require_program

pytestmark = pytest.mark.e2e

# Names of the main certificate; `other.test` has a certificate of its own.
NAMES = (
    "route.test",
    "sticky.test",
    "retry.test",
    "edit.test",
    "log.test",
    "slow.test",
    "h2c.test",
)
STICKY_IDS = {"one": "sticky-one", "two": "sticky-two"}
PROTOCOL_ERROR = 0x1
RUN_TIMEOUT = 30  # any one curl, nghttp or h2load run
METRICS_TIMEOUT = 5.0  # the supervisor polls its workers every second


@dataclass
class Site:
    https: int  # HTTPS listener (h2 by ALPN)
    http: int  # plain HTTP listener (h2c with prior knowledge)
    metrics: int
    ca_file: Path
    nginx: Nginx
    echo: EchoHeaders
    gate: GatedBackend
    h2c: H2cBackend
    access_log: Path
    daemon: Daemon

    def client(self, server_name: str) -> H2Client:
        return H2Client(self.https, server_name, self.ca_file)

    def listener_value(self, name: str, /, **labels: str) -> float:
        """`name` summed for the HTTPS listener, from a scrape now."""
        return listener_value(prometheus_series(self.metrics), name, self.https, **labels)


def listener_value(series: Series, name: str, port: int, /, **labels: str) -> float:
    """The sum of `name`'s samples for the listener on `port` with `labels`."""
    wanted = {("listener", f"127.0.0.1:{port}"), *labels.items()}
    return sum(v for (n, found), v in series.items() if n == name and wanted <= found)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("h2parity")
    ca = trustme.CA()
    pems: dict[str, tuple[str, str]] = {}
    for label, names in (("main", NAMES), ("other", ("other.test",))):
        issued = ca.issue_cert(*names)
        cert, key = tmp / f"{label}.crt", tmp / f"{label}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        pems[label] = (str(cert), str(key))
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    https, http, metrics = free_port(), free_port(), free_port()
    dead = free_port()  # nothing listens there: connections are refused
    access_log = tmp / "access.log"

    def front(
        hostname: str, path: str = "", *, plain: bool = False, **keys: object
    ) -> dict[str, object]:
        label = "other" if hostname == "other.test" else "main"
        found: dict[str, object] = {"address": f"127.0.0.1:{http if plain else https}"}
        found["hostname"] = hostname
        if path:
            found["path"] = path
        if not plain:
            found["certificate"], found["key"] = pems[label]
        return {**found, **keys}

    with ExitStack() as stack:
        nginx = stack.enter_context(
            nginx_backends(tmp / "nginx", "api", "static", "one", "two", "good", "logged")
        )
        echo = EchoHeaders("edit")
        stack.callback(echo.close)
        gate = GatedBackend("gate")
        stack.callback(gate.close)
        stack.callback(gate.release.set)  # never leave a handler waiting
        h2c = stack.enter_context(h2c_backend())
        # A top-level key first: the tables follow.
        config = f'access_logs_target = "{access_log}"\n'
        config += listener(https, "https") + listener(http)

        def backend(name: str, **keys: object) -> dict[str, object]:
            return {"address": nginx.address(name), "backend_id": name, **keys}

        config += cluster(
            "api",
            [front("route.test", "/api"), front("route.test", "/api", plain=True)],
            [backend("api")],
        )
        config += cluster(
            "static",
            [
                front("route.test", "/static"),
                front("route.test", "/static", plain=True),
                front("other.test"),
            ],
            [backend("static")],
        )
        config += cluster(
            "sticky",
            [front("sticky.test")],
            [backend(name, sticky_id=value) for name, value in STICKY_IDS.items()],
            sticky_session=True,
        )
        config += cluster(
            "retry",
            [front("retry.test")],
            [{"address": f"127.0.0.1:{dead}", "backend_id": "dead"}, backend("good")],
        )
        edits = [
            {"position": "request", "key": "x-added-request", "value": "from-sozu"},
            {"position": "request", "key": "x-strip-me", "value": ""},
            {"position": "response", "key": "x-added-response", "value": "to-client"},
            {"position": "response", "key": "x-connection", "value": ""},
            {"position": "both", "key": "x-both", "value": "b"},
        ]
        config += cluster(
            "edit",
            [front("edit.test", headers=edits)],
            [{"address": echo.address, "backend_id": "edit"}],
        )
        config += cluster(
            "logged",
            [front("log.test", "/logged", tags={"suite": "h2parity"})],
            [backend("logged")],
        )
        config += cluster(
            "gate", [front("slow.test")], [{"address": gate.address, "backend_id": "gate"}]
        )
        config += cluster(
            "h2back",
            [front("h2c.test"), front("h2c.test", plain=True)],
            [{"address": h2c.address, "backend_id": "h2c"}],
            http2=True,
        )
        config += f'[metrics]\nprometheus_address = "127.0.0.1:{metrics}"\n'
        directory = tmp / "daemon"
        directory.mkdir()
        daemon = Daemon.start(directory, extra=config)
        stack.callback(daemon.stop)
        yield Site(https, http, metrics, ca_file, nginx, echo, gate, h2c, access_log, daemon)


def _curl(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    curl = require_program("curl")
    resolve: list[str] = []
    for name in NAMES:
        resolve += ["--resolve", f"{name}:{site.https}:127.0.0.1"]
    command = [curl, "-sS", "--http2", "--cacert", str(site.ca_file), "--max-time", "20"]
    return subprocess.run(
        [*command, *resolve, *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def _grown(site: Site, name: str, before: float, by: float, **labels: str) -> float:
    """Wait until the listener's `name` reached `before + by`; its value."""

    def probe() -> float | None:
        value = site.listener_value(name, **labels)
        return value if value >= before + by else None

    return wait_for(probe, timeout=METRICS_TIMEOUT * 2, what=f"{name} {labels} + {by}")


# -- 1. routing


def test_streams_are_routed_by_path_prefix(site: Site) -> None:
    for path, name in (("/api/a?x=1", "api"), ("/static/b", "static")):
        result = _curl(
            site, "-w", "%{http_version} %{http_code}", f"https://route.test:{site.https}{path}"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{name}\n2 200", result.stdout
    # Concurrent streams of one connection, each to its own cluster (or to none: 404).
    with site.client("route.test") as client:
        paths = ["/api/x", "/static/y", "/api", "/elsewhere"]
        ids = [client.request("GET", "route.test", path) for path in paths]
        got = client.wait(ids)
    statuses = [got[i].status for i in ids]
    assert statuses == [200, 200, 200, 404], statuses
    assert [bytes(got[i].body) for i in ids[:3]] == [b"api\n", b"static\n", b"api\n"]
    assert [got[i].header("x-backend") for i in ids] == [["api"], ["static"], ["api"], []]


# -- 2. sticky sessions


def test_sticky_cookie_keeps_h2_streams_on_one_backend(site: Site) -> None:
    with site.client("sticky.test") as client:
        first = client.get("sticky.test", "/headers", [("cookie", "foo=bar")])
        assert first.status == 200
        (chosen,) = first.header("x-backend")
        assert first.header("set-cookie") == [f"SOZUBALANCEID={STICKY_IDS[chosen]}; Path=/"]
        # Without the cookie, balancing alternates: both backends serve.
        seen = {client.get("sticky.test", "/").header("x-backend")[0] for _ in range(4)}
        assert seen == {"one", "two"}, seen
        for name, value in STICKY_IDS.items():
            # The cookie in crumbs (RFC 9113 8.2.3): joined again, the sticky one removed.
            crumbs = [("cookie", "foo=bar"), ("cookie", f"SOZUBALANCEID={value}")]
            ids = [client.request("GET", "sticky.test", "/headers", crumbs) for _ in range(6)]
            got = client.wait(ids)
            for stream_id in ids:
                response = got[stream_id]
                assert response.status == 200
                assert response.header("x-backend") == [name], (name, response.headers)
                assert response.header("set-cookie") == [], "a valid cookie is not set again"
                assert "cookie: foo=bar\n" in response.body.decode(), response.body


# -- 3. retries


def test_a_refused_backend_is_retried_for_h2_streams(site: Site) -> None:
    before = site.listener_value("sozu_http_retries_total")
    with site.client("retry.test") as client:
        # One after the other: round robin offers the refusing backend within two requests.
        for n in range(4):
            response = client.get("retry.test", f"/r{n}")
            assert response.status == 200, response.headers
            assert bytes(response.body) == b"good\n"
            assert response.header("x-backend") == ["good"]
    result = _curl(
        site, "-w", " %{http_version} %{http_code}", f"https://retry.test:{site.https}/c"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "good\n 2 200", result.stdout
    _grown(site, "sozu_http_retries_total", before, 1)


# -- 4. header edits


def test_header_edits_apply_to_h2_streams_both_ways(site: Site, tmp_path: Path) -> None:
    head_file = tmp_path / "head.txt"
    marker = uuid.uuid4().hex
    result = _curl(
        site,
        "-D",
        str(head_file),
        "-H",
        "x-strip-me: secret",
        "-H",
        "x-custom: kept",
        f"https://edit.test:{site.https}/edit/{marker}?q=1",
    )
    assert result.returncode == 0, result.stderr
    (seen,) = [r for r in site.echo.requests if marker in r.request_line]
    assert seen.request_line == f"GET /edit/{marker}?q=1 HTTP/1.1"
    assert seen.header("host") == [f"edit.test:{site.https}"]
    assert seen.header("x-added-request") == ["from-sozu"]
    assert seen.header("x-both") == ["b"]
    assert seen.header("x-strip-me") == []
    assert seen.header("x-custom") == ["kept"]
    assert seen.header("x-forwarded-proto") == ["https"]
    assert seen.header("x-forwarded-for") == ["127.0.0.1"]
    (sozu_id,) = seen.header("sozu-id")
    lines = head_file.read_text().splitlines()
    assert lines[0].strip() == "HTTP/2 200", lines
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    assert headers.get("x-added-response") == ["to-client"]
    assert headers.get("x-both") == ["b"]
    assert "x-connection" not in headers, "deleted by a response edit"
    assert headers.get("x-backend") == ["edit"]
    assert headers.get("sozu-id") == [sozu_id]
    assert "connection" not in headers


# -- 5. access log

_ACCESS = re.compile(
    r"(?P<level>INFO-ACCESS|ERROR-ACCESS) WRK-\d+\t\[\S+ \S+ (?P<cluster>\S+) (?P<backend>\S+)\] "
    r".* \[(?P<tags>[^\]]*)\] - (?P<protocol>\S+) (?P<authority>\S+) (?P<method>\S+) "
    r"(?P<path>\S+) (?P<status>\S+)"
)


def test_the_access_log_records_h2_streams(site: Site) -> None:
    marker = uuid.uuid4().hex
    base = f"https://log.test:{site.https}"
    agent = ["-A", "parity h2 agent", "-w", "%{http_version} %{http_code}", "-o", "/dev/null"]
    requests = [
        ([f"{base}/logged/{marker}?q=1"], "GET", f"/logged/{marker}?q=1", "200"),
        (["-d", "abc", f"{base}/logged/{marker}-post"], "POST", f"/logged/{marker}-post", "200"),
        ([f"{base}/missing/{marker}"], "GET", f"/missing/{marker}", "404"),
    ]
    for args, _, _, status in requests:
        result = _curl(site, *agent, *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"2 {status}", result.stdout

    def lines() -> list[str] | None:
        try:
            found = [line for line in site.access_log.read_text().splitlines() if marker in line]
        except FileNotFoundError:
            return None
        return found if len(found) >= len(requests) else None

    found = wait_for(lines, timeout=METRICS_TIMEOUT, what="the access log lines")
    assert len(found) == len(requests), found
    records = []
    for line in found:
        match = _ACCESS.search(line)
        assert match is not None, line
        records.append(match.groupdict())
    records.sort(key=lambda r: (r["path"], r["method"]))
    expected = sorted(requests, key=lambda r: (r[2], r[1]))
    for record, (_, method, path, status) in zip(records, expected, strict=True):
        assert (record["method"], record["path"], record["status"]) == (method, path, status)
        assert record["authority"] == f"log.test:{site.https}"
        assert record["protocol"] == "https"
        assert "user-agent=parity_h2_agent" in record["tags"], record
        if status == "200":
            assert record["level"] == "INFO-ACCESS"
            assert (record["cluster"], record["backend"]) == ("logged", "logged")
            assert "suite=h2parity" in record["tags"], record
        else:
            assert record["cluster"] == "-"


# -- 6. SNI / :authority binding


def test_an_authority_the_served_certificate_does_not_cover_gets_421(site: Site) -> None:
    before = site.listener_value("sozu_http_sni_authority_mismatch_total")
    # other.test is routed (to `static`), but this connection's certificate is route.test's.
    with site.client("route.test") as client:
        ids = [
            client.request("GET", "other.test", "/"),
            client.request("GET", "route.test", "/static/ok"),
        ]
        got = client.wait(ids)
        misdirected, fine = (got[i] for i in ids)
        assert misdirected.status == 421, misdirected.headers
        assert misdirected.ended
        assert misdirected.reset is None
        assert misdirected.header("x-backend") == [], "never reached a backend"
        assert fine.status == 200
        assert bytes(fine.body) == b"static\n"
        # The connection outlives the 421: a later stream is served.
        assert client.get("route.test", "/static/later").status == 200
    with site.client("other.test") as client:
        covered = client.get("other.test", "/")
        assert covered.status == 200
        assert bytes(covered.body) == b"static\n"
    _grown(site, "sozu_http_sni_authority_mismatch_total", before, 1)


# -- 7. a body shorter than its content-length


def test_a_body_shorter_than_its_content_length_is_refused(site: Site) -> None:
    marker = uuid.uuid4().hex
    refused = site.listener_value("sozu_h2_refused_streams_total")
    errors = site.listener_value("sozu_h2_protocol_errors_total")
    post = [("content-length", "5")]
    with site.client("edit.test") as client:
        # END_STREAM on the HEADERS of a request declaring 5 bytes: that stream is reset.
        empty = client.request("POST", "edit.test", f"/empty/{marker}", post, end_stream=True)
        response = client.wait([empty])[empty]
        assert response.reset == PROTOCOL_ERROR, response
        assert response.headers == []

        # Counted as refused, and nothing is left of that stream: no active stream on the
        # listener (read from a snapshot taken after the refusal, this connection open).
        def counted() -> float | None:
            series = prometheus_series(site.metrics)
            if listener_value(series, "sozu_h2_refused_streams_total", site.https) < refused + 1:
                return None
            return listener_value(series, "sozu_h2_streams_active", site.https)

        assert wait_for(counted, timeout=METRICS_TIMEOUT * 2, what="the refusal counted") == 0
        # The connection goes on.
        after = client.get("edit.test", f"/after/{marker}")
        assert after.status == 200
        assert after.header("x-backend") == ["edit"]

        # 3 bytes of DATA, then END_STREAM: the connection ends with GOAWAY PROTOCOL_ERROR
        # (the h2 library's content-length check), the body is never relayed whole.
        short = client.request("POST", "edit.test", f"/short/{marker}", post, b"abc")
        response = client.wait([short])[short]
        assert response.goaway == PROTOCOL_ERROR, response
        assert response.headers == []
    _grown(site, "sozu_h2_protocol_errors_total", errors, 1)
    paths = [r.request_line for r in site.echo.requests if marker in r.request_line]
    assert paths == [f"GET /after/{marker} HTTP/1.1"], paths


# -- 8. nghttp and h2load


def test_nghttp_through_the_h2c_listener_to_the_h2c_backend_is_byte_exact(
    site: Site, tmp_path: Path
) -> None:
    nghttp = require_program("nghttp")
    base = [nghttp, "-H", ":authority: h2c.test"]
    result = subprocess.run(
        [*base, f"http://127.0.0.1:{site.http}/size/300000"],
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == pattern(300_000)
    upload = tmp_path / "upload.bin"
    body = random.Random(5).randbytes(150_000)
    upload.write_bytes(body)
    result = subprocess.run(
        [*base, "-d", str(upload), f"http://127.0.0.1:{site.http}/echo"],
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == body


def _h2load(*args: str, requests: int) -> str:
    h2load = require_program("h2load")
    result = subprocess.run(
        [h2load, "-n", str(requests), "-c", "2", "-m", "8", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{requests} succeeded, 0 failed, 0 errored" in result.stdout, result.stdout
    assert f"status codes: {requests} 2xx" in result.stdout, result.stdout
    return result.stdout


def test_h2load_https_to_the_h2c_backend_and_h2c_to_nginx(site: Site) -> None:
    streams = site.h2c.streams
    out = _h2load(
        f"--connect-to=127.0.0.1:{site.https}",
        f"https://h2c.test:{site.https}/size/2000",
        requests=300,
    )
    assert "Application protocol: h2" in out, out
    assert site.h2c.streams >= streams + 300
    out = _h2load(
        "-H", ":authority: route.test", f"http://127.0.0.1:{site.http}/api/load", requests=300
    )
    assert "Application protocol: h2c" in out, out


# -- 9. metrics


def test_h2_metrics_move_and_the_active_streams_gauge_follows_open_streams(site: Site) -> None:
    series = prometheus_series(site.metrics)
    streams = listener_value(series, "sozu_h2_streams_total", site.https)
    frames = {
        kind: listener_value(series, "sozu_h2_frames_received_total", site.https, type=kind)
        for kind in ("headers", "data", "settings")
    }
    # The gauge is exported for every listener, h2c included (nothing open there now).
    assert ("sozu_h2_streams_active", frozenset({("listener", f"127.0.0.1:{site.http}")})) in series
    with site.client("slow.test") as client:
        ids = [client.request("GET", "slow.test", f"/held/{n}") for n in range(3)]
        ids.append(client.request("POST", "slow.test", "/held/post", body=b"x" * 1000))
        wait_for(lambda: site.gate.heads >= 4 or None, timeout=10, what="the requests held")

        def active(count: int) -> bool | None:
            value = site.listener_value("sozu_h2_streams_active")
            return True if value == count else None

        # Held by the backend: the four streams are open.
        wait_for(lambda: active(4), timeout=METRICS_TIMEOUT, what="4 active streams")
        site.gate.release.set()
        got = client.wait(ids)
        assert [got[i].status for i in ids] == [200] * 4
        assert bytes(got[ids[-1]].body) == b"gated /held/post\n"
        # No content-length: the body went to the backend chunked, whole.
        (posted,) = [r for r in site.gate.requests if "/held/post" in r.request_line]
        assert posted.body == b"x" * 1000
        assert posted.header("transfer-encoding") == ["chunked"]
        # Answered: none is open any more, the connection still is.
        wait_for(lambda: active(0), timeout=METRICS_TIMEOUT, what="no active stream")
    _grown(site, "sozu_h2_streams_total", streams, 4)
    _grown(site, "sozu_h2_frames_received_total", frames["headers"], 4, type="headers")
    _grown(site, "sozu_h2_frames_received_total", frames["data"], 1, type="data")
    _grown(site, "sozu_h2_frames_received_total", frames["settings"], 2, type="settings")
