"""A real etcd member for e2e tests: loopback ports, its own data directory, always stopped.

`EtcdMember.start(directory)` runs Debian's `etcd` on free loopback ports with its data
directory in `directory` and waits until it answers; `stop()` and `start_again()` let a test
take it away and bring it back with the same data. Optionally with TLS (client certificates
checked) and with authentication enabled (`enable_auth`, through the real `etcdctl`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from e2e.support.net import free_port
from e2e.support.programs import require_program


@dataclass
class EtcdTls:
    """PEM files: the CA, the member's certificate and key, a client's certificate and key."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass
class EtcdMember:
    directory: Path
    client_port: int
    peer_port: int
    tls: EtcdTls | None = None
    process: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    name: str = "m0"
    # `name=http://127.0.0.1:port,...` of every member (None: a cluster of this one).
    initial_cluster: str | None = None

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @classmethod
    def start(cls, directory: Path, tls: EtcdTls | None = None) -> EtcdMember:
        member = cls.prepare(directory, tls=tls)
        member.start_again()
        return member

    @classmethod
    def prepare(
        cls, directory: Path, *, tls: EtcdTls | None = None, name: str = "m0"
    ) -> EtcdMember:
        """A member with its ports and data directory, not started."""
        require_program("etcd")
        directory.mkdir(parents=True, exist_ok=True)
        member = cls(directory, free_port(), free_port(), tls, name=name)
        # Memory-backed when possible: fsyncs on a shared disk would slow every write.
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else directory
        member.data_dir = Path(tempfile.mkdtemp(prefix="sozu-etcd-", dir=base))
        return member

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start_again(self) -> None:
        assert self.process is None or self.process.poll() is not None
        command = [
            require_program("etcd"),
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.endpoint,
            "--advertise-client-urls",
            self.endpoint,
            "--listen-peer-urls",
            f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster",
            self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-token",
            "sozu-e2e",
            # Two shared cores: no election because a heartbeat came late.
            "--heartbeat-interval",
            "250",
            "--election-timeout",
            "2500",
        ]
        if self.tls is not None:
            command += [
                "--cert-file",
                str(self.tls.server_cert),
                "--key-file",
                str(self.tls.server_key),
                "--trusted-ca-file",
                str(self.tls.ca),
                "--client-cert-auth",
            ]
        with (self.directory / "etcd.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        if self.initial_cluster is None:
            self.wait_ready()

    def _client(self) -> httpx.Client:
        if self.tls is None:
            return httpx.Client(timeout=2)
        import ssl

        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return httpx.Client(timeout=2, verify=context)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with self._client() as client:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"etcd exited:\n{self.log()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.endpoint}/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"etcd not ready within {timeout} s:\n{self.log()}")
                time.sleep(0.1)

    def etcdctl(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """The real `etcdctl` (API v3) against this member."""
        command = [require_program("etcdctl"), "--endpoints", self.endpoint]
        if self.tls is not None:
            command += [
                "--cacert",
                str(self.tls.ca),
                "--cert",
                str(self.tls.client_cert),
                "--key",
                str(self.tls.client_key),
            ]
        if user is not None:
            command += ["--user", user]
        env = {**os.environ, "ETCDCTL_API": "3"}
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=20, env=env, check=False
        )

    def enable_auth(self, root_password: str) -> None:
        """A root user with `root_password`, then authentication on."""
        for args in (
            ("user", "add", f"root:{root_password}"),
            ("user", "grant-role", "root", "root"),
            ("auth", "enable"),
        ):
            result = self.etcdctl(*args)
            assert result.returncode == 0, f"etcdctl {' '.join(args)}: {result.stderr}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def is_leader(self) -> bool:
        with self._client() as client:
            answer = client.post(f"{self.endpoint}/v3/maintenance/status", json={}).json()
        return bool(answer["leader"] == answer["header"]["member_id"])

    def remove(self) -> None:
        """Stop it and delete its data."""
        self.stop()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.directory / "etcd.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def start_cluster(directory: Path, size: int) -> list[EtcdMember]:
    """`size` members forming one cluster, all ready (stop them with `remove()`)."""
    members = [EtcdMember.prepare(directory / f"m{i}", name=f"m{i}") for i in range(size)]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    try:
        for member in members:
            member.initial_cluster = initial
            member.start_again()
        for member in members:
            member.wait_ready()
    except BaseException:
        for member in members:
            member.remove()
        raise
    return members
