"""``hndsr drift run|reference``: thin commands over :mod:`monitoring.drift` (Evidently, Pushgateway),
imported only when one of them runs — the core never imports evidently."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

drift_app = typer.Typer(
    help="Drift monitoring of served requests against the training data.", no_args_is_help=True
)


def register(app: typer.Typer, *, friendly_errors: Callable[[Any], Any]) -> None:
    app.add_typer(drift_app, name="drift")

    @drift_app.command("run")
    @friendly_errors
    def drift_run(
        reference: Annotated[
            str, typer.Option(help="catalog.parquet (hndsr prepare) or a features table; path or s3://.")
        ],
        stats: Annotated[
            str, typer.Option(help="Request statistics: DIR or s3://bucket/prefix (serve --request-stats).")
        ],
        window: Annotated[str, typer.Option(help="Records of the last 30m | 24h | 7d ...")] = "24h",
        report: Annotated[str | None, typer.Option(help="HTML report: path or s3://bucket/key.")] = None,
        pushgateway: Annotated[
            str | None, typer.Option(help="Pushgateway URL, e.g. http://pushgateway:9091.")
        ] = None,
        schedule: Annotated[
            str | None, typer.Option(help="How often this runs (default: the window); stale after 2x.")
        ] = None,
        drift_share: Annotated[float, typer.Option(help="Share of drifted features that is drift.")] = 0.3,
        threshold: Annotated[
            float, typer.Option(help="K-S p-value significance (wasserstein_ks; the ks threshold).")
        ] = 0.05,
        stattest: Annotated[
            str,
            typer.Option(
                help="Per-feature method: wasserstein_ks | auto (Evidently's choice) | ks | psi ..."
            ),
        ] = "wasserstein_ks",
        stattest_threshold: Annotated[
            float | None,
            typer.Option(help="The method's threshold (default: 0.25 for wasserstein_ks, Evidently's else)."),
        ] = None,
        min_samples: Annotated[int, typer.Option(help="Fewer records: insufficient data, no verdict.")] = 50,
        split: Annotated[str, typer.Option(help="Catalog split of the reference (or all).")] = "train",
        reference_images: Annotated[str, typer.Option(help="lr (the model's inputs) | hr tiles.")] = "lr",
        reference_sample: Annotated[int, typer.Option(help="Reference images used at most.")] = 5000,
        json_out: Annotated[Path | None, typer.Option("--json", help="Also write the summary here.")] = None,
        fail_on_drift: Annotated[bool, typer.Option(help="Exit 1 when drift is detected.")] = False,
        model: Annotated[
            str,
            typer.Option(help="The model serving the window (e.g. models:/hndsr@champion), for the report."),
        ] = "",
    ) -> None:
        """Compare a window of request statistics with the reference; report and push the verdict."""
        from monitoring.drift.job import run_drift
        from monitoring.drift.settings import DriftSettings

        settings = DriftSettings(
            drift_share=drift_share,
            threshold=threshold,
            stattest=stattest,
            stattest_threshold=stattest_threshold,
            min_samples=min_samples,
            reference_sample=reference_sample,
            split=split,
            images=reference_images,
        )
        result = run_drift(
            reference=reference,
            stats=stats,
            window=window,
            report=report,
            pushgateway=pushgateway,
            schedule=schedule,
            settings=settings,
            model=model,
        )
        summary = result.summary()
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(summary, indent=2) + "\n")
        share = "n/a" if result.drift_share is None else f"{result.drift_share:.2f}"
        typer.echo(
            f"{result.state}: {result.window_size} requests in {window} vs {result.reference_size} reference "
            f"images, drift share {share}"
            + (f", drifted: {', '.join(result.drifted)}" if result.drifted else "")
            + (f" -> {report}" if report else "")
        )
        if fail_on_drift and result.detected:
            raise typer.Exit(1)

    @drift_app.command("reference")
    @friendly_errors
    def drift_reference(
        catalog: Annotated[str, typer.Argument(help="catalog.parquet of hndsr prepare (path or s3://).")],
        out: Annotated[Path, typer.Option(help="Features table (parquet) for drift run --reference.")],
        split: Annotated[str, typer.Option(help="Catalog split (or all).")] = "train",
        reference_images: Annotated[str, typer.Option(help="lr | hr tiles.")] = "lr",
        reference_sample: Annotated[int, typer.Option(help="Images used at most.")] = 5000,
    ) -> None:
        """Compute the reference features once (drift run computes and caches them otherwise)."""
        from monitoring.drift.reference import load_reference
        from monitoring.drift.settings import DriftSettings

        settings = DriftSettings(split=split, images=reference_images, reference_sample=reference_sample)
        settings.check()
        table = load_reference(catalog, settings)
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(out)
        typer.echo(f"{len(table)} reference images -> {out}")
