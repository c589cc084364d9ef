"""Invalid configurations are rejected with the key path of the offending value."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sozu.command.config import ConfigError, load_config

HTTP = '[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:8080"\n'
HTTPS = (
    '[[listeners]]\nprotocol = "https"\naddress = "127.0.0.1:8443"\n'
    'certificate = "tls/listener.pem"\nkey = "tls/listener.key"\n'
)
TCP = '[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:9000"\n'
APP = '[clusters.app]\nprotocol = "http"\n'

CASES: list[tuple[str, str, str, str]] = [
    # (id, TOML, key path, part of the message)
    (
        "header name the state refuses",
        HTTP + 'sozu_id_header = "bad: x"\n',
        "listeners[0].sozu_id_header",
        "is not a header name",
    ),
    (
        "h2 knob the state refuses",
        HTTP + "h2_max_ping_per_window = 0\n",
        "listeners[0].h2_max_ping_per_window",
        "must be greater than 0",
    ),
    (
        "shrink ratio the state refuses",
        HTTP + "h2_stream_shrink_ratio = 1\n",
        "listeners[0].h2_stream_shrink_ratio",
        "at least 2",
    ),
    ("top-level typo", "worker_cout = 3\n", "worker_cout", "unknown key 'worker_cout' (did you"),
    (
        "nested typo",
        APP + 'backends = [{ adress = "127.0.0.1:1" }]\n',
        "clusters.app.backends[0].adress",
        "unknown key 'adress' (did you mean 'address'?)",
    ),
    (
        "typo in udp.health",
        '[clusters.dns]\nprotocol = "tcp"\n[clusters.dns.udp.health]\nrize = 2\n',
        "clusters.dns.udp.health.rize",
        "unknown key 'rize'",
    ),
    (
        "typo in metrics",
        "[metrics]\nprometheus_adress = '127.0.0.1:1'\n",
        "metrics.prometheus_adress",
        "unknown key",
    ),
    (
        "one backend id at two addresses",
        APP
        + 'backends = [{ address = "127.0.0.1:1", backend_id = "b" },'
        + ' { address = "[::1]:2", backend_id = "a" },'
        + ' { address = "127.0.0.1:3", backend_id = "b" }]\n',
        "clusters.app.backends[2].backend_id",
        "backend id 'b' already names backends[0] at 127.0.0.1:1",
    ),
    (
        "bad backend address",
        APP + 'backends = [{ address = "127.0.0.1:1" }, { address = "x" }]\n',
        "clusters.app.backends[1].address",
        "invalid socket address 'x'",
    ),
    ("worker_count 0", "worker_count = 0\n", "worker_count", "expected int >= 1, got 0"),
    ("worker_count string", 'worker_count = "2"\n', "worker_count", "expected int, got '2'"),
    (
        "bad load_balancing",
        APP + 'load_balancing = "FASTEST"\n',
        "clusters.app.load_balancing",
        "invalid value 'FASTEST' (expected one of: ROUND_ROBIN, RANDOM, LEAST_LOADED, "
        "POWER_OF_TWO, HRW, MAGLEV)",
    ),
    ("cluster protocol udp", '[clusters.c]\nprotocol = "udp"\n', "clusters.c.protocol", "'udp'"),
    (
        "missing protocol",
        "[clusters.c]\nfrontends = []\n",
        "clusters.c.protocol",
        "missing required key",
    ),
    (
        "listener without address",
        '[[listeners]]\nprotocol = "http"\n',
        "listeners[0].address",
        "missing",
    ),
    (
        "duplicate listener address",
        HTTP + '[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:8080"\n',
        "listeners[1].address",
        "127.0.0.1:8080 is already used by listeners[0] (http)",
    ),
    (
        "port 0",
        '[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:0"\n',
        "listeners[0].address",
        "port 0",
    ),
    (
        "backend port 0",
        APP + 'backends = [{ address = "[::1]:0" }]\n',
        "clusters.app.backends[0].address",
        "port 0",
    ),
    ("hsts on http listener", HTTP + "hsts = { enabled = true }\n", "listeners[0].hsts", "https"),
    (
        "hsts on http frontend",
        HTTP
        + APP
        + 'frontends = [{ address = "127.0.0.1:8080", hostname = "a", '
        + "hsts = { enabled = true } }]\n",
        "clusters.app.frontends[0].hsts",
        "HSTS needs https",
    ),
    (
        "certificate on http listener",
        HTTP + 'certificate = "tls/listener.pem"\n',
        "listeners[0].certificate",
        "needs an https listener, this one is http",
    ),
    (
        "certificate on http frontend",
        HTTP + APP + 'frontends = [{ address = "127.0.0.1:8080", hostname = "a", '
        'certificate = "tls/example.pem", key = "tls/example.key" }]\n',
        "clusters.app.frontends[0].certificate",
        "is http, not https",
    ),
    (
        "http frontend on tcp listener",
        TCP + APP + 'frontends = [{ address = "127.0.0.1:9000", hostname = "a" }]\n',
        "clusters.app.frontends[0].address",
        "needs an http or https listener; 127.0.0.1:9000 is a tcp listener",
    ),
    (
        "tcp frontend on http listener",
        HTTP + '[clusters.t]\nprotocol = "tcp"\nfrontends = [{ address = "127.0.0.1:8080" }]\n',
        "clusters.t.frontends[0].address",
        "needs a tcp or udp listener",
    ),
    (
        "missing certificate file",
        HTTPS.replace("tls/listener.pem", "tls/missing.pem"),
        "listeners[0].certificate",
        "tls/missing.pem': No such file or directory",
    ),
    (
        "bad PEM",
        HTTPS + APP + 'frontends = [{ address = "127.0.0.1:8443", hostname = "a", '
        'certificate = "bad.pem", key = "tls/example.key" }]\n',
        "clusters.app.frontends[0].certificate",
        "bad.pem': no PEM certificate found",
    ),
    (
        "bad key PEM",
        HTTPS.replace("tls/listener.key", "tls/listener.pem"),
        "listeners[0].key",
        "no PEM private key found",
    ),
    (
        "key without certificate",
        HTTPS + APP + 'frontends = [{ address = "127.0.0.1:8443", hostname = "a", '
        'key = "tls/example.key" }]\n',
        "clusters.app.frontends[0].certificate",
        "key requires certificate",
    ),
    (
        "https frontend with no certificate anywhere",
        '[[listeners]]\nprotocol = "https"\naddress = "127.0.0.1:8443"\n'
        + APP
        + 'frontends = [{ address = "127.0.0.1:8443", hostname = "a" }]\n',
        "clusters.app.frontends[0]",
        "no certificate",
    ),
    (
        "expect_proxy on udp",
        '[[listeners]]\nprotocol = "udp"\naddress = "127.0.0.1:5300"\nexpect_proxy = true\n',
        "listeners[0].expect_proxy",
        "udp listener cannot expect a PROXY",
    ),
    (
        "public_address with expect_proxy",
        TCP + 'expect_proxy = true\npublic_address = "1.2.3.4:80"\n',
        "listeners[0].public_address",
        "expect_proxy",
    ),
    (
        "automatic_state_save without saved_state",
        "automatic_state_save = true\n",
        "automatic_state_save",
        "requires saved_state",
    ),
    ("min over max buffers", "min_buffers = 10\nmax_buffers = 5\n", "min_buffers", "exceeds"),
    (
        "disable_http11 with default ALPN",
        HTTPS + "disable_http11 = true\n",
        "listeners[0].disable_http11",
        "offers http/1.1",
    ),
    (
        "unknown ALPN",
        HTTPS + 'alpn_protocols = ["h2", "h3"]\n',
        "listeners[0].alpn_protocols[1]",
        "unsupported ALPN protocol 'h3'",
    ),
    ("small buffer with h2", "buffer_size = 16384\n" + HTTPS, "buffer_size", "at least 16393"),
    (
        "tcp frontends disagree on proxy protocol",
        TCP
        + 'expect_proxy = true\n[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:9001"\n'
        + '[clusters.t]\nprotocol = "tcp"\n'
        + 'frontends = [{ address = "127.0.0.1:9000" }, { address = "127.0.0.1:9001" }]\n',
        "clusters.t.frontends[1].address",
        "must agree",
    ),
    (
        "two clusters on one tcp listener",
        TCP
        + '[clusters.a]\nprotocol = "tcp"\nfrontends = [{ address = "127.0.0.1:9000" }]\n'
        + '[clusters.b]\nprotocol = "tcp"\nfrontends = [{ address = "127.0.0.1:9000" }]\n',
        "clusters.b.frontends[0].address",
        "already serves cluster 'a' (clusters.a.frontends[0])",
    ),
    (
        "duplicate route",
        HTTP
        + APP
        + 'frontends = [{ address = "127.0.0.1:8080", hostname = "a" }, '
        + '{ address = "127.0.0.1:8080", hostname = "A" }]\n',
        "clusters.app.frontends[1]",
        "same address, hostname, path and method as clusters.app.frontends[0]",
    ),
    (
        "missing answer file",
        HTTP + 'answers = { "404" = "file://nope.html" }\n',
        "listeners[0].answers.404",
        "nope.html': No such file or directory",
    ),
    ("answer code", HTTP + 'answers = { "40x" = "no" }\n', "listeners[0].answers.40x", "status"),
    (
        "bad health check",
        APP + 'health_check = { uri = "health" }\n',
        "clusters.app.health_check",
        "must start with '/'",
    ),
    (
        "bad regex path",
        HTTP + APP + 'frontends = [{ address = "127.0.0.1:8080", hostname = "a", '
        'path = "(", path_type = "REGEX" }]\n',
        "clusters.app.frontends[0].path",
        "invalid regular expression",
    ),
    ("wrong table type", "metrics = 3\n", "metrics", "expected a table, got 3"),
    ("syntax error", "worker_count = 2\n\nlog_level = = 'x'\n", "", "line 3, column 13"),
]


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [pytest.param(text, path, fragment, id=name) for name, text, path, fragment in CASES],
)
def test_invalid_config_names_the_key(
    tmp_path: Path,
    tls_files: dict[str, str],
    write_config: Callable[[str], Path],
    text: str,
    path: str,
    fragment: str,
) -> None:
    (tmp_path / "bad.pem").write_text("this is not PEM\n")
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(text))
    error = raised.value
    assert error.path == path
    assert fragment in error.message
    assert str(error) == (f"{path}: {error.message}" if path else error.message)


def test_there_are_many_cases() -> None:
    assert len(CASES) >= 10


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration: No such file"):
        load_config(tmp_path / "absent.toml")
