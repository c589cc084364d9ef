"""Live UDP flows on one worker: how many fit, RSS per flow, shedding under a flood (issue 14).

Starts a real `sozu start` (one worker) with a UDP listener (`SOURCE_IP` affinity, 1 h
timeouts) in front of a one-socket echo backend (a separate process). A flow is keyed by the
client's source IP, so one client socket makes every flow: it sends each datagram from its
own 127.1.x.y with an `IP_PKTINFO` source (127.0.0.0/8 is local on lo), and the flood runs in
a separate process. Every flow holds a connected upstream socket (one fd and one UDP port) in
the worker, so live flows are bounded by the worker's RLIMIT_NOFILE: the script sets
`max_flows` live (`UpdateUdpListener`) to the live flows plus the worker's free fds minus a
margin, floods that many new sources and `--extra` more, and prints how many flows were
created, the shed and drop counters, the worker's RSS growth per flow (user memory: kernel
socket buffers are not in RSS) and the round trips of 4 established flows during the flood.
Then it raises `max_flows` to the fd limit itself (upstream `socket()` fails with EMFILE)
and, in a private network namespace, takes every free ephemeral port (upstream `connect()`
fails with EAGAIN): both are counted in `sozu_udp_flows_shed_total`, the worker goes on.

Run (root, for `unshare --net`, which keeps the ~20k UDP ports off the host's table):
`.venv/bin/python -O bench/udp_flows.py [--extra 3000] [--rate 4000] [--no-netns]`.
Asserts nothing about time; Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sozu.command import requests as rq
from sozu.command.client import CommandClient
from sozu.command.responses import MetricsReport, StatusReport

IP_PKTINFO = 8  # linux/in.h; the socket module does not export it
FD_MARGIN = 24  # worker fds kept free (logging, command channel, a metrics query)
FLOOD_BASE = (127 << 24) | (1 << 16)  # flood source i is 127.1.0.0 + i
Address = tuple[str, int]
OPT = ["-O"] if sys.flags.optimize else []


def spawn(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    """This script in a child process (a helper mode), its stdout piped."""
    command = [sys.executable, *OPT, __file__, *args]
    return subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, text=True)


def source(index: int) -> str:
    return socket.inet_ntoa((FLOOD_BASE + index).to_bytes(4, "big"))


def serve_echo() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)


def flood(
    target: Address, first: int, count: int, rate: float, port: int = 0, resend: bool = True
) -> dict[str, float]:
    """One datagram from each of `count` new sources at `rate`/s, one resend to the silent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")  # only lo hears it
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    answered: set[int] = set()
    started = time.perf_counter()
    last = started

    def drain(until: float) -> None:
        nonlocal last
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                if time.perf_counter() >= until:
                    return
                time.sleep(0.0005)
                continue
            answered.add(int(data[1:]))  # the echo of b"q<index>"
            last = time.perf_counter()

    def send(index: int) -> None:
        info = (0).to_bytes(4, "little") + socket.inet_aton(source(index)) + bytes(4)
        try:
            sock.sendmsg([b"q%d" % index], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, target)
        except BlockingIOError:
            time.sleep(0.001)

    def paced(indexes: list[int]) -> None:
        begun = time.perf_counter()
        for sent, index in enumerate(indexes, 1):
            send(index)
            if sent % 64 == 0:
                drain(begun + sent / rate)
        drain(time.perf_counter() + 2.0)

    paced(list(range(first, first + count)))
    created_in = last - started
    silent = [i for i in range(first, first + count) if i not in answered] if resend else []
    paced(silent)
    sock.close()
    return {"sent": count, "answered": len(answered), "seconds": created_in, "resent": len(silent)}


def occupy(low: int, high: int) -> None:
    """Bind every free UDP port of [low, high] on 127.0.0.1 until stdin closes."""
    held = []
    for port in range(low, high + 1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        held.append(sock)
    print(len(held), flush=True)
    sys.stdin.read()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def udp_metrics(client: CommandClient) -> dict[str, float]:
    response = client.call(rq.QueryMetrics(), timeout_ms=10_000)
    assert isinstance(response.content, MetricsReport), response
    return {k: v.value for k, v in response.content.main.items() if k.startswith("sozu_udp")}


def pick(metrics: dict[str, float], name: str) -> int:
    return int(sum(v for k, v in metrics.items() if k.startswith(name)))


def show_counters(label: str, m: dict[str, float]) -> None:
    dropped = [(k, v) for k, v in m.items() if k.startswith("sozu_udp_datagrams_dropped") and v]
    drops = {k.rpartition("reason=")[2].strip('"}'): int(v) for k, v in dropped}
    print(
        f"{label}: active {pick(m, 'sozu_udp_active_flows')}, "
        f"created {pick(m, 'sozu_udp_flows_created_total')}, "
        f"shed {pick(m, 'sozu_udp_flows_shed_total')}, dropped {drops}, "
        f"kernel drops {pick(m, 'sozu_udp_kernel_drops_total')}"
    )


def probe_latency(probes: list[socket.socket], running: subprocess.Popen[str] | None) -> str:
    """Round trips of the established probe flows, 4 at a time every 5 ms, while `running`
    runs (or for 1 s without it)."""
    selector = selectors.DefaultSelector()
    for sock in probes:
        selector.register(sock, selectors.EVENT_READ)
    times: list[float] = []
    lost = 0
    end = time.monotonic() + 1.0
    while (running.poll() is None) if running is not None else time.monotonic() < end:
        sent = {}
        for sock in probes:
            sent[sock] = time.perf_counter()
            sock.send(b"probe")
        deadline = time.perf_counter() + 1.0
        while sent and time.perf_counter() < deadline:
            for key, _ in selector.select(deadline - time.perf_counter()):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                ready.recv(2048)
                times.append(time.perf_counter() - sent.pop(ready))
        lost += len(sent)
        time.sleep(0.005)
    selector.close()
    times.sort()
    if not times:
        return f"no answer, {lost} lost"
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return (
        f"{len(times)} round trips, p50 {statistics.median(times) * 1e3:.2f} ms, "
        f"p99 {p99 * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms, lost {lost}"
    )


def set_max_flows(client: CommandClient, address: str, value: int) -> None:
    response = client.call(rq.UpdateUdpListener(address=address, max_flows=value), timeout_ms=5000)
    if response.status != "ok":
        raise RuntimeError(f"UpdateUdpListener max_flows={value}: {response.message}")


def port_exhaustion(target: Address, client: CommandClient, first: int) -> None:
    """Hold every free ephemeral port (two helpers: each may hold up to its fd limit), then 200
    new sources: their upstream connect() cannot get a local port."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    middle = (low + high) // 2
    ranges = ((low, middle), (middle + 1, high))
    helpers = [spawn("--occupy", f"{a},{b}", stdin=subprocess.PIPE) for a, b in ranges]
    held = 0
    for helper in helpers:
        assert helper.stdout is not None
        held += int(helper.stdout.readline())
    before = udp_metrics(client)
    result = flood(target, first, 200, 2000.0, low - 1, resend=False)  # a port off the range
    after = udp_metrics(client)
    for helper in helpers:
        helper.communicate("")
    shed = pick(after, "sozu_udp_flows_shed_total") - pick(before, "sozu_udp_flows_shed_total")
    print(
        f"local ports {low}-{high}: {held} held by helpers; 200 new sources: "
        f"{result['answered']:.0f} answered, {shed} shed (upstream connect failed)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", type=int, default=3000, help="new sources beyond max_flows")
    parser.add_argument("--rate", type=float, default=4000.0, help="new sources per second")
    parser.add_argument("--no-netns", action="store_true", help="stay in this network namespace")
    parser.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--flood", help=argparse.SUPPRESS)
    parser.add_argument("--occupy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        return serve_echo()
    if args.flood:
        port, first, count, rate = args.flood.split(",")
        result = flood(("127.0.0.1", int(port)), int(first), int(count), float(rate))
        return print(json.dumps(result))
    if args.occupy:
        return occupy(*map(int, args.occupy.split(",")))
    netns = args.in_netns
    if not netns and not args.no_netns and os.geteuid() == 0 and shutil.which("unshare"):
        command = [sys.executable, *OPT, __file__, *sys.argv[1:], "--in-netns"]
        os.execvp("unshare", ["unshare", "--net", "--", *command])
    if netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"RLIMIT_NOFILE {soft}/{hard}; network namespace: {'private' if netns else 'host'}")
    echo = spawn("--serve-echo")
    assert echo.stdout is not None
    backend_port = int(echo.stdout.readline())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    target = ("127.0.0.1", port)
    with tempfile.TemporaryDirectory(prefix="sozu-udp-flows-") as tmp:
        sock_path = Path(tmp) / "sozu.sock"
        config = Path(tmp) / "sozu.toml"
        log = Path(tmp) / "daemon.log"
        config.write_text(
            f'command_socket = "{sock_path}"\nworker_count = 1\nlog_level = "warning"\n'
            f'[[listeners]]\nprotocol = "udp"\naddress = "{address}"\n'
            "front_timeout = 3600\nback_timeout = 3600\nmax_flows = 100\n"
            '[clusters.echo]\nprotocol = "tcp"\n'
            f'frontends = [{{ address = "{address}" }}]\n'
            f'backends = [{{ address = "127.0.0.1:{backend_port}", backend_id = "echo" }}]\n'
        )
        with log.open("w") as log_file:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "sozu.cli", "-c", str(config), "start"],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        probes: list[socket.socket] = []
        try:
            deadline = time.monotonic() + 20
            while not sock_path.exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("sozu did not start")
                time.sleep(0.1)
            client = CommandClient.connect(str(sock_path), timeout_ms=5000)
            status = client.call(rq.Status(), timeout_ms=5000)
            assert isinstance(status.content, StatusReport), status
            worker = status.content.workers[0].pid
            for index in range(4):  # the established flows whose round trips are measured
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((f"127.0.0.{index + 2}", 0))
                sock.connect(target)
                sock.settimeout(0.3)
                while True:
                    try:
                        sock.send(b"hello")
                        sock.recv(2048)
                        break
                    except (TimeoutError, ConnectionRefusedError):
                        if time.monotonic() > deadline:
                            raise
                probes.append(sock)
            print(f"established flows, idle worker: {probe_latency(probes, None)}")
            if netns:
                set_max_flows(client, address, 1000)
                port_exhaustion(target, client, 100_000)
            else:
                print("local-port exhaustion: skipped (needs a private network namespace)")
            # Every new flow needs one fd: the cap is what the worker has free, less a margin.
            fds = open_fds(worker)
            live = pick(udp_metrics(client), "sozu_udp_active_flows")
            cap = live + soft - fds - FD_MARGIN
            set_max_flows(client, address, cap)
            print(f"worker: {fds} fds open with {live} flows; max_flows set to {cap}")
            before = rss_kib(worker)
            flooding = spawn("--flood", f"{port},0,{cap - live + args.extra},{args.rate}")
            during = probe_latency(probes, flooding)
            result = json.loads(flooding.communicate(timeout=600)[0])
            time.sleep(1.0)
            after = rss_kib(worker)
            metrics = udp_metrics(client)
            created = pick(metrics, "sozu_udp_active_flows") - live
            print(
                f"flood: {result['sent']:.0f} new sources at {args.rate:,.0f}/s, "
                f"{result['answered']:.0f} answered ({result['resent']:.0f} resent once), "
                f"last new flow answered after {result['seconds']:.1f} s"
            )
            print(f"established flows during the flood: {during}")
            show_counters("after the flood", metrics)
            print(
                f"worker RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after "
                f"{created} new flows: {(after - before) * 1024 / max(created, 1):.0f} bytes "
                f"per flow (kernel socket memory not included); {open_fds(worker)} fds open"
            )
            set_max_flows(client, address, soft)
            shed_before = pick(metrics, "sozu_udp_flows_shed_total")
            result = flood(target, 200_000, 300, 2000.0, resend=False)
            metrics = udp_metrics(client)
            print(
                f"max_flows {soft} (the fd limit): 300 new sources, {result['answered']:.0f} "
                f"answered, {pick(metrics, 'sozu_udp_flows_shed_total') - shed_before} shed "
                f"(upstream socket() failed); established flows: {probe_latency(probes, None)}"
            )
            show_counters("at the end", metrics)
            client.close()
        finally:
            for sock in probes:
                sock.close()
            daemon.send_signal(signal.SIGINT)  # hard stop: live flows would hold a soft one
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
            echo.terminate()
            echo.wait(timeout=10)
            lines = log.read_text(errors="replace").splitlines()
            bad = [line for line in lines if "ERROR" in line or "Traceback" in line]
            warned = sum("WARN" in line for line in lines)
            print(f"daemon log: {len(lines)} lines, {warned} warnings, {len(bad)} errors")
            for line in bad[:5] + [line for line in lines if "WARN" in line][:1]:
                print(f"  {line[:160]}")


if __name__ == "__main__":
    main()
