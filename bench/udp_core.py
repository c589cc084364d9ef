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

from sozu.worker.core.balancing import (
    Backend,
    BackendSelector,
    LoadBalancingPolicy,
    MaglevTable,
    encode_address,
    hrw_select,
)
from sozu.worker.core.udp.config import ClusterConfig
from sozu.worker.core.udp.manager import FlowManager

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


def selection_figures(n_calls: int) -> dict[str, float]:
    ks = keys(n_calls)
    figures = {}
    for n in (10, 100):
        for policy in (LoadBalancingPolicy.HRW, LoadBalancingPolicy.MAGLEV):
            selector = BackendSelector(policy, backends(n))
            selector.select(0)  # builds the Maglev table outside the timing
            figures[f"{policy.value} over {n} backends"] = per_call(selector.select, ks)
    return figures


def section_selection(n_calls: int) -> None:
    print("## Selection cost per new flow (BackendSelector.select(key), microseconds per call)")
    print("   (an established flow never selects: its datagrams only hit the flow table)")
    fast = run_json_subprocess(True, "select", n_calls)
    debug = run_json_subprocess(False, "select", n_calls)
    print(f"{'':24} {'python -O':>10} {'debug':>10}")
    for name, value in fast.items():
        print(f"{name:24} {value:10.2f} {debug[name]:10.2f}")
    print()


# -- core throughput, run in a subprocess so -O can be toggled


def core_figures(n_flows: int, n_datagrams: int) -> dict[str, float]:
    """Rates in this interpreter. In debug mode `check_invariants()` runs after every call and
    costs O(live flows), so the debug run uses fewer datagrams and admissions for big tables
    (rates stay per-datagram figures)."""
    cfg = ClusterConfig(cluster="c", affinity_with_port=True)
    figures: dict[str, float] = {}
    payload = bytes(512)

    def source(i: int) -> tuple[str, int]:
        return (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 4000)

    def established(count: int) -> tuple[FlowManager, list[tuple[str, int]]]:
        m = FlowManager(cfg, max_flows=count)
        # Building a big table in debug mode would be quadratic: suspend the full checks.
        m.check_invariants = lambda: None  # type: ignore[method-assign]
        srcs = [source(i) for i in range(count)]
        for i, src in enumerate(srcs):
            m.handle_client_datagram(0.0, src, b"x")
            m.handle_backend_resolved(0.0, i, "b0", BACKEND)
            m.take_outputs()
        del m.check_invariants
        m.check_invariants()
        return m, srcs

    rng = random.Random(1)
    for count, order in ((1, "rr"), (100, "rr"), (n_flows, "rr"), (n_flows, "random")):
        n = n_datagrams if not __debug__ or count <= 100 else max(200, n_datagrams // 100)
        m, srcs = established(count)
        ids = list(range(count))
        if order == "random":
            rng.shuffle(ids)
        sequence = [ids[i % count] for i in range(n)]
        poll = m.poll_output
        handle = m.handle_client_datagram
        back = m.handle_backend_datagram
        now = 1.0
        start = time.perf_counter()
        for i, fid in enumerate(sequence):
            handle(now, srcs[fid], payload)
            while poll() is not None:
                pass
            if i & 1023 == 0:
                now += 0.001
        label = f"{count:,} flow{'s' if count > 1 else ''}" + (
            ", random order" if order == "random" else ""
        )
        figures[f"forwards/s, {label}"] = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for fid in sequence:
            back(now, fid, payload)
            while poll() is not None:
                pass
        figures[f"returns/s, {label}"] = n / (time.perf_counter() - start)

    n_admit = 100_000 if not __debug__ else 2_000
    srcs = [source(i) for i in range(n_admit)]
    m = FlowManager(cfg, max_flows=n_admit)
    start = time.perf_counter()
    for src in srcs:
        m.handle_client_datagram(0.0, src, payload)
        m.take_outputs()
    figures["admissions/s (new key -> SelectBackend)"] = n_admit / (time.perf_counter() - start)
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


def run_json_subprocess(optimised: bool, section: str, *numbers: int) -> dict[str, float]:
    cmd = [sys.executable, *(["-O"] if optimised else []), __file__, "--json", section]
    cmd += [str(n) for n in numbers]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def section_core(n_flows: int, n_datagrams: int, memory_flows: int) -> None:
    print(
        f"## Core throughput ({n_datagrams:,} datagrams of 512 B per figure, one CPU, per second)"
    )
    fast = run_json_subprocess(True, "core", n_flows, n_datagrams)
    debug = run_json_subprocess(False, "core", n_flows, n_datagrams)
    print(f"{'':50} {'python -O':>12} {'debug':>12}")
    for name, value in fast.items():
        print(f"{name:50} {value:12,.0f} {debug[name]:12,.0f}")
    print("(round-robin order makes every datagram touch the earliest deadline: worst case)")
    print("(admissions: 100,000 new flows with -O, 2,000 in debug; debug checks are O(flows))")
    print()
    print(f"## Memory per live established flow at {memory_flows:,} flows (tracemalloc, -O)")
    per_flow = run_json_subprocess(True, "memory", memory_flows)["bytes per flow"]
    print(f"{per_flow:,.0f} bytes per flow")
    print()


def section_sweep() -> None:
    print("## Simulation sweep (python -m simulation.udp, defaults)")
    for flags in ([], ["-O"]):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, *flags, "-m", "simulation.udp"],
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
    parser.add_argument("--quick", action="store_true", help="smaller figures, no sweep")
    parser.add_argument("--json", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--datagrams", type=int, default=300_000)
    args = parser.parse_args()
    if args.json:
        section, *numbers = args.json
        if section == "core":
            print(json.dumps(core_figures(int(numbers[0]), int(numbers[1]))))
        elif section == "memory":
            print(json.dumps({"bytes per flow": memory_per_flow(int(numbers[0]))}))
        else:
            print(json.dumps(selection_figures(int(numbers[0]))))
        return
    quick = args.quick
    print(f"python {sys.version.split()[0]}\n")
    section_disruption(10_000 if quick else 100_000)
    section_selection(2_000 if quick else 20_000)
    section_core(args.flows, 50_000 if quick else args.datagrams, 10_000 if quick else 100_000)
    if not quick:
        section_sweep()


if __name__ == "__main__":
    main()
