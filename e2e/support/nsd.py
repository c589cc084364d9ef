"""A real NSD authoritative server on loopback for DNS tests, and a small dnspython client."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from e2e.support.daemon import wait_for
from e2e.support.net import free_port
from e2e.support.programs import require_program

ZONE = "bench.test"


def zone_text(who: str) -> str:
    hosts = "\n".join(f"h{i} IN A 127.0.1.{i}" for i in range(1, 11))
    return (
        f"$ORIGIN {ZONE}.\n$TTL 3600\n"
        f"@ IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 900 604800 300\n"
        "@ IN NS ns1\nns1 IN A 127.0.0.1\nwww IN A 127.0.0.10\n"
        f'who IN TXT "{who}"\n{hosts}\n'
    )


class Nsd:
    """One NSD server in the foreground on 127.0.0.1:port (UDP and TCP)."""

    def __init__(self, directory: Path, who: str) -> None:
        self.binary = require_program("nsd")
        self.who = who
        self.port = free_port()
        self.dir = directory / who
        self.dir.mkdir()
        (self.dir / f"{ZONE}.zone").write_text(zone_text(who))
        self.conf = self.dir / "nsd.conf"
        self.conf.write_text(
            "server:\n"
            f"    ip-address: 127.0.0.1@{self.port}\n"
            "    do-ip6: no\n    server-count: 1\n"
            '    username: ""\n    chroot: ""\n    database: ""\n'
            f'    zonesdir: "{self.dir}"\n'
            f'    pidfile: "{self.dir}/nsd.pid"\n'
            f'    xfrdfile: "{self.dir}/xfrd.state"\n'
            f'    zonelistfile: "{self.dir}/zone.list"\n'
            f'    logfile: "{self.dir}/nsd.log"\n'
            "    verbosity: 0\n    rrl-ratelimit: 0\n    rrl-whitelist-ratelimit: 0\n"
            "remote-control:\n    control-enable: no\n"
            f'zone:\n    name: {ZONE}\n    zonefile: "{ZONE}.zone"\n'
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-d", "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def ready() -> bool | None:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self.dir / "nsd.log"
                raise RuntimeError(f"nsd exited: {log.read_text() if log.exists() else ''}")
            try:
                return True if txt(self.port, timeout=0.3) == self.who else None
            except dns.exception.Timeout:
                return None

        wait_for(ready, timeout=10, what=f"nsd {self.who} answering")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None


def ask(
    port: int,
    name: str,
    rdtype: str,
    *,
    source: str = "127.0.0.1",
    source_port: int = 0,
    timeout: float = 1.0,
) -> dns.message.Message:
    request = dns.message.make_query(name, rdtype)
    return dns.query.udp(
        request, "127.0.0.1", port=port, timeout=timeout, source=source, source_port=source_port
    )


def txt(port: int, *, source: str = "127.0.0.1", source_port: int = 0, timeout: float = 1.0) -> str:
    """The TXT record `who.<zone>`: which server answered."""
    answer = ask(
        port, f"who.{ZONE}", "TXT", source=source, source_port=source_port, timeout=timeout
    )
    return b"".join(answer.answer[0][0].strings).decode()
