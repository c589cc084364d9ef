"""UDP latency at a fixed query rate: a direct echo backend, then the same through sozu.

The client schedules query i at `start + i / rate` on socket `i % sockets` (each socket is
connected to the target, so it is one flow). A socket has at most one query outstanding: a
query whose answer is late delays that socket's next one (closed loop), and one unanswered
after `--timeout` seconds is counted lost. Latency is measured from the actual send; the
number of sends more than 2 ms behind schedule is printed too, so a rate that was not held is
visible.

Without `--target`, the script starts an echo backend (a separate process: this script with
`--serve-echo`) and measures it directly. It then starts three forwarders in front of it:
`sozu start` (one production worker, a UDP listener with `SOURCE_IP_PORT` affinity), nginx's
stream module (one worker) when nginx is installed, and a Python floor (`--serve-floor`: about
twenty lines of plain Python with one blocking epoll, one read per readiness event and one
connected upstream socket per client, with no flow table, timers, metrics or framework: the
least a Python process costs per datagram at this rate). Each round runs the load through
each of them in turn (a different one first each round) and prints its latency and its CPU
time (utime and stime from /proc/<pid>/stat) per 10,000 datagrams: for sozu those its worker
counted (client->backend plus backend->client), for the others each query and each answer
the client saw. The summary gives the medians over the rounds, and each forwarder's CPU per
datagram over nginx's, round by round.

Run: `uv run python bench/udp_latency.py [--rate 2000] [--duration 10] [--sockets 32]
[--rounds 1]`
(asserts nothing about time; Linux only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from sozu.command import requests as rq
from sozu.command.client import CommandClient
from sozu.command.responses import MetricsReport, StatusReport

PAYLOAD_SIZE = 64
SEQ = struct.Struct("!Q")
LATE = 0.002  # epoll sleeps in whole milliseconds: a send up to 1 ms late is on time
Address = tuple[str, int]


def serve_echo() -> None:
    """Echo every datagram back to its sender; print the port first."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    lost: int = 0
    behind: int = 0
    elapsed: float = 0.0


@dataclass
class _Pending:
    seq: int
    sent_at: float


def serve_floor(listen_port: int, backend_port: int) -> None:
    """The Python floor: forward datagrams to the backend per client address and back."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", listen_port))
    listener.setblocking(False)
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    upstreams: dict[Address, socket.socket] = {}
    clients: dict[int, tuple[socket.socket, Address]] = {}
    buffer = bytearray(65536)
    view = memoryview(buffer)
    listener_fd = listener.fileno()
    while True:
        for fd, _ in epoll.poll(-1, 64):
            try:
                if fd == listener_fd:
                    size, client = listener.recvfrom_into(buffer)
                    upstream = upstreams.get(client)
                    if upstream is None:
                        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        upstream.setblocking(False)
                        upstream.connect(("127.0.0.1", backend_port))
                        upstreams[client] = upstream
                        clients[upstream.fileno()] = (upstream, client)
                        epoll.register(upstream.fileno(), select.EPOLLIN)
                    upstream.send(view[:size])
                else:
                    upstream, client = clients[fd]
                    size = upstream.recv_into(buffer)
                    listener.sendto(view[:size], client)
            except OSError:
                continue  # EAGAIN, or an ICMP error reported on a socket: next event


def run_load(target: Address, rate: float, duration: float, sockets: int, timeout: float) -> Result:
    """Send `rate * duration` queries to `target` on `sockets` connected sockets."""
    total = int(rate * duration)
    selector = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    for index in range(sockets):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        sock.connect(target)
        selector.register(sock, selectors.EVENT_READ, index)
        socks.append(sock)
    pending: list[_Pending | None] = [None] * sockets
    result = Result()
    pad = b"\0" * (PAYLOAD_SIZE - SEQ.size)
    start = time.perf_counter()
    next_seq = 0
    try:
        while next_seq < total or any(p is not None for p in pending):
            now = time.perf_counter()
            # Expire, then send every query that is due on a free socket.
            for index, waiting in enumerate(pending):
                if waiting is not None and now - waiting.sent_at > timeout:
                    result.lost += 1
                    pending[index] = None
            while next_seq < total:
                due = start + next_seq / rate
                index = next_seq % sockets
                if due > now or pending[index] is not None:
                    break
                if now - due > LATE:
                    result.behind += 1
                try:
                    socks[index].send(SEQ.pack(next_seq) + pad)
                except OSError:
                    result.lost += 1
                else:
                    pending[index] = _Pending(next_seq, time.perf_counter())
                result.sent += 1
                next_seq += 1
            wait = timeout
            if next_seq < total:
                blocking = pending[next_seq % sockets]
                # The next query waits for its time, or for its socket's answer (or loss).
                wake = start + next_seq / rate if blocking is None else blocking.sent_at + timeout
                wait = max(0.0, wake - time.perf_counter())
            for key, _ in selector.select(wait):
                index = key.data
                sock = socks[index]
                while True:
                    try:
                        data = sock.recv(65535)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    arrived = time.perf_counter()
                    waiting = pending[index]
                    if (
                        waiting is not None
                        and len(data) >= SEQ.size
                        and SEQ.unpack_from(data)[0] == waiting.seq
                    ):
                        result.latencies.append(arrived - waiting.sent_at)
                        pending[index] = None
    finally:
        result.elapsed = time.perf_counter() - start
        selector.close()
        for sock in socks:
            sock.close()
    return result


def report(label: str, result: Result) -> None:
    ordered = sorted(result.latencies)

    def pct(q: float) -> float:
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    print(
        f"{label}: {result.sent} queries in {result.elapsed:.2f} s "
        f"({result.sent / result.elapsed:,.0f}/s), lost {result.lost}, "
        f"{result.behind} sent >{LATE * 1e3:g} ms late; latency p50 {pct(0.50):.3f} ms  "
        f"p99 {pct(0.99):.3f} ms  p100 {ordered[-1] * 1e3 if ordered else float('nan'):.3f} ms"
    )


class Cpu(NamedTuple):
    """A process's CPU time in seconds: user (utime) and system (stime)."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)


def cpu_seconds(pid: int) -> Cpu:
    """utime and stime of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return Cpu(int(fields[11]) / tick, int(fields[12]) / tick)  # fields 14 and 15 of proc(5)


def proxied(client: CommandClient) -> int:
    response = client.call(rq.QueryMetrics(), timeout_ms=5000)
    assert isinstance(response.content, MetricsReport), response
    return int(
        sum(
            value.value
            for name, value in response.content.main.items()
            if name.startswith(("sozu_udp_datagrams_in_total", "sozu_udp_datagrams_out_total"))
        )
    )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_answered(target: Address, deadline: float) -> None:
    """Until one query to `target` is answered (a sozu listener takes a moment to appear)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        while True:
            sock.sendto(b"warm-up", target)
            try:
                sock.recvfrom(65535)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise


@dataclass
class Peer:
    """A forwarder under measurement: its listening port and the process whose CPU counts."""

    label: str
    pid: int
    listen: int
    # The datagrams it proxied, from its own counters (sozu); None: counted from the client.
    proxied: Callable[[], int] | None = None
    # CPU per datagram, one per round (None: the round counted no datagram), so that the
    # peers' rounds stay aligned.
    rounds: list[Cpu | None] = field(default_factory=list)


def start_sozu(stack: contextlib.ExitStack, backend_port: int) -> Peer:
    listen = free_udp_port()
    directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="sozu-udp-bench-"))
    socket_path = Path(directory) / "sozu.sock"
    config = Path(directory) / "sozu.toml"
    config.write_text(
        f'command_socket = "{socket_path}"\nworker_count = 1\nlog_level = "error"\n'
        f'[[listeners]]\nprotocol = "udp"\naddress = "127.0.0.1:{listen}"\n'
        "front_timeout = 30\nback_timeout = 30\n"
        f'[clusters.echo]\nprotocol = "tcp"\n'
        f'frontends = [{{ address = "127.0.0.1:{listen}" }}]\n'
        f'backends = [{{ address = "127.0.0.1:{backend_port}", backend_id = "echo" }}]\n'
        '[clusters.echo.udp]\naffinity_key = "SOURCE_IP_PORT"\n'
    )
    sozu = Path(sys.executable).with_name("sozu")
    daemon = subprocess.Popen([str(sozu), "start", "-c", str(config)], stdin=subprocess.DEVNULL)

    def stop() -> None:
        daemon.send_signal(signal.SIGINT)  # hard stop: the 32 flows would hold a soft one
        try:
            daemon.wait(timeout=15)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)

    stack.callback(stop)
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("sozu did not start")
        time.sleep(0.1)
    client = CommandClient.connect(str(socket_path), timeout_ms=5000)
    stack.callback(client.close)
    wait_answered(("127.0.0.1", listen), deadline)
    status = client.call(rq.Status(), timeout_ms=5000)
    assert isinstance(status.content, StatusReport), status
    return Peer("sozu worker", status.content.workers[0].pid, listen, lambda: proxied(client))


def start_nginx(stack: contextlib.ExitStack, backend_port: int) -> Peer | None:
    """nginx's stream module (one worker) in front of the same backend."""
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        print("nginx: not installed, skipped")
        return None
    listen = free_udp_port()
    directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="nginx-udp-bench-"))
    config = Path(directory) / "nginx.conf"
    # Debian builds the stream module as a dynamic module.
    stream = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
    module = f"load_module {stream};\n" if stream.exists() else ""
    config.write_text(
        f"{module}worker_processes 1;\ndaemon off;\npid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log error;\nevents {{ worker_connections 4096; }}\n"
        f"stream {{ server {{ listen 127.0.0.1:{listen} udp; "
        f"proxy_pass 127.0.0.1:{backend_port}; proxy_timeout 30s; }} }}\n"
    )
    master = subprocess.Popen([nginx, "-p", directory, "-c", str(config)], stdin=subprocess.DEVNULL)
    stack.callback(_terminate, master)
    wait_answered(("127.0.0.1", listen), time.monotonic() + 20)
    children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
    return Peer("nginx worker", int(children[0]), listen)


def start_floor(stack: contextlib.ExitStack, backend_port: int) -> Peer:
    """The Python floor (`serve_floor`) in front of the same backend."""
    listen = free_udp_port()
    floor = subprocess.Popen(
        [sys.executable, __file__, "--serve-floor", str(listen), str(backend_port)],
        stdin=subprocess.DEVNULL,
    )
    stack.callback(_terminate, floor)
    wait_answered(("127.0.0.1", listen), time.monotonic() + 20)
    return Peer("python floor", floor.pid, listen)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=15)


def measure(peer: Peer, args: argparse.Namespace) -> None:
    """One round of the load through `peer`: its latency, and its CPU per datagram (the
    peer's own count of what it proxied, or each query and each answer once)."""
    before = peer.proxied() if peer.proxied is not None else 0
    cpu_before = cpu_seconds(peer.pid)
    result = run_load(
        ("127.0.0.1", peer.listen), args.rate, args.duration, args.sockets, args.timeout
    )
    cpu = cpu_seconds(peer.pid) - cpu_before
    if peer.proxied is not None:
        datagrams = peer.proxied() - before
    else:
        datagrams = result.sent + len(result.latencies)
    report(f"through {peer.label}", result)
    print_cpu(peer.label, peer.pid, cpu, datagrams)
    peer.rounds.append(Cpu(cpu.user / datagrams, cpu.system / datagrams) if datagrams else None)


def summarize(peers: list[Peer], nginx: Peer | None) -> None:
    """Medians over the rounds, and each peer's CPU per datagram over nginx's, round by
    round (the rounds ran back to back, so a ratio compares one moment of the machine)."""
    print(f"medians over {len(peers[0].rounds)} rounds, µs per datagram:")
    for peer in peers:
        counted = [cpu for cpu in peer.rounds if cpu is not None]
        if not counted:
            print(f"  {peer.label}: no datagram counted")
            continue
        line = (
            f"  {peer.label}: {statistics.median(c.total for c in counted) * 1e6:.1f} "
            f"(user {statistics.median(c.user for c in counted) * 1e6:.1f}, "
            f"system {statistics.median(c.system for c in counted) * 1e6:.1f})"
        )
        if nginx is not None and peer is not nginx:
            ratios = [
                mine.total / theirs.total
                for mine, theirs in zip(peer.rounds, nginx.rounds, strict=True)
                if mine is not None and theirs is not None and theirs.total
            ]
            line += (
                f"; over nginx's, by round: {' '.join(f'{r:.2f}' for r in ratios)}, "
                f"median {statistics.median(ratios):.2f}"
                if ratios
                else "; no round to compare with nginx's"
            )
        print(line)


def print_cpu(name: str, pid: int, cpu: Cpu, datagrams: int) -> None:
    scale = 10_000 / datagrams * 1e3 if datagrams else float("nan")
    print(
        f"{name} (pid {pid}): {cpu.total:.2f} s CPU for {datagrams:,} proxied "
        f"datagrams = {cpu.total * scale:.1f} ms per 10,000 datagrams "
        f"(user {cpu.user * scale:.1f}, system {cpu.system * scale:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="queries per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--sockets", type=int, default=32, help="client sockets (flows)")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds before a loss")
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure each forwarder this many times, in turn"
    )
    parser.add_argument("--target", help="HOST:PORT of an echo service: measure only that")
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo()
        return
    if args.serve_floor:
        serve_floor(*args.serve_floor)
        return
    print(
        f"{args.rate:,.0f} queries/s for {args.duration:g} s over {args.sockets} sockets, "
        f"{PAYLOAD_SIZE}-byte payloads, loss after {args.timeout:g} s"
    )
    if args.target:
        host, _, port = args.target.rpartition(":")
        target = (host, int(port))
        report(args.target, run_load(target, args.rate, args.duration, args.sockets, args.timeout))
        return
    echo = subprocess.Popen(
        [sys.executable, __file__, "--serve-echo"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert echo.stdout is not None
        backend_port = int(echo.stdout.readline())
        wait_answered(("127.0.0.1", backend_port), time.monotonic() + 10)
        direct = ("127.0.0.1", backend_port)
        report(
            "direct echo", run_load(direct, args.rate, args.duration, args.sockets, args.timeout)
        )
        with contextlib.ExitStack() as stack:
            nginx = start_nginx(stack, backend_port)
            started = [start_sozu(stack, backend_port), nginx, start_floor(stack, backend_port)]
            peers = [peer for peer in started if peer is not None]
            for round_ in range(args.rounds):
                if args.rounds > 1:
                    print(f"round {round_ + 1}:")
                # Each round starts with the next forwarder: none always runs first.
                for peer in peers[round_ % len(peers) :] + peers[: round_ % len(peers)]:
                    measure(peer, args)
            summarize(peers, nginx)
    finally:
        echo.terminate()
        echo.wait(timeout=10)


if __name__ == "__main__":
    main()
