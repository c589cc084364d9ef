"""The `[etcd]` section: defaults, and errors that name the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sozu.command.config import ConfigError, load_config

OK = '[etcd]\nendpoints = ["http://127.0.0.1:2379", "http://[::1]:2380"]\n'
TLS = (
    '[etcd]\nendpoints = ["https://127.0.0.1:2379"]\nca = "ca.pem"\n'
    'certificate = "client.pem"\nkey = "client.key"\nuser = "sozu"\npassword = "secret"\n'
)


def test_defaults(write_config: Callable[[str], Path]) -> None:
    etcd = load_config(write_config(OK)).config.etcd
    assert etcd is not None
    assert etcd.endpoints == ("http://127.0.0.1:2379", "http://[::1]:2380")
    assert etcd.prefix == "/sozu"
    assert etcd.instance_id is None
    assert etcd.user is None
    assert load_config(write_config("worker_count = 1\n")).config.etcd is None


def test_tls_paths_are_relative_to_the_file(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    etcd = load_config(write_config(TLS)).config.etcd
    assert etcd is not None
    assert etcd.ca == str(tmp_path / "ca.pem")
    assert etcd.key == str(tmp_path / "client.key")
    assert (etcd.user, etcd.password) == ("sozu", "secret")


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("[etcd]\n", "etcd.endpoints", "missing required key"),
        ("[etcd]\nendpoints = []\n", "etcd.endpoints", "at least one"),
        ('[etcd]\nendpoints = ["127.0.0.1:2379"]\n', "etcd.endpoints[0]", "not an http"),
        (
            '[etcd]\nendpoints = ["http://a:1", "http://b:99999"]\n',
            "etcd.endpoints[1]",
            "expected http://host:port",
        ),
        (
            '[etcd]\nendpoints = ["http://a:1", "https://b:2"]\n',
            "etcd.endpoints",
            "mixes",
        ),
        ('[etcd]\nendpoints = ["http://a:1"]\nca = "ca.pem"\n', "etcd.ca", "needs https"),
        (
            '[etcd]\nendpoints = ["https://a:1"]\ncertificate = "c.pem"\n',
            "etcd.key",
            "go together",
        ),
        ('[etcd]\nendpoints = ["http://a:1"]\nuser = "u"\n', "etcd.password", "go together"),
        ('[etcd]\nendpoints = ["http://a:1"]\nprefix = "/"\n', "etcd.prefix", "not a key"),
        (
            '[etcd]\nendpoints = ["http://a:1"]\ninstance_id = "a b"\n',
            "etcd.instance_id",
            "letters, digits",
        ),
        ('[etcd]\nendpoints = ["http://a:1"]\nretry_max = 0\n', "etcd.retry_max", ""),
        ('[etcd]\nendpoints = ["http://a:1"]\nendpoint = "x"\n', "etcd.endpoint", "unknown key"),
    ],
)
def test_errors_name_the_key(
    write_config: Callable[[str], Path], text: str, path: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(text))
    assert raised.value.path == path
    assert fragment in raised.value.message


def test_address_map(write_config: Callable[[str], Path]) -> None:
    text = OK + '[etcd.address_map]\n"0.0.0.0:80" = "127.0.0.2:8080"\n'
    etcd = load_config(write_config(text)).config.etcd
    assert etcd is not None
    assert etcd.address_map == {"0.0.0.0:80": "127.0.0.2:8080"}
    for bad, path in (
        ('"0.0.0.0:80" = "127.0.0.2:0"', 'etcd.address_map."0.0.0.0:80"'),
        ('"nowhere" = "127.0.0.2:1"', "etcd.address_map.nowhere"),
    ):
        with pytest.raises(ConfigError) as raised:
            load_config(write_config(OK + f"[etcd.address_map]\n{bad}\n"))
        assert raised.value.path == path, raised.value
