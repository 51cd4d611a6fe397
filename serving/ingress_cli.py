"""``hndsr serve ingress``: nginx (TLS, per-client rate limit, body limit, request buffering) in front of
a running transformer — a thin command over :mod:`serving.ingress`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer


def register(serve_app: typer.Typer, *, friendly_errors: Callable[[Any], Any]) -> None:
    @serve_app.command("ingress")
    @friendly_errors
    def serve_ingress(
        upstream: Annotated[str, typer.Option(help="host:port of the transformer.")] = "127.0.0.1:8080",
        https_port: Annotated[int, typer.Option(help="HTTPS port.")] = 8443,
        http_port: Annotated[int, typer.Option(help="Plain HTTP port (redirects to HTTPS).")] = 8000,
        bind: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        cert: Annotated[Path | None, typer.Option(help="PEM certificate (default: self-signed).")] = None,
        key: Annotated[Path | None, typer.Option(help="PEM private key of --cert.")] = None,
        rate: Annotated[
            float | None, typer.Option(help="Requests/s per client (default: the transformer's).")
        ] = None,
        burst: Annotated[
            int | None, typer.Option(help="Burst per client (default: the transformer's).")
        ] = None,
        prefix: Annotated[
            Path, typer.Option(help="Where nginx.conf, logs, temp files and the certificate go.")
        ] = Path("outputs/ingress"),
    ) -> None:
        """nginx in front of the transformer: TLS, limits and buffering; the body limit and timeouts
        are the serving configuration's."""
        from serving.ingress import IngressConfig, NginxIngress, run_ingress

        if (cert is None) != (key is None):
            raise typer.BadParameter("give both --cert and --key, or neither (self-signed)")
        options: dict[str, Any] = {"rate_per_s": rate, "burst": burst}
        config = IngressConfig(
            upstream=upstream,
            https_port=https_port,
            http_port=http_port,
            bind=bind,
            **{k: v for k, v in options.items() if v is not None},
        )
        run_ingress(NginxIngress(config, prefix, certificate=cert, certificate_key=key))
