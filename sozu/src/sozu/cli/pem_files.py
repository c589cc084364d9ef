"""Files named on the command line: PEM certificates, keys and chains, answer templates.

Every reader fails with a `click.BadParameter` naming the option and the file, before anything
is sent to the daemon.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import click

from sozu.command.certificates import (
    CertificateError,
    check_key_matches,
    check_private_key,
    fingerprint,
    inspect_certificate,
    is_fingerprint,
)
from sozu.command.types import TlsVersion

_PEM_CERTIFICATE: Final = re.compile(
    r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----\s*", re.DOTALL
)
_STATUS_CODE: Final = re.compile(r"[1-5][0-9][0-9]")

PEM_PATH = click.Path(dir_okay=False, path_type=Path)

# Upstream's configuration spellings, the protocol's, and the usual "TLSv1.2" ones.
_TLS_VERSIONS: Final[dict[str, TlsVersion]] = {
    "ssl_v2": "SSL_V2",
    "ssl_v3": "SSL_V3",
    "tlsv1": "TLS_V1_0",
    "tlsv1.0": "TLS_V1_0",
    "tls_v10": "TLS_V1_0",
    "tls_v1_0": "TLS_V1_0",
    "tlsv1.1": "TLS_V1_1",
    "tls_v11": "TLS_V1_1",
    "tls_v1_1": "TLS_V1_1",
    "tlsv1.2": "TLS_V1_2",
    "tls_v12": "TLS_V1_2",
    "tls_v1_2": "TLS_V1_2",
    "tlsv1.3": "TLS_V1_3",
    "tls_v13": "TLS_V1_3",
    "tls_v1_3": "TLS_V1_3",
}


def read_text(path: Path, option: str) -> str:
    """The UTF-8 text of a file, or a usage error naming the option and the file."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        reason = error.strerror or str(error)
        raise click.BadParameter(f"{path}: {reason}", param_hint=option) from None
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path}: not a UTF-8 text file", param_hint=option) from None


def certificate_file(path: Path, option: str) -> str:
    """A PEM certificate file's text; its first certificate must parse."""
    text = read_text(path, option)
    try:
        inspect_certificate(text)
    except CertificateError as error:
        raise click.BadParameter(f"{path}: {error}", param_hint=option) from None
    return text


def key_file(path: Path, option: str, certificate: str | None = None) -> str:
    """A PEM private key file's text; it must belong to `certificate` when one is given."""
    text = read_text(path, option)
    try:
        check_private_key(text)
        if certificate is not None:
            check_key_matches(certificate, text)
    except CertificateError as error:
        raise click.BadParameter(f"{path}: {error}", param_hint=option) from None
    return text


def chain_file(path: Path, option: str) -> tuple[str, ...]:
    """Every certificate of a PEM chain file, one PEM text each."""
    text = read_text(path, option)
    blocks = tuple(block.strip() + "\n" for block in _PEM_CERTIFICATE.findall(text))
    if not blocks:
        raise click.BadParameter(f"{path}: no PEM certificate found", param_hint=option)
    for block in blocks:
        try:
            inspect_certificate(block)
        except CertificateError as error:
            raise click.BadParameter(f"{path}: {error}", param_hint=option) from None
    return blocks


def certificate_fingerprint(path: Path, option: str) -> str:
    """Hex SHA-256 of the leaf certificate of a PEM file."""
    return fingerprint(certificate_file(path, option))


def checked_fingerprint(text: str, option: str) -> str:
    """A fingerprint given as text: 64 hex digits, sent in lower case."""
    if not is_fingerprint(text):
        raise click.BadParameter(f"{text!r} is not 64 hex digits", param_hint=option)
    return text.lower()


def tls_versions(values: tuple[str, ...], option: str = "--tls-versions") -> tuple[TlsVersion, ...]:
    """TLS versions from repeated and/or comma-separated values (`TLS_V12`, `TLSv1.3`, ...)."""
    versions: list[TlsVersion] = []
    for value in split_list(values):
        version = _TLS_VERSIONS.get(value.lower())
        if version is None:
            raise click.BadParameter(f"unknown TLS version {value!r}", param_hint=option)
        if version not in versions:
            versions.append(version)
    return tuple(versions)


def split_list(values: tuple[str, ...]) -> list[str]:
    """Repeated option values, each of which may itself be a comma-separated list."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def answers(values: tuple[str, ...], option: str = "--answer") -> dict[str, str]:
    """`CODE=FILE` values: status code to the text of the template file."""
    found: dict[str, str] = {}
    for value in values:
        code, sep, file = value.partition("=")
        if not sep or not file:
            raise click.BadParameter(f"{value!r} is not CODE=FILE", param_hint=option)
        if not _STATUS_CODE.fullmatch(code):
            raise click.BadParameter(f"{code!r} is not an HTTP status code", param_hint=option)
        if code in found:
            raise click.BadParameter(f"status {code} given twice", param_hint=option)
        found[code] = read_text(Path(file), option)
    return found
