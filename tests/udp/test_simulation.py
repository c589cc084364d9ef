"""The deterministic simulation harness: the default sweep, determinism, bug detection, CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simulation.parallel import cpus
from simulation.udp import (
    DEFAULT_SEEDS,
    DEFAULT_STEPS,
    parse_int,
    run_seed,
    run_sweep,
    summary_line,
)
from simulation.udp.env import env_int
from sozu.worker.core.udp.flow import TIMER_GEN_MASK, Flow
from sozu.worker.core.udp.manager import FlowManager

FAILURE_LINE = re.compile(r"seed=0x[0-9a-f]+ (step=\d+ (init|step|drain-episode)|FINAL): \S.*")


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


# -- deliberately broken cores


class CapNotEnforced(FlowManager):
    def _has_room(self) -> bool:
        return True


class DeadlineNotRearmed(FlowManager):
    def _touch(self, flow: Flow, deadline: float) -> None:
        # Bumps the generation like a touch, but the idle deadline never moves.
        flow.timer_gen = (flow.timer_gen + 1) & TIMER_GEN_MASK


class ClosedFlowLeftInTable(FlowManager):
    def _unmap(self, flow: Flow) -> None:
        pass


BROKEN = (CapNotEnforced, DeadlineNotRearmed, ClosedFlowLeftInTable)
BROKEN_SEEDS = range(24)
BROKEN_STEPS = 300


def sweep_broken_cores() -> dict[str, list[str]]:
    """Failure lines per broken core (also run under `python -O` by a test below)."""
    report = {}
    for core in BROKEN:
        lines: list[str] = []
        run_sweep(BROKEN_SEEDS, BROKEN_STEPS, core, echo=lines.append)
        report[core.__name__] = lines
    return report


def test_a_sweep_over_processes_gives_what_one_process_gives() -> None:
    """Results, failure lines and digests, in seed order, for a core class defined here (the
    children inherit it through fork: nothing is pickled but seeds and results)."""
    core = BROKEN[0]
    one: list[str] = []
    two: list[str] = []
    alone = run_sweep(BROKEN_SEEDS, BROKEN_STEPS, core, echo=one.append, digests=True)
    spread = run_sweep(BROKEN_SEEDS, BROKEN_STEPS, core, echo=two.append, digests=True, jobs=3)
    assert [r.seed for r in spread] == list(BROKEN_SEEDS)
    assert spread == alone
    assert two == one
    assert any(not r.passed for r in alone), "the broken core fails some seeds"
    assert sum(" digest=" in line for line in one) == len(BROKEN_SEEDS)


@pytest.mark.parametrize("core", BROKEN)
def test_harness_catches_a_broken_core_and_replays_it(core: type[FlowManager]) -> None:
    lines: list[str] = []
    results = run_sweep(BROKEN_SEEDS, BROKEN_STEPS, core, echo=lines.append)
    failed = [r for r in results if not r.passed]
    assert failed, f"{core.__name__} went unnoticed"
    assert lines == [r.failure for r in failed]
    for line in lines:
        assert FAILURE_LINE.fullmatch(line), line
    for result in failed[:3]:
        replay = run_seed(result.seed, BROKEN_STEPS, core)
        assert replay.failure == result.failure
        assert replay.digest == result.digest
        assert replay.steps == result.steps
        assert result.failure is not None
        assert result.failure.startswith(f"seed=0x{result.seed:x} ")
    sound = run_sweep(range(failed[0].seed, failed[0].seed + 1), BROKEN_STEPS)
    assert sound[0].passed, sound[0].failure


def test_harness_catches_broken_cores_without_their_asserts() -> None:
    """Under `python -O` the core's own invariant checks are gone; the model still sees bugs."""
    script = (
        "import importlib.util, sys\n"
        "assert not __debug__ or sys.exit('not optimised')\n"
        f"spec = importlib.util.spec_from_file_location('broken', {str(Path(__file__))!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "for name, lines in mod.sweep_broken_cores().items():\n"
        "    print(name, len(lines), lines[0] if lines else '-')\n"
    )
    proc = _python("-O", "-c", script)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(" ", 2) for line in proc.stdout.splitlines()]
    assert [name for name, _, _ in rows] == [c.__name__ for c in BROKEN]
    for name, count, first in rows:
        assert int(count) > 0, name
        assert FAILURE_LINE.fullmatch(first), first
        assert "InvariantViolation" not in first


# -- the sweep and determinism


def test_default_sweep() -> None:
    """256 seeds by default; SOZU_UDP_SIM_SEEDS / _STEPS widen it, _SEED replays one seed."""
    steps = env_int("SOZU_UDP_SIM_STEPS") or DEFAULT_STEPS
    seed = env_int("SOZU_UDP_SIM_SEED")
    lines: list[str] = []
    if seed is not None:
        results = [run_seed(seed, steps, echo=print, progress=True)]
        count = 1
    else:
        count = env_int("SOZU_UDP_SIM_SEEDS") or DEFAULT_SEEDS
        results = run_sweep(range(count), steps, echo=lines.append, jobs=cpus())
    assert lines == []
    assert summary_line(results) == f"{count} passed, 0 failed"


def test_pinned_seed_long_run() -> None:
    result = run_seed(0x5EEDC0DE, 4000)
    assert result.passed, result.failure
    assert result.steps == 4000


def test_same_seed_same_digest_different_seeds_differ() -> None:
    first = run_seed(0xABCDEF, 1500)
    second = run_seed(0xABCDEF, 1500)
    assert first == second
    assert first.passed
    digests = {run_seed(seed, 200).digest for seed in range(12)}
    assert len(digests) == 12


def test_cli_replay_is_identical_across_processes() -> None:
    runs = [
        _python("-m", "simulation.udp", "--seed", "0x2a", "--steps", "600", env=env)
        for env in ({"PYTHONHASHSEED": "1"}, {"PYTHONHASHSEED": "2"})
    ]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    lines = runs[0].stdout.splitlines()
    assert lines[0].startswith("seed=0x2a step=500 ")
    assert lines[-1] == "1 passed, 0 failed"
    digest = run_seed(0x2A, 600).digest
    assert f"seed=0x2a digest={digest} steps=600 " in runs[0].stdout


def test_cli_sweep_prints_digests_and_the_summary() -> None:
    proc = _python("-m", "simulation.udp", "--seeds", "3", "--steps", "100", "--digests")
    assert proc.returncode == 0, proc.stderr
    expected = [f"seed=0x{s:x} digest={run_seed(s, 100).digest}" for s in range(3)]
    assert proc.stdout.splitlines() == [*expected, "3 passed, 0 failed"]


def test_cli_honours_the_environment() -> None:
    proc = _python(
        "-m",
        "simulation.udp",
        env={"SOZU_UDP_SIM_SEEDS": " 2 ", "SOZU_UDP_SIM_STEPS": "0x40"},
    )
    assert proc.stdout.splitlines() == ["2 passed, 0 failed"]
    bad = _python("-m", "simulation.udp", env={"SOZU_UDP_SIM_SEEDS": "lots"})
    assert bad.returncode == 2
    assert "lots" in bad.stderr


@pytest.mark.parametrize(
    ("text", "value"), [("42", 42), (" 256 ", 256), ("0xdeadbeef", 0xDEADBEEF), ("0XFF", 255)]
)
def test_env_parser_accepts(text: str, value: int) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize("text", ["", "  ", "junk", "0x", "-1", "+3", "1.5", "0xg1", "4 2", "1e3"])
def test_env_parser_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_int(text)


# -- import hygiene


def test_cores_and_harness_import_neither_trio_nor_socket() -> None:
    script = (
        "import sys\n"
        "import simulation.udp, simulation.udp.__main__\n"
        "import sozu.worker.core.udp.manager, sozu.worker.core.udp.egress\n"
        "import sozu.worker.core.udp.limits\n"
        "import sozu.worker.core.balancing\n"
        "bad = sorted(m for m in ('trio', 'socket', 'sozu.command') if m in sys.modules)\n"
        "print(bad)\n"
    )
    proc = _python("-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
