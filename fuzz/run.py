"""Coverage-guided fuzzing of sozu's decoders and parsers with atheris (libFuzzer).

    uv run python fuzz/run.py --list
    uv run python fuzz/run.py TARGET [--seconds N | --runs N] [--corpus DIR] [LIBFUZZER_FLAGS]

A target feeds the fuzzer's bytes to one decoder or parser and checks the properties of
tests/support/fuzz_checks.py, the ones the bounded hypothesis runs in tests/fuzz check.
The sozu modules are instrumented for coverage. The corpus starts from each target's seeds
(in a temporary directory unless `--corpus` keeps it); libFuzzer writes a failing input to
fuzz/artifacts/, and it becomes a regression test in tests/fuzz. Several targets may be
named: each is fuzzed in turn, in a child process that shares the imports.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fuzz.inputs import Target

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "fuzz" / "artifacts"


def _arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="fuzz/run.py",
        description="Fuzz one of sozu's decoders or parsers.",
        epilog="Other arguments (-flag=value) are passed to libFuzzer.",
    )
    parser.add_argument("targets", nargs="*", metavar="TARGET")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=int, help="stop after this many seconds")
    budget.add_argument("--runs", type=int, help="stop after this many inputs")
    parser.add_argument("--corpus", type=Path, help="corpus directory to read and extend")
    return parser.parse_known_args(argv)


def _targets() -> dict[str, Target]:
    from fuzz.command_targets import TARGETS as COMMAND
    from fuzz.config_targets import TARGETS as CONFIG
    from fuzz.worker_targets import TARGETS as WORKER

    return {target.name: target for target in (*COMMAND, *WORKER, *CONFIG)}


def main(argv: list[str]) -> int:
    options, libfuzzer_flags = _arguments(argv[1:])
    # The targets share the strategies and checks of tests/support with the test suite.
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import atheris

    if options.list:
        targets = _targets()
        width = max(map(len, targets))
        for target in targets.values():
            print(f"{target.name:<{width}}  {target.summary}")
        return 0
    if not options.targets:
        print("name a target (see --list)", file=sys.stderr)
        return 2
    with atheris.instrument_imports(include=["sozu"]):
        targets = _targets()
    unknown = [name for name in options.targets if name not in targets]
    if unknown:
        print(f"unknown target {unknown[0]!r}; see --list", file=sys.stderr)
        return 2
    ARTIFACTS.mkdir(exist_ok=True)
    status = 0
    for name in options.targets:
        target = targets[name]
        with tempfile.TemporaryDirectory(prefix=f"sozu-fuzz-{name}-") as scratch:
            corpus = Path(scratch)
            if options.corpus is not None:
                corpus = options.corpus / name if len(options.targets) > 1 else options.corpus
            corpus.mkdir(parents=True, exist_ok=True)
            for index, seed in enumerate(target.seeds()):
                (corpus / f"seed-{index}").write_bytes(seed)
            flags = [str(corpus), f"-artifact_prefix={ARTIFACTS}/{name}-", "-print_final_stats=1"]
            if options.seconds is not None:
                flags.append(f"-max_total_time={options.seconds}")
            if options.runs is not None:
                flags.append(f"-runs={options.runs}")
            flags.extend(target.flags)
            status = status or _fuzz(atheris, target, [argv[0], *flags, *libfuzzer_flags])
    return status


def _fuzz(atheris: Any, target: Target, argv: list[str]) -> int:
    """Fuzz in a child process (libFuzzer exits when done); its exit status."""
    print(f"fuzzing {target.name}: {target.summary}", file=sys.stderr, flush=True)
    # libFuzzer ends the child without Python's exit handlers: what its targets create with
    # tempfile goes in a directory this process removes.
    with tempfile.TemporaryDirectory(prefix=f"sozu-fuzz-{target.name}-tmp-") as scratch:
        pid = os.fork()
        if pid == 0:
            try:
                tempfile.tempdir = scratch
                atheris.Setup(argv, target.check)
                atheris.Fuzz()
            finally:
                os._exit(1)  # Fuzz() exits by itself: here only if it raised
        _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
