"""Command line of the UDP core simulation.

    python -m simulation.udp                 # sweep seeds 0..255
    python -m simulation.udp --seeds 4096 --steps 20000
    python -m simulation.udp --seed 0x2a     # replay one seed verbosely

Environment (flags win): SOZU_UDP_SIM_SEED replays one seed, SOZU_UDP_SIM_SEEDS and
SOZU_UDP_SIM_STEPS widen the sweep. Prints one line per failing seed, then exactly
`N passed, N failed`; exits 1 if any seed failed.
"""

from __future__ import annotations

import argparse
import sys

from simulation.parallel import cpus
from simulation.udp.env import env_int, parse_int
from simulation.udp.runner import (
    DEFAULT_SEEDS,
    DEFAULT_STEPS,
    run_seed,
    run_sweep,
    summary_line,
)


def _int_arg(text: str) -> int:
    try:
        return parse_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.udp")
    parser.add_argument("--seeds", type=_int_arg, help=f"sweep seeds 0..N-1 ({DEFAULT_SEEDS})")
    parser.add_argument("--first", type=_int_arg, default=0, help="first seed of the sweep")
    parser.add_argument("--seed", type=_int_arg, help="replay one seed verbosely")
    parser.add_argument("--steps", type=_int_arg, help=f"steps per seed ({DEFAULT_STEPS})")
    parser.add_argument("--digests", action="store_true", help="print every seed's digest")
    parser.add_argument(
        "--jobs", type=_int_arg, default=cpus(), help="processes of a sweep (default: CPUs)"
    )
    parser.add_argument(
        "--fast-path", action="store_true", help="datagrams through the established-flow fast path"
    )
    parser.add_argument("--trace", action="store_true", help="with --seed: print every input")
    args = parser.parse_args(argv)

    def echo(line: str) -> None:
        print(line, flush=True)

    try:
        env_seed = env_int("SOZU_UDP_SIM_SEED")
        env_seeds = env_int("SOZU_UDP_SIM_SEEDS")
        env_steps = env_int("SOZU_UDP_SIM_STEPS")
    except ValueError as exc:
        parser.error(str(exc))
    steps = args.steps if args.steps is not None else env_steps or DEFAULT_STEPS
    seed = args.seed if args.seed is not None else (None if args.seeds else env_seed)
    if seed is not None:
        result = run_seed(
            seed, steps, echo=echo, progress=True, trace=args.trace, fast_path=args.fast_path
        )
        results = [result]
    else:
        count = args.seeds if args.seeds is not None else env_seeds or DEFAULT_SEEDS
        seeds = range(args.first, args.first + count)
        results = run_sweep(
            seeds, steps, echo=echo, digests=args.digests, jobs=args.jobs, fast_path=args.fast_path
        )
    echo(summary_line(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
