"""Figures for the UDP core and its balancers (not a test: nothing here asserts a timing).

    .venv/bin/python bench/udp_core.py            # everything (a few minutes)
    .venv/bin/python bench/udp_core.py --quick    # smaller key counts, skips the sweep

Prints: keys remapped on a backend set change (HRW vs Maglev) and load spread; selection cost
per new flow; core throughput (established forwards, returns, admissions) measured in
subprocesses with and without `-O`; memory per live flow at 100,000 flows; the wall time of the
256-seed simulation sweep.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable

from sozu.worker.balancing import (
    Backend,
    BackendSelector,
    LoadBalancingPolicy,
    MaglevTable,
    encode_address,
    hrw_select,
)
from sozu.worker.udp.config import ClusterConfig
from sozu.worker.udp.manager import FlowManager

BACKEND = ("127.0.0.1", 5300)


def backends(n: int) -> list[Backend]:
    return [Backend(f"b{i}", (f"10.1.{i // 250}.{i % 250 + 1}", 8000)) for i in range(n)]


def keys(n: int) -> list[int]:
    rng = random.Random(20_260_926)
    return [rng.getrandbits(64) for _ in range(n)]


def hrw_map(bs: list[Backend], ks: list[int]) -> list[str]:
    pairs = [(encode_address(b.address), b.effective_weight) for b in bs]
    return [bs[hrw_select(k, pairs)].id for k in ks]


def maglev_map(bs: list[Backend], ks: list[int]) -> list[str]:
    table = MaglevTable([(encode_address(b.address), b.effective_weight) for b in bs])
    return [bs[table.slots[k % table.size]].id for k in ks]


def moved(a: list[str], b: list[str]) -> float:
    return sum(x != y for x, y in zip(a, b, strict=True)) / len(a)


def spread(mapping: list[str], n: int) -> float:
    counts: dict[str, int] = {}
    for b in mapping:
        counts[b] = counts.get(b, 0) + 1
    return max(counts.values()) / (len(mapping) / n)


def section_disruption(n_keys: int) -> None:
    print(f"## Keys remapped on a backend change ({n_keys:,} random 64-bit keys)")
    ks = keys(n_keys)
    ten = backends(11)[:10]
    eleven = backends(11)
    nine = ten[:4] + ten[5:]  # b4 removed
    print(f"{'':8} {'10->11':>8} {'ideal':>7} {'10->9':>8} {'ideal':>7} {'max/mean (10)':>14}")
    for name, fn in (("HRW", hrw_map), ("Maglev", maglev_map)):
        base = fn(ten, ks)
        grow = moved(base, fn(eleven, ks))
        shrink = moved(base, fn(nine, ks))
        print(
            f"{name:8} {grow:8.2%} {1 / 11:7.2%} {shrink:8.2%} {1 / 10:7.2%} "
            f"{spread(base, 10):14.3f}"
        )
    print()


def per_call(fn: Callable[[int], object], ks: list[int]) -> float:
    start = time.perf_counter()
    for k in ks:
        fn(k)
    return (time.perf_counter() - start) / len(ks) * 1e6


def section_selection(n_calls: int) -> None:
    print("## Selection cost per new flow (BackendSelector.select(key), microseconds)")
    print("   (an established flow never selects: its datagrams only hit the flow table)")
    ks = keys(n_calls)
    print(f"{'backends':>8} {'HRW':>8} {'Maglev':>8}")
    for n in (10, 100):
        row = []
        for policy in (LoadBalancingPolicy.HRW, LoadBalancingPolicy.MAGLEV):
            selector = BackendSelector(policy, backends(n))
            selector.select(0)  # builds the Maglev table outside the timing
            row.append(per_call(selector.select, ks))
        print(f"{n:8} {row[0]:8.2f} {row[1]:8.2f}")
    print()


# -- core throughput, run in a subprocess so -O can be toggled


def core_figures(n_flows: int, n_datagrams: int) -> dict[str, float]:
    cfg = ClusterConfig(cluster="c", affinity_with_port=True)
    figures: dict[str, float] = {}

    def established(count: int) -> tuple[FlowManager, list[tuple[str, int]]]:
        m = FlowManager(cfg, max_flows=count)
        srcs = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 4000) for i in range(count)]
        for i, src in enumerate(srcs):
            m.handle_client_datagram(0.0, src, b"x")
            m.handle_backend_resolved(0.0, i, "b0", BACKEND)
            m.take_outputs()
        return m, srcs

    payload = bytes(512)
    for label, count in (("1 flow", 1), (f"{n_flows:,} flows", n_flows)):
        m, srcs = established(count)
        poll = m.poll_output
        handle = m.handle_client_datagram
        start = time.perf_counter()
        now = 1.0
        for i in range(n_datagrams):
            handle(now, srcs[i % count], payload)
            while poll() is not None:
                pass
            if i & 1023 == 0:
                now += 0.001
        figures[f"forwards/s, {label}"] = n_datagrams / (time.perf_counter() - start)
        back = m.handle_backend_datagram
        start = time.perf_counter()
        for i in range(n_datagrams):
            back(now, i % count, payload)
            while poll() is not None:
                pass
        figures[f"returns/s, {label}"] = n_datagrams / (time.perf_counter() - start)

    n_admit = min(n_datagrams, 100_000)
    srcs = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 4000) for i in range(n_admit)]
    m = FlowManager(cfg, max_flows=n_admit)
    start = time.perf_counter()
    for src in srcs:
        m.handle_client_datagram(0.0, src, payload)
        m.take_outputs()
    figures["admissions/s (to SelectBackend)"] = n_admit / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(n_admit):
        m.handle_backend_resolved(0.0, i, "b0", BACKEND)
        m.take_outputs()
    figures["resolutions/s (OpenUpstream + first send)"] = n_admit / (time.perf_counter() - start)
    return figures


def memory_per_flow(n: int) -> float:
    cfg = ClusterConfig(cluster="c", affinity_with_port=True)
    gc.collect()
    tracemalloc.start()
    m = FlowManager(cfg, max_flows=n)
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        # Fresh host strings and tuples, as recvfrom would create them.
        src = (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 4000 + i % 1000)
        m.handle_client_datagram(0.0, src, b"x")
        m.handle_backend_resolved(0.0, i, "b0", BACKEND)
        m.take_outputs()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert m.flow_count() == n
    return used / n


def run_core_subprocess(optimised: bool, n_flows: int, n_datagrams: int) -> dict[str, float]:
    cmd = [sys.executable, *(["-O"] if optimised else []), __file__, "--core-json"]
    cmd += ["--flows", str(n_flows), "--datagrams", str(n_datagrams)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def section_core(n_flows: int, n_datagrams: int, memory_flows: int) -> None:
    print(f"## Core throughput ({n_datagrams:,} datagrams of 512 B per figure, one CPU)")
    fast = run_core_subprocess(True, n_flows, n_datagrams)
    debug = run_core_subprocess(False, n_flows, n_datagrams)
    print(f"{'':45} {'python -O':>12} {'debug':>12}")
    for name, value in fast.items():
        print(f"{name:45} {value:12,.0f} {debug[name]:12,.0f}")
    print()
    print(f"## Memory per live established flow at {memory_flows:,} flows (tracemalloc)")
    print(f"{memory_per_flow(memory_flows):,.0f} bytes per flow")
    print()


def section_sweep() -> None:
    print("## Simulation sweep (python -m sozu.worker.udp.simulation, defaults)")
    for flags in ([], ["-O"]):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, *flags, "-m", "sozu.worker.udp.simulation"],
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - start
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
        mode = "python -O" if flags else "debug"
        print(f"{mode:10} {wall:6.1f} s wall  -> {last}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--core-json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--datagrams", type=int, default=300_000)
    args = parser.parse_args()
    if args.core_json:
        print(json.dumps(core_figures(args.flows, args.datagrams)))
        return
    quick = args.quick
    print(f"python {sys.version.split()[0]}, asserts {'on' if __debug__ else 'off'} here\n")
    section_disruption(10_000 if quick else 100_000)
    section_selection(2_000 if quick else 20_000)
    section_core(args.flows, 50_000 if quick else args.datagrams, 10_000 if quick else 100_000)
    if not quick:
        section_sweep()


if __name__ == "__main__":
    main()
