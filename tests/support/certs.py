"""Test certificates: a small pool of real PEM certificates signed by a throwaway CA."""

from __future__ import annotations

import functools

import msgspec
import trustme

from sozu.command.certificates import fingerprint
from sozu.command.types import CertificateAndKey


class TestCertificate(msgspec.Struct, frozen=True):
    cert_pem: str
    key_pem: str
    chain: tuple[str, ...]
    names: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem)

    def as_request_payload(self) -> CertificateAndKey:
        return CertificateAndKey(
            certificate=self.cert_pem, key=self.key_pem, certificate_chain=self.chain
        )


@functools.cache
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@functools.cache
def certificate(*names: str) -> TestCertificate:
    issued = certificate_authority().issue_cert(*names)
    pems = [blob.bytes().decode() for blob in issued.cert_chain_pems]
    return TestCertificate(
        cert_pem=pems[0],
        key_pem=issued.private_key_pem.bytes().decode(),
        chain=tuple(pems[1:]),
        names=names,
    )


POOL_NAMES: tuple[tuple[str, ...], ...] = (
    ("example.com",),
    ("*.example.org", "example.org"),
    ("api.example.net",),
    ("www.example.io", "example.io"),
)


def pool() -> list[TestCertificate]:
    return [certificate(*names) for names in POOL_NAMES]
