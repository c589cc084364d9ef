"""Certificates as the state keeps them (`StoredCertificate`, keyed by fingerprint), and the
checks a certificate passes before the state takes it (`checked_certificate`)."""

from __future__ import annotations

import msgspec

from sozu.command.certificates import (
    CertificateError,
    check_key_matches,
    check_private_key,
    inspect_certificate,
)
from sozu.command.state_errors import InvalidValue
from sozu.command.types import CertificateAndKey


class StoredCertificate(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A certificate as the state keeps it: names filled in, fingerprint as its key."""

    certificate: CertificateAndKey
    expired_at: int | None = None


def checked_certificate(
    certificate: CertificateAndKey, expired_at: int | None
) -> tuple[str, StoredCertificate]:
    """The fingerprint and stored form of a certificate the state may take (names filled in
    from its SANs, else its CN, when none are given); raise InvalidValue if it may not."""
    if expired_at is not None and not -(2**63) <= expired_at < 2**63:
        raise InvalidValue(f"expired_at {expired_at} is not a 64-bit timestamp")
    try:
        facts = inspect_certificate(certificate.certificate)
        check_private_key(certificate.key)
        check_key_matches(certificate.certificate, certificate.key)
    except CertificateError as error:
        raise InvalidValue(str(error)) from None
    for index, entry in enumerate(certificate.certificate_chain):
        if not entry.strip():
            continue  # blank entries are skipped when the chain is loaded
        try:
            inspect_certificate(entry)
        except CertificateError as error:
            raise InvalidValue(f"certificate_chain[{index}]: {error}") from None
    if not certificate.names:
        if not facts.names:
            raise InvalidValue("certificate has no DNS name (no SAN and no CN) to serve")
        certificate = msgspec.structs.replace(certificate, names=facts.names)
    return facts.fingerprint, StoredCertificate(certificate=certificate, expired_at=expired_at)
