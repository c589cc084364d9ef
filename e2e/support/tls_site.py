"""An HTTPS listener whose one certificate names `alpha.test` and `beta.test`, each routed to
its own nginx cluster, with the Prometheus endpoint on: the site of the HTTP/2 tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trustme

from e2e.support.http_backends import cluster, listener
from e2e.support.nginx import Nginx


def alpha_beta_https(
    directory: Path, listen: int, metrics_port: int, nginx: Nginx, **listener_fields: Any
) -> tuple[str, Path, trustme.CA]:
    """The daemon config (`listener_fields` go to the listener), the CA file clients trust,
    and the CA; the certificate, key and CA files are written in `directory`."""
    ca = trustme.CA()
    issued = ca.issue_cert("alpha.test", "beta.test")
    cert, key, ca_file = directory / "site.crt", directory / "site.key", directory / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    config = listener(listen, "https", **listener_fields)
    for name in ("alpha", "beta"):
        frontend: dict[str, object] = {
            "address": f"127.0.0.1:{listen}",
            "hostname": f"{name}.test",
            "certificate": str(cert),
            "key": str(key),
        }
        config += cluster(name, [frontend], [{"address": nginx.address(name), "backend_id": name}])
    config += f'[metrics]\nprometheus_address = "127.0.0.1:{metrics_port}"\n'
    return config, ca_file, ca
