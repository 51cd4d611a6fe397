"""``hndsr prepare``: raw HR images (a folder, or a remote prefix an adapter can fetch) -> tiles.

Registered on the main app by ``hndsr.cli``, which passes in its error mapping (``friendly_errors``) and
``--set`` parser so that every command fails the same way. The core holds no storage client: remote
sources (``s3://`` from the ``lake`` package) are fetched by whatever registered their scheme.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from hndsr.errors import InputError
from hndsr.files import cache_root

logger = logging.getLogger(__name__)

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
SetParser = Callable[[list[str] | None], dict[str, Any]]

DEFAULT_PARAMS = Path("params.yaml")
ParamsOpt = Annotated[Path, typer.Option(help="params.yaml (default: ./params.yaml, else built-in defaults)")]
ProfileOpt = Annotated[str | None, typer.Option(help="Profile of params.yaml (e.g. quick).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override, e.g. prepare.tile_size=128")]


# scheme -> fetch(uri, local_dir): mirror a remote prefix into local_dir (adapters register theirs).
RemoteFetch = Callable[[str, Path], Any]
REMOTE_SOURCES: dict[str, RemoteFetch] = {}


def load_params_or_defaults(params: Path, profile: str | None, overrides: dict[str, Any]) -> Any:
    """params.yaml with its profile and overrides; outside a checkout, the built-in defaults."""
    from hndsr.config import load_params, parse_params

    if params == DEFAULT_PARAMS and not params.is_file() and profile is None:
        # Outside a project checkout: the built-in defaults (as `hndsr evaluate` does).
        logger.info("no %s here: using the default parameters", params)
        return parse_params({}, overrides=overrides)
    return load_params(params, profile=profile, overrides=overrides)


def register(app: typer.Typer, *, friendly_errors: Decorator, parse_sets: SetParser) -> None:
    """Add ``prepare`` to the CLI."""

    @app.command("prepare")
    @friendly_errors
    def prepare_cmd(
        src: Annotated[
            str | None,
            typer.Option(
                help="Folder or s3://bucket/prefix of raw HR images, or a STAC Item/Catalog JSON (local or "
                "s3://): its Items' raster assets (default: prepare.src)."
            ),
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
        from hndsr.prepare import PrepareConfig, prepare
        from hndsr.stac_items import is_stac_source, raster_assets

        p = load_params_or_defaults(params, profile, parse_sets(set_))
        source = src or p.prepare.src
        out_dir = out or Path(p.prepare.out)
        start = time.monotonic()
        prefix = ""
        stac_document = None
        if is_stac_source(source):  # the document's folder is the source; its Items name the files
            source, _, stac_name = source.rstrip("/").rpartition("/")
            source = source or "."
            stac_document = stac_name
        scheme, remote, path = source.partition("://")
        if remote:
            fetch = REMOTE_SOURCES.get(scheme)
            if fetch is None:
                known = ", ".join(f"{s}://" for s in sorted(REMOTE_SOURCES)) or "none"
                raise InputError(
                    f"--src {source}: no {scheme}:// source is available here (known: {known}); "
                    "install the extra that provides it (s3://: pip install 'hndsr[data]') or give a folder"
                )
            local = (cache_dir or cache_root() / scheme) / path.strip("/")
            fetch(source, local)
            prefix = source.rstrip("/") + "/"
            source = str(local)
        stac_assets = None
        if stac_document is not None:
            stac_assets = raster_assets(Path(source) / stac_document)  # validated: errors before writing
        result = prepare(
            source, out_dir, PrepareConfig.from_params(p), source_prefix=prefix, stac_assets=stac_assets
        )
        result.seconds = time.monotonic() - start
        typer.echo(f"prepared {out_dir}: {result.line()}")
