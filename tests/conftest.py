"""Test-wide settings: full state invariant checks after every mutation."""

from __future__ import annotations

import sozu.command.state

sozu.command.state.FULL_INVARIANT_CHECKS = True
