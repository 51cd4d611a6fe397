"""``hndsr data s3-server|lake-init|upload|download``: the S3 data lake from the shell, and ``s3://``
sources for ``hndsr prepare`` (minio is imported only when one of them runs)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from hndsr.cli_data import REMOTE_SOURCES, Decorator


def fetch_s3_prefix(uri: str, dest: Path) -> None:
    from lake.storage import S3Settings, download_prefix

    download_prefix(S3Settings.from_env(), uri, dest)


def register(data_app: typer.Typer, *, friendly_errors: Decorator) -> None:
    """Add the lake commands under ``hndsr data`` and let ``hndsr prepare --src`` read ``s3://``."""
    REMOTE_SOURCES["s3"] = fetch_s3_prefix

    @data_app.command("s3-server")
    @friendly_errors
    def s3_server_cmd(
        dir_: Annotated[Path, typer.Option("--dir", help="Where the server keeps its data.")] = Path(".lake"),
        port: Annotated[
            int, typer.Option(help="S3 port on 127.0.0.1 (other listeners take free ports).")
        ] = 8333,
        access_key: Annotated[str, typer.Option(help="Access key.")] = "hndsr",
        secret_key: Annotated[
            str | None,
            typer.Option(help="Secret key (default: $AWS_SECRET_ACCESS_KEY, else a random one, printed)."),
        ] = None,
    ) -> None:
        """Run a real S3 server (SeaweedFS) on 127.0.0.1 with the lake/dvc/mlflow buckets, until Ctrl+C."""
        from lake.server import EmbeddedS3

        server = EmbeddedS3(
            dir_,
            port=port,
            access_key=access_key,
            secret_key=secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY"),
        )
        previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl+C
        try:
            with server:
                typer.echo(
                    f"S3 server on {server.endpoint} (buckets: {', '.join(server.buckets)}); clients need:"
                )
                for key, value in server.settings.env().items():
                    typer.echo(f"export {key}={value}")
                typer.echo("Ctrl+C stops it.")
                code = server.wait()
        except KeyboardInterrupt:
            typer.echo("S3 server stopped.")
            return
        finally:
            signal.signal(signal.SIGTERM, previous)
        raise typer.Exit(code or 1)  # it exited by itself

    @data_app.command("lake-init")
    @friendly_errors
    def lake_init_cmd() -> None:
        """Create the lake, dvc and mlflow buckets on the S3 server of AWS_ENDPOINT_URL where missing."""
        from lake.storage import S3Settings, ensure_buckets

        settings = S3Settings.from_env()
        created = ensure_buckets(settings)
        typer.echo(f"{settings.endpoint}: created {', '.join(created) or 'nothing (all buckets exist)'}")

    @data_app.command("upload")
    @friendly_errors
    def upload_cmd(
        src: Annotated[Path, typer.Argument(help="Local folder.")],
        uri: Annotated[str, typer.Argument(help="s3://bucket/prefix, e.g. s3://hndsr/raw")],
    ) -> None:
        """Upload a folder to the lake (files whose MD5 already matches are skipped)."""
        from lake.storage import S3Settings, upload_dir

        typer.echo(f"{src} -> {uri}: {upload_dir(S3Settings.from_env(), src, uri)}")

    @data_app.command("download")
    @friendly_errors
    def download_cmd(
        uri: Annotated[str, typer.Argument(help="s3://bucket/prefix")],
        dest: Annotated[Path, typer.Argument(help="Local folder.")],
    ) -> None:
        """Mirror a lake prefix into a local folder (objects whose etag is unchanged are skipped)."""
        from lake.storage import S3Settings, download_prefix

        typer.echo(f"{uri} -> {dest}: {download_prefix(S3Settings.from_env(), uri, dest)}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
