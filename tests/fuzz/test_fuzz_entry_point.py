"""The atheris entry point: every target is listed, and runs a few inputs under libFuzzer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "fuzz" / "run.py"
TARGETS = (
    "framing",
    "envelope",
    "channel",
    "requests",
    "statefile",
    "state",
    "http_request",
    "http_response",
    "chunked",
    "proxy_protocol",
    "router",
    "config_text",
    "config",
)


def _run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_list_names_every_target() -> None:
    listed = _run("--list")
    assert listed.returncode == 0, listed.stderr
    assert tuple(line.split()[0] for line in listed.stdout.splitlines()) == TARGETS


def test_every_target_runs_under_the_fuzzer() -> None:
    fuzzed = _run(*TARGETS, "--runs", "20")
    assert fuzzed.returncode == 0, fuzzed.stderr[-3000:]
    # libFuzzer runs at least the seeds, however many `--runs` asks for
    done = re.findall(r"^fuzzing (\w+):.*?^Done \d+ runs", fuzzed.stderr, re.M | re.S)
    assert tuple(done) == TARGETS, fuzzed.stderr[-3000:]
