"""`python -m sozu.supervisor.preflight`: can the code now on disk take over? (exit 0 if so)

Run by a supervisor before it re-executes itself for `sozu upgrade`: it imports everything
the new supervisor and its workers will run, and checks that it reads the handoff format the
running supervisor writes. Setting `SOZU_FAULT_INJECTION` to a path that exists makes it
fail, as code that cannot start would (tests use it to prove a failed upgrade changes nothing).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path


def fault_injected() -> str | None:
    """The fault-injection file when it exists (the code must then refuse to start)."""
    path = os.environ.get("SOZU_FAULT_INJECTION")
    return path if path and os.path.exists(path) else None


# Everything a new supervisor image and its workers import.
MODULES = (
    "sozu.cli.main",
    "sozu.supervisor.main",
    "sozu.supervisor.supervisor",
    "sozu.worker.main",
    "sozu.worker.shell.channel_loop",
)


def main(argv: list[str]) -> int:
    """`preflight [HANDOFF_VERSION [CONFIG]]`: exit 0 if this code can take over."""
    expected_version = int(argv[1]) if len(argv) > 1 else None
    config_path = argv[2] if len(argv) > 2 and argv[2] else None
    fault = fault_injected()
    if fault is not None:
        print(f"refusing to start: fault injection file {fault} exists", file=sys.stderr)
        return 1
    for module in MODULES:
        importlib.import_module(module)
    from sozu.command.config import load_config
    from sozu.command.config_error import ConfigError
    from sozu.supervisor.handoff import HANDOFF_VERSION

    try:
        load_config(Path(config_path) if config_path else None)
    except ConfigError as error:
        print(f"the configuration does not load: {error}", file=sys.stderr)
        return 1

    if expected_version is not None and expected_version != HANDOFF_VERSION:
        print(
            f"the new code reads handoff version {HANDOFF_VERSION}, not {expected_version}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
