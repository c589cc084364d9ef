"""Which upstream keys we recognise but do not implement, and which keys each listener
protocol takes.

Key patterns use `*` for a table key chosen by the user (a cluster id) and `[]` for an array
element: `clusters.*.frontends[].hsts`. Every key of upstream Sōzu 2.1.0 (listed in
tests/config/test_config_upstream.py; docs/configuration.md says what each does) is either a
field of `config_schema` (implemented: carried into requests or honoured by the daemon) or
listed in `UNIMPLEMENTED_KEYS` (accepted with one warning, then ignored).
"""

from __future__ import annotations

from typing import Final

from sozu.command.config_schema import LEGACY_ANSWER_CODES
from sozu.command.types import H2_KNOB_NAMES

UNIMPLEMENTED_KEYS: Final[tuple[str, ...]] = (
    # Initial size of a growable buffer: meaningless for our framing (the maximum is honoured).
    "command_buffer_size",
    # Tuning of upstream's session slab and splice pipes.
    "slab_entries_per_connection",
    "splice_pipe_capacity_bytes",
    "basic_auth_max_credential_bytes",
    # Process tuning the worker does not take yet.
    "handle_process_affinity",
    "zombie_check_interval",
    "accept_queue_timeout",
    "evict_on_queue_full",
    # Log formatting and audit sinks.
    "log_colored",
    "access_logs_format",
    "access_logs_colored",
    "audit_logs_target",
    "audit_logs_json_target",
)

_UNIMPLEMENTED: Final = frozenset(UNIMPLEMENTED_KEYS)

# HTTP/2 listener keys accepted, kept in the state, and not applied by workers yet: each one
# set in a configuration file is warned about by name.
UNAPPLIED_H2_KEYS: Final[tuple[str, ...]] = (
    "h2_max_glitch_count",
    "h2_stream_shrink_ratio",
    "h2_max_rst_stream_lifetime",
    "h2_max_rst_stream_abusive_lifetime",
    "h2_max_rst_stream_emitted_lifetime",
    "h2_max_header_table_size",
    "h2_max_header_fields",
    "h2_stream_idle_timeout_seconds",
    "h2_graceful_shutdown_deadline_seconds",
)


def is_unimplemented(pattern: str) -> bool:
    return pattern in _UNIMPLEMENTED


_COMMON: Final = frozenset(
    {"address", "protocol", "public_address", "front_timeout", "back_timeout"}
)
_HTTP: Final = _COMMON | {
    "expect_proxy",
    "connect_timeout",
    "request_timeout",
    "sticky_name",
    "answers",
    "sozu_id_header",
    "elide_x_real_ip",
    "send_x_real_ip",
    *(f"answer_{code}" for code in LEGACY_ANSWER_CODES),
    *H2_KNOB_NAMES,
}
_HTTPS: Final = _HTTP | {
    "certificate",
    "certificate_chain",
    "key",
    "tls_versions",
    "cipher_list",
    "cipher_suites",
    "groups_list",
    "send_tls13_tickets",
    "alpn_protocols",
    "strict_sni_binding",
    "disable_http11",
    "hsts",
}

LISTENER_KEYS: Final[dict[str, frozenset[str]]] = {
    "http": _HTTP,
    "https": _HTTPS,
    "tcp": _COMMON | {"expect_proxy", "connect_timeout"},
    "udp": _COMMON | {"max_rx_datagram_size", "max_flows"},
}
"""The listener keys that apply to each protocol."""

LISTENER_TLS_KEYS: Final = frozenset({"certificate", "certificate_chain", "key", "hsts"})
"""Listener keys that are an error, not a warning, on a listener other than https."""

TCP_FRONTEND_KEYS: Final = frozenset({"address", "tags"})
"""The frontend keys that apply to a tcp cluster's frontend."""
