"""Parsing of seed/count knobs: decimal or 0x-hex, surrounding blanks allowed."""

from __future__ import annotations

import os


def parse_int(text: str) -> int:
    """`42`, ` 256 `, `0xdeadbeef`, `0XFF` -> int; signs, junk or nothing -> ValueError."""
    s = text.strip()
    if s[:2].lower() == "0x":
        digits, base = s[2:], 16
        valid = "0123456789abcdefABCDEF"
    else:
        digits, base = s, 10
        valid = "0123456789"
    if not digits or any(ch not in valid for ch in digits):
        raise ValueError(f"not a decimal or 0x-hex integer: {text!r}")
    return int(digits, base)


def env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return parse_int(value)
