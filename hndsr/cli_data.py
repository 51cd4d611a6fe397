"""Data commands of the ``hndsr`` CLI: prepare, validate-data, and the S3 data lake (``hndsr data ...``).

Registered on the main app by ``hndsr.cli``, which passes in its error mapping (``friendly_errors``) and
``--set`` parser so that every command fails the same way. Heavy imports (GX, minio, pyarrow) happen
inside the commands.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

logger = logging.getLogger(__name__)

EXIT_VALIDATION_FAILED = 1

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
SetParser = Callable[[list[str] | None], dict[str, Any]]

DEFAULT_PARAMS = Path("params.yaml")
ParamsOpt = Annotated[Path, typer.Option(help="params.yaml (default: ./params.yaml, else built-in defaults)")]
ProfileOpt = Annotated[str | None, typer.Option(help="Profile of params.yaml (e.g. quick).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override, e.g. prepare.tile_size=128")]


def _cache_root() -> Path:
    env = os.environ.get("HNDSR_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hndsr"


def register(
    app: typer.Typer, data_app: typer.Typer, *, friendly_errors: Decorator, parse_sets: SetParser
) -> None:
    """Add ``prepare``, ``validate-data`` and ``data s3-server|lake-init|upload|download`` to the CLI."""

    def load(params: Path, profile: str | None, set_: list[str] | None) -> Any:
        from hndsr.config import load_params, parse_params

        if params == DEFAULT_PARAMS and not params.is_file() and profile is None:
            # Outside a project checkout: the built-in defaults (as `hndsr evaluate` does).
            logger.info("no %s here: using the default parameters", params)
            return parse_params({}, overrides=parse_sets(set_))
        return load_params(params, profile=profile, overrides=parse_sets(set_))

    @app.command("prepare")
    @friendly_errors
    def prepare_cmd(
        src: Annotated[
            str | None,
            typer.Option(help="Folder or s3://bucket/prefix of raw HR images (default: prepare.src)."),
        ] = None,
        out: Annotated[Path | None, typer.Option(help="Output folder (default: prepare.out).")] = None,
        params: ParamsOpt = DEFAULT_PARAMS,
        profile: ProfileOpt = None,
        set_: SetOpt = None,
        cache_dir: Annotated[
            Path | None, typer.Option(help="Local mirror of an s3:// source (default: ~/.cache/hndsr/s3).")
        ] = None,
    ) -> None:
        """Tile raw HR images, make their LR counterparts per scale, and write catalog.parquet.

        Bad files (empty, corrupt, unsupported, too small, all nodata, duplicates) are skipped and
        listed with the reason in rejects.parquet; `hndsr validate-data` judges the result.
        """
        from hndsr.lake import S3Settings, download_prefix, is_s3_uri, parse_s3_uri
        from hndsr.prepare import PrepareConfig, prepare

        p = load(params, profile, set_)
        source = src or p.prepare.src
        out_dir = out or Path(p.prepare.out)
        start = time.monotonic()
        prefix = ""
        if is_s3_uri(source):
            bucket, key = parse_s3_uri(source)
            local = (cache_dir or _cache_root() / "s3") / bucket / key
            download_prefix(S3Settings.from_env(), source, local)
            prefix = source.rstrip("/") + "/"
            source = str(local)
        result = prepare(source, out_dir, PrepareConfig.from_params(p), source_prefix=prefix)
        result.seconds = time.monotonic() - start
        typer.echo(f"prepared {out_dir}: {result.line()}")

    @app.command("validate-data")
    @friendly_errors
    def validate_data_cmd(
        catalog: Annotated[
            Path | None, typer.Option(help="catalog.parquet (default: <prepare.out>/catalog.parquet).")
        ] = None,
        report: Annotated[Path | None, typer.Option(help="JSON report (default: validate.report).")] = None,
        docs: Annotated[
            Path | None, typer.Option(help="Also build Great Expectations HTML data docs in this folder.")
        ] = None,
        params: ParamsOpt = DEFAULT_PARAMS,
        profile: ProfileOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Run the Great Expectations suites over the catalog; exit 1 naming each failed expectation."""
        for module in ("data_validation", "great_expectations", "pandas", "pyarrow"):
            if importlib.util.find_spec(module) is None:
                raise typer.Exit(_missing_extra(module))
        from data_validation.runner import thresholds_from_params, validate_catalog

        p = load(params, profile, set_)
        catalog_path = catalog or Path(p.prepare.out) / "catalog.parquet"
        report_path = report or Path(p.validate.report)
        result = validate_catalog(
            catalog_path, thresholds_from_params(p), report_path=report_path, docs_dir=docs
        )
        where = f"report: {report_path}" + (f", data docs: {docs / 'index.html'}" if docs else "")
        if result.success:
            c = result.counts
            typer.echo(
                f"validation passed: {result.evaluated} expectations over {c['tiles']} tiles from "
                f"{c['sources']} sources ({c['rejected']} rejected); {where}"
            )
            return
        for failure in result.failures:
            typer.echo(f"FAILED {failure.line()}", err=True)
        typer.echo(
            f"error: data validation failed ({len(result.failures)} of {result.evaluated} expectations); "
            f"{where}",
            err=True,
        )
        raise typer.Exit(EXIT_VALIDATION_FAILED)

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
        from hndsr.s3server import EmbeddedS3

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
        from hndsr.lake import S3Settings, ensure_buckets

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
        from hndsr.lake import S3Settings, upload_dir

        typer.echo(f"{src} -> {uri}: {upload_dir(S3Settings.from_env(), src, uri)}")

    @data_app.command("download")
    @friendly_errors
    def download_cmd(
        uri: Annotated[str, typer.Argument(help="s3://bucket/prefix")],
        dest: Annotated[Path, typer.Argument(help="Local folder.")],
    ) -> None:
        """Mirror a lake prefix into a local folder (objects whose etag is unchanged are skipped)."""
        from hndsr.lake import S3Settings, download_prefix

        typer.echo(f"{uri} -> {dest}: {download_prefix(S3Settings.from_env(), uri, dest)}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _missing_extra(module: str) -> int:
    typer.echo(f"error: {module} is not installed: data validation needs pip install 'hndsr[data]'", err=True)
    return 2
