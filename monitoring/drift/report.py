"""The drift report: Evidently's HTML page led by the verdict and what decided it, written locally or
to S3."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

from monitoring.drift.detection import DriftResult
from monitoring.drift.settings import DriftSettings
from monitoring.drift.stattests import WASSERSTEIN_KS
from monitoring.features import DRIFT_FEATURES


def report_context(
    result: DriftResult, settings: DriftSettings, window: str, *, reference: str = "", model: str = ""
) -> str:
    """The block a person reads first: verdict, window, reference, model, and per feature the statistic
    that decided (normed Wasserstein vs its threshold, K-S p-value vs its significance)."""
    share = "n/a" if result.drift_share is None else f"{result.drift_share:.2f}"
    verdict = {"drift": "DRIFT", "ok": "no drift", "insufficient_data": "insufficient data"}[result.state]
    lines = [
        f"<p class='verdict'><b>{verdict}</b>: drift share {share} (drift at &ge; {settings.drift_share:g})"
        + (f"; drifted: {html.escape(', '.join(result.drifted))}" if result.drifted else "")
        + "</p>",
        "<ul>",
        f"<li>window: the last {html.escape(window)}, {result.window_size} request images "
        f"(at least {settings.min_samples} for a verdict), up to "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(result.timestamp))}</li>",
        f"<li>reference: {html.escape(reference or 'given table')}, {result.reference_size} "
        f"{settings.images.upper()} tiles of the {html.escape(settings.split)} split from "
        f"{result.reference_sources} source images</li>",
        f"<li>model: {html.escape(model or 'not given (--model)')}</li>",
        f"<li>method: {html.escape(settings.stattest)}"
        + (
            f" (drifted = normed Wasserstein &ge; its threshold <b>and</b> K-S p &lt; {settings.threshold:g};"
            " thresholds calibrated on the reference's own sources)"
            if settings.stattest == WASSERSTEIN_KS
            else ""
        )
        + "</li></ul>",
    ]
    if result.pvalues:
        rows = []
        for feature in DRIFT_FEATURES:
            if feature not in result.pvalues:
                continue
            score, p = result.scores.get(feature, float("nan")), result.pvalues[feature]
            limit = result.thresholds.get(feature)
            drifted = feature in result.drifted
            if settings.stattest == WASSERSTEIN_KS and limit is not None:
                far, real = score >= limit, p < settings.threshold
                why = (
                    "distance and p-value both past their limits"
                    if drifted
                    else "distance under its threshold"
                    if not far
                    else "K-S p-value not significant"
                    if not real
                    else "-"
                )
            else:
                why = "the method's score" if drifted else "-"
            rows.append(
                f"<tr><td>{feature}</td><td>{'<b>drifted</b>' if drifted else 'no'}</td>"
                f"<td>{score:.3f}</td><td>{'' if limit is None else f'{limit:.3f}'}</td>"
                f"<td>{p:.3g}</td><td>{html.escape(why)}</td></tr>"
            )
        lines.append(
            "<table border='1' cellpadding='3' style='border-collapse:collapse'><tr><th>feature</th>"
            "<th>drifted</th><th>score (normed Wasserstein)</th><th>threshold</th><th>K-S p-value</th>"
            f"<th>what decided</th></tr>{''.join(rows)}</table>"
        )
    return (
        "<section id='hndsr-drift-context' style='font-family:sans-serif;margin:1em'>"
        + "".join(lines)
        + "</section>"
    )


def report_html(
    result: DriftResult, settings: DriftSettings, window: str, *, reference: str = "", model: str = ""
) -> str:
    context = report_context(result, settings, window, reference=reference, model=model)
    if result.snapshot is not None:
        page = str(result.snapshot.get_html_str(as_iframe=False))
        match = re.search(r"<body[^>]*>", page)
        if match:
            return page[: match.end()] + context + page[match.end() :]
        return context + page
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>HNDSR drift: insufficient data</title>"
        "</head><body><h1>HNDSR drift: insufficient data</h1>"
        f"<p>{result.window_size} request records in the last {html.escape(window)}, fewer than the "
        f"{settings.min_samples} needed for a verdict (reference: {result.reference_size} images). "
        f"No drift is reported; this is not an alarm.</p>{context}</body></html>"
    )


def write_text(target: str, text: str, content_type: str = "text/html") -> None:
    """A local path or ``s3://bucket/key``."""
    data = text.encode("utf-8")
    if target.startswith("s3://"):
        import io

        from lake.storage import S3Settings, parse_s3_uri

        bucket, key = parse_s3_uri(target)
        S3Settings.from_env().client().put_object(
            bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
