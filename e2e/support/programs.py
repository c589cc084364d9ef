"""External programs the e2e tests drive (nginx, curl, openssl, wrk).

`require_program(name)` returns the program's path. When it is missing the test is skipped
with the reason, except under CI (`CI=true`) where a missing program is a failure: the CI
image must install everything the suite uses.
"""

from __future__ import annotations

import os
import shutil

import pytest

# Debian packages providing each program, named in the skip/fail message.
PACKAGES = {
    "nginx": "nginx",
    "curl": "curl",
    "openssl": "openssl",
    "wrk": "wrk",
    "nghttp": "nghttp2-client",
    "h2load": "nghttp2-client",
    "promtool": "prometheus",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "tmux": "tmux",
}

# Programs living in sbin, which is not always on a regular user's PATH.
EXTRA_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def require_program(name: str) -> str:
    """The path of `name`; skip the test when it is missing, fail when `CI=true`."""
    found = shutil.which(name)
    if found is None:
        found = shutil.which(name, path=os.pathsep.join(EXTRA_DIRS))
    if found is not None:
        return found
    reason = f"{name} is not installed (Debian package: {PACKAGES.get(name, name)})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)
