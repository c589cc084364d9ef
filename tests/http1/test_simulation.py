"""The deterministic simulation of the HTTP/1.1 session core: the default sweep, determinism,
replay, the broken cores it must catch, the command line, import hygiene."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simulation.http1 import DEFAULT_SEEDS, DEFAULT_STEPS, run_seed, run_sweep, summary_line
from simulation.http1.__main__ import main
from simulation.parallel import cpus
from simulation.udp.env import env_int
from sozu.worker.core.http1 import exchange
from sozu.worker.core.http1.session import Http1Session
from sozu.worker.core.http1.states import R_LENGTH, S_EXCHANGE, S_HEAD

FAILURE_LINE = re.compile(r"seed=0x[0-9a-f]+ (step=\d+ (init|step)|FINAL): \S.*")


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


class ReleasesBeforeTheBodyEnds(Http1Session):
    """The backend connection goes back to the pool once a Content-Length response head is
    relayed, before its body."""

    def back_data(self, data: bytes, now: float) -> None:
        super().back_data(data, now)
        if self.state == S_EXCHANGE and self.r_phase == R_LENGTH:
            exchange.finish_response(self, now, complete=True)
            self._settle(now)


class KeepsAliveWhileDraining(Http1Session):
    """A response head forgets the drain: it promises keep-alive while the worker drains."""

    def back_data(self, data: bytes, now: float) -> None:
        if not self.draining or self.state != S_EXCHANGE or self.responding:
            super().back_data(data, now)
            return
        self.draining = False
        try:
            super().back_data(data, now)
        finally:
            self.draining = True


class PipelinedHeadTimerNotRearmed(Http1Session):
    """A head pipelined behind a response waits under the idle timer, not the request timer."""

    def next_request(self, now: float) -> None:
        super().next_request(now)
        if self.state == S_HEAD and self.fbuf:
            self.t_read = now + self.ctx.front_timeout


BROKEN = (ReleasesBeforeTheBodyEnds, KeepsAliveWhileDraining, PipelinedHeadTimerNotRearmed)
BROKEN_SEEDS = range(8)
BROKEN_STEPS = 1500


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
    core = ReleasesBeforeTheBodyEnds
    one: list[str] = []
    two: list[str] = []
    alone = run_sweep(BROKEN_SEEDS, BROKEN_STEPS, core, echo=one.append, digests=True)
    spread = run_sweep(BROKEN_SEEDS, BROKEN_STEPS, core, echo=two.append, digests=True, jobs=2)
    assert [r.seed for r in spread] == list(BROKEN_SEEDS)
    assert spread == alone
    assert two == one
    assert any(not r.passed for r in alone), "the broken core fails some seeds"
    assert sum(" digest=" in line for line in one) == len(BROKEN_SEEDS)


@pytest.mark.parametrize("core", BROKEN)
def test_harness_catches_a_broken_core_and_replays_it(core: type[Http1Session]) -> None:
    lines: list[str] = []
    results = run_sweep(BROKEN_SEEDS, BROKEN_STEPS, core, echo=lines.append)
    failed = [r for r in results if not r.passed]
    assert len(failed) >= 2, f"{core.__name__} went unnoticed"
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
    sound = run_seed(failed[0].seed, BROKEN_STEPS)
    assert sound.passed, sound.failure


def test_the_broken_cores_fail_the_checks_they_break() -> None:
    report = sweep_broken_cores()
    releases = report[ReleasesBeforeTheBodyEnds.__name__]
    assert any("pooled although its response is not complete" in line for line in releases)
    draining = report[KeepsAliveWhileDraining.__name__]
    assert any("says keep-alive (draining)" in line for line in draining)
    timer = report[PipelinedHeadTimerNotRearmed.__name__]
    assert any("later than its head timer" in line for line in timer)


def test_harness_catches_broken_cores_without_their_asserts() -> None:
    """Under `python -O` the core's own invariant checks are gone; the harness still sees bugs."""
    script = (
        "import importlib.util, sys\n"
        "assert not __debug__ or sys.exit('not optimised')\n"
        f"spec = importlib.util.spec_from_file_location('broken', {str(Path(__file__))!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "for name, lines in mod.sweep_broken_cores().items():\n"
        "    print(name, len(lines), lines[0] if lines else '-')\n"
    )
    proc = _python("-O", "-c", script, env={"PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(" ", 2) for line in proc.stdout.splitlines()]
    assert [name for name, _, _ in rows] == [c.__name__ for c in BROKEN]
    for name, count, first in rows:
        assert int(count) > 0, name
        assert FAILURE_LINE.fullmatch(first), first
        assert "AssertionError" not in first


# -- the sweep and determinism


def test_default_sweep() -> None:
    """256 seeds by default; SOZU_HTTP1_SIM_SEEDS / _STEPS widen it, _SEED replays one seed."""
    steps = env_int("SOZU_HTTP1_SIM_STEPS") or DEFAULT_STEPS
    seed = env_int("SOZU_HTTP1_SIM_SEED")
    lines: list[str] = []
    if seed is not None:
        results = [run_seed(seed, steps, echo=print, progress=True)]
        count = 1
    else:
        count = env_int("SOZU_HTTP1_SIM_SEEDS") or DEFAULT_SEEDS
        results = run_sweep(range(count), steps, echo=lines.append, jobs=cpus())
    assert lines == []
    assert summary_line(results) == f"{count} passed, 0 failed"


def test_same_seed_same_digest_different_seeds_differ() -> None:
    first = run_seed(0xABCDEF, 1000)
    second = run_seed(0xABCDEF, 1000)
    assert first == second
    assert first.passed
    digests = {run_seed(seed, 150).digest for seed in range(12)}
    assert len(digests) == 12


def test_cli_replay_is_identical_across_processes() -> None:
    runs = [
        _python("-m", "simulation.http1", "--seed", "0x2a", "--steps", "1200", env=env)
        for env in ({"PYTHONHASHSEED": "1"}, {"PYTHONHASHSEED": "2"})
    ]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    lines = runs[0].stdout.splitlines()
    assert lines[0].startswith("seed=0x2a step=500 ")
    assert lines[-1] == "1 passed, 0 failed"
    digest = run_seed(0x2A, 1200).digest
    assert f"seed=0x2a digest={digest} steps=1200 " in runs[0].stdout


def test_cli_sweep_prints_digests_and_the_summary() -> None:
    proc = _python("-m", "simulation.http1", "--seeds", "3", "--steps", "100", "--digests")
    assert proc.returncode == 0, proc.stderr
    expected = [f"seed=0x{s:x} digest={run_seed(s, 100).digest}" for s in range(3)]
    assert proc.stdout.splitlines() == [*expected, "3 passed, 0 failed"]


def test_cli_trace_prints_every_core_call() -> None:
    proc = _python("-m", "simulation.http1", "--seed", "7", "--steps", "60", "--trace")
    assert proc.returncode == 0, proc.stderr
    calls = [line for line in proc.stdout.splitlines() if line.startswith("    session ")]
    assert any(" start -> " in line for line in calls)
    assert proc.stdout.splitlines()[-1] == "1 passed, 0 failed"


def test_cli_honours_the_environment() -> None:
    proc = _python(
        "-m",
        "simulation.http1",
        env={"SOZU_HTTP1_SIM_SEEDS": " 2 ", "SOZU_HTTP1_SIM_STEPS": "0x40"},
    )
    assert proc.stdout.splitlines() == ["2 passed, 0 failed"]
    bad = _python("-m", "simulation.http1", env={"SOZU_HTTP1_SIM_SEEDS": "lots"})
    assert bad.returncode == 2
    assert "lots" in bad.stderr


def test_cli_reports_a_failure_with_its_seed_and_replays_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A failing seed prints its failure line and the summary counts it (exit status 1); the
    printed seed replays to the same line."""
    assert main(["--seeds", "3", "--steps", "1500"], ReleasesBeforeTheBodyEnds) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].endswith(" failed")
    assert not lines[-1].endswith(" 0 failed")
    first = lines[0]
    assert FAILURE_LINE.fullmatch(first), first
    seed = first.split()[0].removeprefix("seed=")
    assert main(["--seed", seed, "--steps", "1500"], ReleasesBeforeTheBodyEnds) == 1
    replay = capsys.readouterr().out.splitlines()
    assert replay[0] == first
    assert replay[-1] == "0 passed, 1 failed"


# -- import hygiene


def test_harness_imports_neither_trio_nor_socket() -> None:
    script = (
        "import sys\n"
        "import simulation.http1, simulation.http1.__main__\n"
        "banned = ('trio', 'socket', 'ssl', 'sozu.worker.shell')\n"
        "bad = sorted(m for m in banned if m in sys.modules)\n"
        "print(bad)\n"
    )
    proc = _python("-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
