"""`sozu certificate add|replace|remove|list`: TLS certificates of HTTPS listeners."""

from __future__ import annotations

import time
from pathlib import Path

import click
import msgspec

from sozu.cli import routing_commands as routing
from sozu.cli.context import SozuGroup
from sozu.cli.pem_files import (
    PEM_PATH,
    certificate_file,
    certificate_fingerprint,
    chain_file,
    checked_fingerprint,
    key_file,
    tls_versions,
)
from sozu.command import requests as rq
from sozu.command.addresses import AddressError, canonical_address
from sozu.command.envelope import Response
from sozu.command.requests import Request
from sozu.command.responses import CertificatesList, CertificateSummary, WorkerResponses
from sozu.command.types import CertificateAndKey


@click.group("certificate", cls=SozuGroup)
def certificate_group() -> None:
    """TLS certificates of HTTPS listeners: add, replace, remove, list."""


_tls_versions = click.option(
    "--tls-versions",
    multiple=True,
    help="TLS versions for this certificate: TLS_V12, TLS_V13, ... (repeatable or a,b).",
)
_names = click.option(
    "--names",
    "--name",
    "names",
    multiple=True,
    help="Server names it answers for (default: its DNS names); repeatable or a,b.",
)


def _certificate_and_key(
    certificate: Path,
    key: Path,
    chain: Path | None,
    versions: tuple[str, ...],
    names: tuple[str, ...],
    prefix: str = "",
) -> CertificateAndKey:
    """The payload of Add/ReplaceCertificate from PEM files, every file checked."""
    certificate_text = certificate_file(certificate, f"--{prefix}certificate")
    return CertificateAndKey(
        certificate=certificate_text,
        key=key_file(key, f"--{prefix}key", certificate_text),
        certificate_chain=chain_file(chain, f"--{prefix}certificate-chain") if chain else (),
        versions=tls_versions(versions),
        names=tuple(
            name.strip().lower() for value in names for name in value.split(",") if name.strip()
        ),
    )


@certificate_group.command("add")
@routing.address_option
@click.option("--certificate", type=PEM_PATH, required=True, help="Certificate (PEM file).")
@click.option("--key", type=PEM_PATH, required=True, help="Its private key (PEM file).")
@click.option("--certificate-chain", type=PEM_PATH, help="Its chain (PEM file).")
@_names
@_tls_versions
@click.pass_context
def certificate_add(
    ctx: click.Context,
    address: str,
    certificate: Path,
    key: Path,
    certificate_chain: Path | None,
    names: tuple[str, ...],
    tls_versions: tuple[str, ...],
) -> None:
    """Add a certificate to the HTTPS listener at ADDRESS."""
    pair = _certificate_and_key(certificate, key, certificate_chain, tls_versions, names)
    routing.send(
        ctx, routing.build_request(lambda: rq.AddCertificate(address=address, certificate=pair))
    )


@certificate_group.command("replace")
@routing.address_option
@click.option("--new-certificate", type=PEM_PATH, required=True, help="New certificate (PEM).")
@click.option("--new-key", type=PEM_PATH, required=True, help="Its private key (PEM file).")
@click.option("--new-certificate-chain", type=PEM_PATH, help="Its chain (PEM file).")
@click.option("--old-certificate", type=PEM_PATH, help="Certificate to replace (PEM file).")
@click.option(
    "-f", "--old-fingerprint", "--fingerprint", "old_fingerprint", help="Or its fingerprint."
)
@_names
@_tls_versions
@click.pass_context
def certificate_replace(
    ctx: click.Context,
    address: str,
    new_certificate: Path,
    new_key: Path,
    new_certificate_chain: Path | None,
    old_certificate: Path | None,
    old_fingerprint: str | None,
    names: tuple[str, ...],
    tls_versions: tuple[str, ...],
) -> None:
    """Replace a certificate of the HTTPS listener at ADDRESS by a new one."""
    old = _one_certificate(
        old_certificate, old_fingerprint, "--old-certificate", "--old-fingerprint"
    )
    pair = _certificate_and_key(
        new_certificate, new_key, new_certificate_chain, tls_versions, names, prefix="new-"
    )
    request = routing.build_request(
        lambda: rq.ReplaceCertificate(address=address, new_certificate=pair, old_fingerprint=old)
    )
    routing.send(ctx, request)


def _one_certificate(
    path: Path | None, fingerprint: str | None, path_option: str, fingerprint_option: str
) -> str:
    """The fingerprint named by exactly one of a PEM file and a hex fingerprint."""
    if (path is None) == (fingerprint is None):
        raise click.UsageError(f"give one of {path_option} and {fingerprint_option}")
    if path is not None:
        return certificate_fingerprint(path, path_option)
    assert fingerprint is not None
    return checked_fingerprint(fingerprint, fingerprint_option)


@certificate_group.command("remove")
@routing.address_option
@click.option("--certificate", type=PEM_PATH, help="Certificate to remove (PEM file).")
@click.option("-f", "--fingerprint", help="Or its fingerprint (64 hex digits).")
@click.pass_context
def certificate_remove(
    ctx: click.Context, address: str, certificate: Path | None, fingerprint: str | None
) -> None:
    """Remove a certificate from the HTTPS listener at ADDRESS."""
    found = _one_certificate(certificate, fingerprint, "--certificate", "--fingerprint")
    request = routing.build_request(
        lambda: rq.RemoveCertificate(address=address, fingerprint=found)
    )
    routing.send(ctx, request)


def _summaries(content: object) -> list[CertificateSummary]:
    return list(content.certificates) if isinstance(content, CertificatesList) else []


def _only_address(address: str | None) -> routing.Transform | None:
    """Keep the certificates of one listener (the query itself has no address filter)."""
    if address is None:
        return None
    try:
        wanted = canonical_address(address)
    except AddressError as error:
        raise click.BadParameter(str(error), param_hint="--address") from None

    def keep(content: object) -> object:
        if isinstance(content, CertificatesList):
            kept = tuple(c for c in content.certificates if c.address == wanted)
            return CertificatesList(certificates=kept)
        if isinstance(content, WorkerResponses):
            answers = {
                worker: msgspec.structs.replace(answer, content=keep(answer.content))
                for worker, answer in content.map.items()
            }
            return WorkerResponses(map=answers)
        return content

    return lambda response: msgspec.structs.replace(response, content=keep(response.content))


def _table(certificates: list[CertificateSummary]) -> list[str]:
    if not certificates:
        return ["no certificates"]
    lines = [f"{'ADDRESS':<24} {'FINGERPRINT':<64} {'EXPIRES':<20} NAMES"]
    for summary in sorted(certificates, key=lambda c: (c.address, c.fingerprint)):
        expires = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(summary.expired_at))
            if summary.expired_at is not None
            else "-"
        )
        names = ", ".join(summary.names) or "-"
        lines.append(f"{summary.address:<24} {summary.fingerprint:<64} {expires:<20} {names}")
    return lines


def render_certificates(response: Response) -> str:
    content = response.content
    if isinstance(content, WorkerResponses):
        lines: list[str] = []
        for worker, answer in sorted(content.map.items()):
            lines.append(f"{worker}:")
            if answer.status != "ok":
                lines.append(f"  error: {answer.message}")
                continue
            lines += [f"  {line}" for line in _table(_summaries(answer.content))]
        return "\n".join(lines) or "no answers"
    if not isinstance(content, CertificatesList):
        return response.message
    return "\n".join(_table(_summaries(content)))


@certificate_group.command("list")
@click.option("-a", "--address", help="Certificates of this listener only.")
@click.option("-f", "--fingerprint", help="The certificate with this fingerprint.")
@click.option("-d", "--domain", help="Certificates serving this domain.")
@click.option(
    "-w",
    "--workers",
    "--query-workers",
    "workers",
    is_flag=True,
    help="Ask every worker instead of the supervisor's state.",
)
@click.pass_context
def certificate_list(
    ctx: click.Context,
    address: str | None,
    fingerprint: str | None,
    domain: str | None,
    workers: bool,
) -> None:
    """Certificates, with their fingerprints, names and expiry dates."""
    if fingerprint is not None:
        fingerprint = checked_fingerprint(fingerprint, "--fingerprint")
    request: Request
    if workers:
        request = rq.QueryCertificatesFromWorkers(domain=domain, fingerprint=fingerprint)
    else:
        request = rq.QueryCertificatesFromTheState(domain=domain, fingerprint=fingerprint)
    routing.send(ctx, request, render_certificates, transform=_only_address(address))
