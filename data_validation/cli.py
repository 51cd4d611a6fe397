"""``hndsr validate-data``: the Great Expectations suites over a prepared catalog (GX, pandas and pyarrow
are imported only when it runs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from hndsr.cli_data import (
    DEFAULT_PARAMS,
    Decorator,
    ParamsOpt,
    ProfileOpt,
    SetOpt,
    SetParser,
    load_params_or_defaults,
)

EXIT_VALIDATION_FAILED = 1


def register(app: typer.Typer, *, friendly_errors: Decorator, parse_sets: SetParser) -> None:
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
        for module in ("great_expectations", "pandas", "pyarrow"):
            if importlib.util.find_spec(module) is None:
                raise typer.Exit(_missing_extra(module))
        from data_validation.runner import thresholds_from_params, validate_catalog

        p = load_params_or_defaults(params, profile, parse_sets(set_))
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


def _missing_extra(module: str) -> int:
    typer.echo(f"error: {module} is not installed: data validation needs pip install 'hndsr[data]'", err=True)
    return 2
