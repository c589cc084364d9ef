"""The build id: a digest of the sozu code on disk, shown next to each worker in `sozu status`.

The supervisor and every worker compute it when they start; a worker relaunched after the
code changed reports a different one.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

_PACKAGES = ("sozu.command", "sozu.worker", "sozu.supervisor")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def build_id() -> str:
    """12 hex digits over the sources of the command, worker and supervisor packages."""
    digest = hashlib.sha256()
    for name in _PACKAGES:
        root = _package_dir(name)
        if root is None:
            continue
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            try:
                digest.update(path.read_bytes())
            except OSError:
                continue
    return digest.hexdigest()[:12]
