"""`sozu frontend http|https add|remove` and `sozu listener http|https add|update`."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal

import click

from sozu.cli import routing_commands as routing
from sozu.cli.context import SozuCommand, SozuGroup
from sozu.cli.pem_files import (
    PEM_PATH,
    answers,
    certificate_file,
    chain_file,
    key_file,
    split_list,
    tls_versions,
)
from sozu.command import requests as rq
from sozu.command.requests import Request
from sozu.command.types import (
    H2_KNOB_NAMES,
    Header,
    HeaderPosition,
    HstsConfig,
    HttpListenerConfig,
    HttpsListenerConfig,
    PathRule,
    PathRuleKind,
    RequestHttpFrontend,
)

HttpProxy = Literal["HTTP", "HTTPS"]

_TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_REDIRECTS: Final = ("forward", "permanent", "found", "permanent-redirect", "unauthorized")
_SCHEMES: Final = ("use-same", "use-http", "use-https")
_HEADER_POSITIONS: Final[dict[str, HeaderPosition]] = {
    "request": "REQUEST",
    "response": "RESPONSE",
    "both": "BOTH",
}

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _apply(*decorators: Decorator) -> Decorator:
    """Stack option decorators, the first one given shown first in the help."""

    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return wrap


# ---------------------------------------------------------------------------------------------
# HSTS, shared by HTTPS frontends and listeners

_hsts_options = _apply(
    click.option(
        "--hsts/--no-hsts",
        default=None,
        help="Send Strict-Transport-Security (--no-hsts: an explicit 'disabled' policy).",
    ),
    click.option("--hsts-disabled", is_flag=True, help="Upstream's spelling of --no-hsts."),
    click.option("--hsts-max-age", type=click.IntRange(0, 2**32 - 1), help="Seconds."),
    click.option("--hsts-include-subdomains", is_flag=True, help="Add includeSubDomains."),
    click.option("--hsts-preload", is_flag=True, help="Add preload."),
    click.option(
        "--hsts-force-replace-backend",
        is_flag=True,
        help="Replace a Strict-Transport-Security header sent by the backend.",
    ),
)

_HSTS_DETAILS = ("hsts_max_age", "hsts_include_subdomains", "hsts_preload")


def _hsts(options: dict[str, Any]) -> HstsConfig | None:
    """The HSTS policy of `--hsts*`; a detail given alone implies `--hsts`."""
    enabled: bool | None = options.pop("hsts")
    if options.pop("hsts_disabled"):
        if enabled:
            raise click.UsageError("--hsts and --hsts-disabled contradict each other")
        enabled = False
    details = {
        "max_age": options.pop("hsts_max_age"),
        "include_subdomains": options.pop("hsts_include_subdomains") or None,
        "preload": options.pop("hsts_preload") or None,
        "force_replace_backend": options.pop("hsts_force_replace_backend") or None,
    }
    given = {name: value for name, value in details.items() if value is not None}
    if enabled is False and given:
        raise click.UsageError("--no-hsts takes no other --hsts-* option")
    if enabled is None and not given:
        return None
    return HstsConfig(enabled=True if enabled is None else enabled, **given)


# ---------------------------------------------------------------------------------------------
# frontends


def _path_rule(prefix: str | None, regex: str | None, equals: str | None) -> PathRule:
    candidates: tuple[tuple[PathRuleKind, str | None], ...] = (
        ("PREFIX", prefix),
        ("REGEX", regex),
        ("EQUALS", equals),
    )
    given = [(kind, value) for kind, value in candidates if value is not None]
    if len(given) > 1:
        raise click.UsageError("--path-prefix, --path-regex and --path-equals are exclusive")
    if not given:
        return PathRule()
    kind, value = given[0]
    if kind == "REGEX":
        try:
            re.compile(value)
        except re.error as error:
            raise click.BadParameter(f"{value!r}: {error}", param_hint="--path-regex") from None
    return PathRule(kind=kind, value=value)


def _headers(values: tuple[str, ...]) -> tuple[Header, ...]:
    headers = []
    for value in values:
        position, colon, rest = value.partition(":")
        upstream_position, equals, upstream_rest = value.partition("=")
        if equals and _HEADER_POSITIONS.get(upstream_position.lower()) is not None:
            # Upstream's spelling: `request=KEY=VALUE`.
            position, colon, rest = upstream_position, ":", upstream_rest
        key, equal, val = rest.partition("=")
        where = _HEADER_POSITIONS.get(position.lower())
        if not colon or not equal or where is None:
            raise click.BadParameter(
                f"{value!r} is not request|response|both:KEY=VALUE (or request=KEY=VALUE)",
                param_hint="--header",
            )
        if not _TOKEN.match(key):
            raise click.BadParameter(f"{key!r} is not a header name", param_hint="--header")
        headers.append(Header(position=where, key=key, val=val))
    return tuple(headers)


_route_options = _apply(
    routing.address_option,
    click.option("--hostname", "--host", "hostname", required=True, help="Host to match."),
    click.option(
        "-i",
        "--id",
        "cluster_id",
        help="Cluster to route to; without it the frontend denies (401).",
    ),
    click.option("-p", "--path", "--path-prefix", "path_prefix", help="Path prefix to match."),
    click.option("--path-regex", help="Path regular expression to match."),
    click.option("--path-equals", help="Exact path to match."),
    click.option("-m", "--method", help="HTTP method to match (default: any)."),
    click.argument("target", nargs=-1, metavar="[id CLUSTER | deny]"),
)


def _target(options: dict[str, Any]) -> None:
    """Upstream's positional forms: `... id CLUSTER` routes to CLUSTER, `... deny` denies
    (401); folded into `cluster_id` (`-i CLUSTER` is the same as `id CLUSTER`)."""
    target = options.pop("target")
    if not target:
        return
    if target == ("deny",):
        cluster = None
    elif len(target) == 2 and target[0] == "id":
        cluster = target[1]
    else:
        raise click.UsageError(f"expected `id CLUSTER` or `deny`, got {' '.join(target)!r}")
    if options.get("cluster_id") not in (None, cluster):
        raise click.UsageError("-i/--id and the positional `id CLUSTER` / `deny` disagree")
    options["cluster_id"] = cluster


def _frontend_group(proxy: HttpProxy) -> click.Group:
    https = proxy == "HTTPS"
    adds = rq.AddHttpsFrontend if https else rq.AddHttpFrontend
    removes = rq.RemoveHttpsFrontend if https else rq.RemoveHttpFrontend

    @click.group(proxy.lower(), cls=SozuGroup, help=f"{proxy} frontends: add, remove.")
    def group() -> None:
        pass

    @group.command("add")
    @_route_options
    @click.option(
        "--position",
        type=click.Choice(["pre", "tree", "post"], case_sensitive=False),
        default="tree",
        show_default=True,
        help="Where the rule sits: before, in or after the hostname tree.",
    )
    @click.option("--tags", "--tag", "tags", multiple=True, help="KEY=VALUE (repeatable).")
    @click.option(
        "--redirect",
        type=click.Choice(_REDIRECTS, case_sensitive=False),
        help="forward (default), permanent (301), found (302), permanent-redirect (308), "
        "unauthorized (401).",
    )
    @click.option(
        "--redirect-scheme",
        type=click.Choice(_SCHEMES, case_sensitive=False),
        help="Scheme of the redirect's Location.",
    )
    @click.option("--redirect-template", help="Body template of the redirect answer.")
    @click.option("--rewrite-host", help="Host template ($HOST[n], $PATH[n]).")
    @click.option("--rewrite-path", help="Path template ($HOST[n], $PATH[n]).")
    @click.option("--rewrite-port", type=click.IntRange(1, 65535), help="Port to rewrite to.")
    @click.option(
        "--required-auth", is_flag=True, help="Require basic auth (cluster authorized hashes)."
    )
    @click.option(
        "--header",
        "headers",
        multiple=True,
        help="request|response|both:KEY=VALUE; an empty VALUE deletes (repeatable).",
    )
    @(_hsts_options if https else _apply())
    @click.pass_context
    def add(ctx: click.Context, /, **options: Any) -> None:
        _target(options)
        hsts = _hsts(options) if https else None
        path = _path_rule(
            options.pop("path_prefix"), options.pop("path_regex"), options.pop("path_equals")
        )
        tags = routing.parse_tags(options.pop("tags"))
        headers = _headers(options.pop("headers"))
        redirect, scheme = options.pop("redirect"), options.pop("redirect_scheme")
        fields: dict[str, Any] = {
            **{name: value for name, value in options.items() if value not in (None, False)},
            "position": options["position"].upper(),
            "path": path,
            "tags": tags,
            "headers": headers,
            "hsts": hsts,
        }
        if redirect is not None:
            fields["redirect"] = redirect.upper().replace("-", "_")
        if scheme is not None:
            fields["redirect_scheme"] = scheme.upper().replace("-", "_")
        frontend = routing.build_request(lambda: adds(frontend=RequestHttpFrontend(**fields)))
        routing.send(ctx, frontend)

    add.help = f"Add an {proxy} frontend: a routing rule of a listener."

    @group.command("remove")
    @_route_options
    @click.pass_context
    def remove(ctx: click.Context, /, **options: Any) -> None:
        _target(options)
        path = _path_rule(
            options.pop("path_prefix"), options.pop("path_regex"), options.pop("path_equals")
        )
        fields = {name: value for name, value in options.items() if value is not None}
        request = routing.build_request(
            lambda: removes(frontend=RequestHttpFrontend(**fields, path=path))
        )
        routing.send(ctx, request)

    remove.help = f"Remove an {proxy} frontend, found by address, hostname, path and method."
    return group


http_frontend_group = _frontend_group("HTTP")
https_frontend_group = _frontend_group("HTTPS")


# ---------------------------------------------------------------------------------------------
# listeners


def _h2_option(name: str) -> Decorator:
    flag = "--" + name.replace("_", "-")
    return click.option(flag, name, type=click.IntRange(0, 2**32 - 1), hidden=True)


# The statuses of upstream's `--answer-NNN FILE` listener options.
ANSWER_CODES = (301, 400, 401, 404, 408, 413, 421, 429, 502, 503, 504, 507)

_http_listener_options = _apply(
    routing.address_option,
    click.option("--public-address", help="Address announced to backends."),
    click.option(
        "--answer",
        "answers",
        multiple=True,
        help="CODE=FILE: custom answer template for that status (repeatable).",
    ),
    *(
        click.option(
            f"--answer-{code}",
            f"answer_{code}",
            metavar="FILE",
            help=f"Upstream's spelling of --answer {code}=FILE.",
        )
        for code in ANSWER_CODES
    ),
    click.option(
        "--expect-proxy/--no-expect-proxy", default=None, help="Expect a PROXY protocol header."
    ),
    click.option("--sticky-name", help="Sticky session cookie name."),
    click.option("--front-timeout", type=click.IntRange(0, 2**32 - 1), help="Seconds."),
    click.option("--back-timeout", type=click.IntRange(0, 2**32 - 1), help="Seconds."),
    click.option("--connect-timeout", type=click.IntRange(0, 2**32 - 1), help="Seconds."),
    click.option("--request-timeout", type=click.IntRange(0, 2**32 - 1), help="Seconds."),
    click.option("--sozu-id-header", help="Name of the request id header sent to backends."),
    click.option("--elide-x-real-ip/--no-elide-x-real-ip", default=None, help="Drop X-Real-IP."),
    click.option("--send-x-real-ip/--no-send-x-real-ip", default=None, help="Send X-Real-IP."),
    *(_h2_option(name) for name in H2_KNOB_NAMES),
)

_tls_listener_options = _apply(
    click.option(
        "--tls-versions",
        multiple=True,
        help="TLS_V12, TLS_V13, ... (repeatable or comma-separated).",
    ),
    # (`--tls-*`: upstream's spellings)
    click.option(
        "--cipher-list",
        "--tls-cipher-list",
        "cipher_list",
        multiple=True,
        help="TLS 1.2 ciphers (repeatable or a,b,...).",
    ),
    click.option(
        "--cipher-suites",
        "--tls-cipher-suites",
        "cipher_suites",
        multiple=True,
        help="TLS 1.3 suites (repeatable or a,b,...).",
    ),
    click.option(
        "--signature-algorithms",
        "--tls-signature-algorithms",
        "signature_algorithms",
        multiple=True,
        help="Repeatable or a,b,...",
    ),
    click.option(
        "--groups-list",
        "--tls-groups-list",
        "groups_list",
        multiple=True,
        help="Key exchange groups (repeatable or a,b).",
    ),
    click.option("--send-tls13-tickets", type=click.IntRange(0), help="TLS 1.3 session tickets."),
    click.option(
        "--alpn-protocols", multiple=True, help="h2, http/1.1 (repeatable or comma-separated)."
    ),
    click.option(
        "--strict-sni-binding/--no-strict-sni-binding",
        default=None,
        help="Refuse a Host that the TLS SNI does not cover.",
    ),
    click.option(
        "--disable-http11/--enable-http11", default=None, help="Refuse HTTP/1.1 (h2 only)."
    ),
    _hsts_options,
)

_TLS_LISTS = ("cipher_list", "cipher_suites", "signature_algorithms", "groups_list")


def _listener_fields(options: dict[str, Any], https: bool, *, update: bool) -> dict[str, Any]:
    """Request fields of the given options; None and empty lists are left out."""
    fields: dict[str, Any] = {}
    named = tuple(
        f"{code}={file}"
        for code in ANSWER_CODES
        if (file := options.pop(f"answer_{code}")) is not None
    )
    codes = answers((*options.pop("answers"), *named))
    if codes:
        fields["answers"] = codes
    if https:
        hsts = _hsts(options)
        if hsts is not None:
            fields["hsts"] = hsts
        versions = tls_versions(options.pop("tls_versions"))
        if versions:
            fields["versions"] = versions
        for name in (*_TLS_LISTS, "alpn_protocols"):
            values = split_list(options.pop(name))
            if values:
                fields[name] = tuple(values)
        alpn = fields.get("alpn_protocols", ())
        if any(protocol not in ("h2", "http/1.1") for protocol in alpn):
            raise click.BadParameter("only h2 and http/1.1", param_hint="--alpn-protocols")
        if options["disable_http11"] and "http/1.1" in alpn:
            raise click.UsageError("--disable-http11 contradicts http/1.1 in --alpn-protocols")
    if not update and options["public_address"] and options["expect_proxy"]:
        raise click.UsageError("--public-address and --expect-proxy are exclusive")
    fields.update({name: value for name, value in options.items() if value is not None})
    return fields


def _listener_add(proxy: HttpProxy) -> click.Command:
    https = proxy == "HTTPS"

    @click.command(
        "add",
        cls=SozuCommand,
        help=f"Add an {proxy} listener (inactive until activated). The configuration's h2_* "
        "knobs are accepted as --h2-* options (--h2-max-concurrent-streams N, ...).",
    )
    @_http_listener_options
    @(_tls_listener_options if https else _apply())
    @(
        _apply(
            click.option("--certificate", type=PEM_PATH, help="Default certificate (PEM file)."),
            click.option("--key", type=PEM_PATH, help="Its private key (PEM file)."),
            click.option("--certificate-chain", type=PEM_PATH, help="Its chain (PEM file)."),
        )
        if https
        else _apply()
    )
    @click.pass_context
    def add(ctx: click.Context, /, **options: Any) -> None:
        tls: dict[str, Any] = {}
        if https:
            certificate_path: Path | None = options.pop("certificate")
            key_path: Path | None = options.pop("key")
            chain_path: Path | None = options.pop("certificate_chain")
            if (certificate_path is None) != (key_path is None):
                raise click.UsageError("--certificate and --key go together")
            if chain_path is not None and certificate_path is None:
                raise click.UsageError("--certificate-chain requires --certificate")
            if certificate_path is not None and key_path is not None:
                tls["certificate"] = certificate_file(certificate_path, "--certificate")
                tls["key"] = key_file(key_path, "--key", tls["certificate"])
            if chain_path is not None:
                tls["certificate_chain"] = chain_file(chain_path, "--certificate-chain")
        fields = {**_listener_fields(options, https, update=False), **tls}
        request: Request
        if https:
            request = routing.build_request(
                lambda: rq.AddHttpsListener(listener=HttpsListenerConfig(**fields))
            )
        else:
            request = routing.build_request(
                lambda: rq.AddHttpListener(listener=HttpListenerConfig(**fields))
            )
        routing.send(ctx, request)

    return add


def _listener_update(proxy: HttpProxy) -> click.Command:
    https = proxy == "HTTPS"
    cls = rq.UpdateHttpsListener if https else rq.UpdateHttpListener

    @click.command(
        "update",
        cls=SozuCommand,
        help=f"Update an {proxy} listener; options not given keep their value. An empty "
        "--answer file removes that custom answer; --hsts* options replace the whole HSTS "
        "policy.",
    )
    @_http_listener_options
    @(_tls_listener_options if https else _apply())
    @(
        click.option(
            "--reset-alpn",
            is_flag=True,
            help="ALPN back to the default (h2, http/1.1).",
        )
        if https
        else _apply()
    )
    @click.pass_context
    def update(ctx: click.Context, /, **options: Any) -> None:
        reset_alpn = bool(options.pop("reset_alpn", False))
        if reset_alpn and options["alpn_protocols"]:
            raise click.UsageError("--reset-alpn contradicts --alpn-protocols")
        fields = _listener_fields(options, https, update=True)
        if reset_alpn:
            fields["alpn_protocols"] = ()  # empty: the default, as upstream
        routing.send(ctx, routing.build_request(lambda: cls(**fields)))

    return update


def add_listener_commands(listener_group: click.Group) -> None:
    """Put `add` and `update` into the `listener http` and `listener https` groups."""
    for proxy in ("HTTP", "HTTPS"):
        group = listener_group.commands[proxy.lower()]
        assert isinstance(group, click.Group)
        group.add_command(_listener_add(proxy))
        group.add_command(_listener_update(proxy))
