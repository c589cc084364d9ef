"""PEM certificates: leaf fingerprint, served names and expiry.

The fingerprint is the hex SHA-256 of the leaf certificate's DER encoding, as upstream. The
results are cached: a state replay parses each certificate once. The X.509 parser is imported
on first use only: it pulls in the socket module, which the sans-io
cores must never load.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from typing import Final

import msgspec

_PEM_BLOCK: Final = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL
)


class CertificateError(ValueError):
    """A certificate or key that cannot be used."""


class CertificateFacts(msgspec.Struct, frozen=True):
    fingerprint: str
    names: tuple[str, ...]
    not_after: int


def pem_blocks(text: str) -> list[tuple[str, bytes]]:
    """The (label, DER bytes) of every PEM block in a text."""
    blocks = []
    for label, body in _PEM_BLOCK.findall(text):
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except binascii.Error:
            raise CertificateError(f"invalid base64 in PEM block {label!r}") from None
        blocks.append((label, der))
    return blocks


def leaf_der(pem: str) -> bytes:
    """The DER bytes of the first certificate of a PEM text."""
    for label, der in pem_blocks(pem):
        if label == "CERTIFICATE":
            return der
    raise CertificateError("no PEM certificate found")


def fingerprint(pem: str) -> str:
    """Hex SHA-256 of the leaf certificate's DER."""
    return hashlib.sha256(leaf_der(pem)).hexdigest()


def is_fingerprint(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


@functools.lru_cache(maxsize=1024)
def inspect_certificate(pem: str) -> CertificateFacts:
    """Fingerprint, DNS names (SAN, else CN) and expiry of the leaf certificate."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    der = leaf_der(pem)
    # cryptography parses lazily: a corrupt extension raises only when it is read, so every
    # access stays inside this guard.
    try:
        cert = x509.load_der_x509_certificate(der)
        names: list[str] = []
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = [str(name).lower() for name in san.value.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            pass
        if not names:
            names = [
                str(attribute.value).lower()
                for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            ]
        not_after = int(cert.not_valid_after_utc.timestamp())
    except Exception as error:
        raise CertificateError(f"invalid certificate: {error}") from None
    return CertificateFacts(hashlib.sha256(der).hexdigest(), tuple(names), not_after)


@functools.lru_cache(maxsize=1024)
def check_private_key(pem: str) -> None:
    """Raise CertificateError unless the text holds a loadable private key."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not any(label.endswith("PRIVATE KEY") for label, _ in pem_blocks(pem)):
        raise CertificateError("no PEM private key found")
    try:
        load_pem_private_key(pem.encode(), password=None)
    except Exception as error:  # ValueError, TypeError, UnsupportedAlgorithm
        raise CertificateError(f"invalid private key: {error}") from None


@functools.lru_cache(maxsize=1024)
def check_key_matches(certificate_pem: str, key_pem: str) -> None:
    """Raise CertificateError unless the key is the private half of the leaf certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    try:
        cert_key = x509.load_der_x509_certificate(leaf_der(certificate_pem)).public_key()
        private = load_pem_private_key(key_pem.encode(), password=None)
        spki = Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        matches = cert_key.public_bytes(*spki) == private.public_key().public_bytes(*spki)
    except CertificateError:
        raise
    except Exception as error:
        raise CertificateError(f"invalid certificate or key: {error}") from None
    if not matches:
        raise CertificateError("the private key does not belong to the certificate")
