"""The evaluation's HTML report, written for a person deciding whether to ship the challenger.

It leads with a one-line verdict (challenger vs incumbent vs bicubic at x4, the gate's decision and
why), the versions of model, data and code, then a table that marks the winner of every metric at
every scale with its delta, delta charts, per-image scores with per-image delta charts, and the best
and worst image of every scale with zoomed crops and difference maps.

Images are embedded as base64 PNGs, so the single file renders in the Kubeflow UI (and offline).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hndsr.data import load_rgb
from hndsr.evaluation import METRIC_KEYS
from hndsr.image_quality import psnr_y
from hndsr.inference import Upscaler
from hndsr.resample import degrade, resize

CROP = 192  # output px the example panels are rendered from (context for the model)
ZOOM_CROP = 96  # central output px shown per panel...
ZOOM = 2  # ...at this magnification (nearest neighbour), so single pixels are visible
DIFF_GAIN = 4.0  # difference maps show |image - HR| x this

# Metrics where lower is better: their deltas are drawn with the sign flipped, so a bar to the
# right is always an improvement.
LOWER_IS_BETTER = {"lpips", "ergas", "sam"}
METRIC_LABELS = {
    "psnr_y": "PSNR-Y (dB)",
    "ssim_y": "SSIM-Y",
    "lpips": "LPIPS",
    "ergas": "ERGAS",
    "sam": "SAM (deg)",
}


@dataclass(frozen=True)
class Verdict:
    """What the report leads with. ``decision``/``reason``: the promotion gate's rule applied to the
    figures measured here (the register step applies it again against the registry's champion)."""

    decision: str = ""
    reason: str = ""
    gate: str = ""
    versions: dict[str, str] = field(default_factory=dict)


def _png_b64(image: torch.Tensor) -> str:
    pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = int(image.shape[-2]), int(image.shape[-1])
    ch, cw = min(h, size), min(w, size)
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[:, top : top + ch, left : left + cw]


def _diff_map(image: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """|image - HR| averaged over RGB, x DIFF_GAIN, as a grey image (white = large error)."""
    err = ((image - hr).abs().mean(dim=0, keepdim=True) * DIFF_GAIN).clamp(0, 1)
    return err.expand(3, -1, -1)


def better(key: str, a: float, b: float) -> bool:
    return a < b if key in LOWER_IS_BETTER else a > b


def winner(key: str, values: dict[str, float]) -> str:
    """The label with the best finite value of ``key`` ("" when none is finite)."""
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if not finite:
        return ""
    pick = min if key in LOWER_IS_BETTER else max
    return pick(finite, key=lambda k: finite[k])


def _fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def _delta(key: str, model: float, other: float) -> str:
    """``+0.123 ▲`` (better) / ``-0.05 ▼`` (worse) for the challenger minus ``other``."""
    d = model - other
    if not math.isfinite(d):
        return "n/a"
    if d == 0:
        return "0 ="
    up = better(key, model, other)
    return f'<span class="{"win" if up else "lose"}">{d:+.4g} {"&#9650;" if up else "&#9660;"}</span>'


def _panels(
    upscaler: Upscaler,
    path: Path,
    scale: float,
    steps: int,
    incumbent: Upscaler | None,
    incumbent_label: str,
) -> list[tuple[str, str]]:
    hr = _center_crop(load_rgb(path), CROP)
    size = (int(hr.shape[-2]), int(hr.shape[-1]))
    lr = degrade(hr, scale)
    bicubic = resize(lr, size).clamp(0, 1)
    border = int(np.ceil(scale))

    def db(image: torch.Tensor) -> str:
        return f"{psnr_y(image[None], hr[None], border=border):.2f} dB"

    def zoom(image: torch.Tensor) -> str:
        return _png_b64(_center_crop(image, ZOOM_CROP))

    nearest = torch.nn.functional.interpolate(lr[None], size=size, mode="nearest")[0]  # LR at HR size
    sr = upscaler.upscale(lr, scale=scale, out_size=size, steps=steps).cpu().clamp(0, 1)
    panels = [
        (f"LR {lr.shape[-1]}x{lr.shape[-2]} (nearest)", zoom(nearest)),
        (f"bicubic, {db(bicubic)}", zoom(bicubic)),
    ]
    old = None
    if incumbent is not None:
        old = incumbent.upscale(lr, scale=scale, out_size=size, steps=steps).cpu().clamp(0, 1)
        panels.append((f"{incumbent_label}, {db(old)}", zoom(old)))
    name = "challenger" if incumbent is not None else "model"
    panels += [(f"{name}, {db(sr)}", zoom(sr)), ("HR", zoom(hr))]
    panels.append((f"|bicubic - HR| x{DIFF_GAIN:g}", zoom(_diff_map(bicubic, hr))))
    if old is not None:
        panels.append((f"|{incumbent_label} - HR| x{DIFF_GAIN:g}", zoom(_diff_map(old, hr))))
    panels.append((f"|{name} - HR| x{DIFF_GAIN:g}", zoom(_diff_map(sr, hr))))
    return panels


def _bar_chart(rows: list[tuple[str, float, float]], spans: dict[str, float] | None = None) -> str:
    """An inline SVG bar chart of ``(label, delta, improvement)`` rows: bars right (green) = better.
    Bars are scaled per label prefix (the metric) to ``spans``; the delta is printed beside each."""
    if not rows:
        return ""
    row_h, label_w, half = 18, 200, 160
    parts = []
    for i, (label, delta, improvement) in enumerate(rows):
        y = i * row_h
        span = (spans or {}).get(label.split(" ")[0]) or max(abs(r[2]) for r in rows) or 1.0
        width = half * abs(improvement) / span
        x = label_w + half if improvement >= 0 else label_w + half - width
        colour = "#2a9d4b" if improvement >= 0 else "#c8402f"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{width:.1f}" height="{row_h - 6}" fill="{colour}"/>'
            f'<text x="{label_w + 2 * half + 6}" y="{y + 13}">{delta:+.4g}</text>'
        )
    height = len(rows) * row_h
    axis = f'<line x1="{label_w + half}" y1="0" x2="{label_w + half}" y2="{height}" stroke="#333"/>'
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + 2 * half + 80}" height="{height}" '
        f'font-size="12" font-family="sans-serif">{"".join(parts)}{axis}</svg>'
    )


def _delta_chart(evaluations: list[dict[str, Any]], versus: str) -> str:
    """The challenger's improvement over ``versus`` per metric and scale, each metric scaled to its
    own largest bar."""
    rows = []
    for key in METRIC_KEYS:
        for ev in sorted(evaluations, key=lambda e: e["scale"]):
            if versus not in ev:
                continue
            delta = float(ev["model"][key]) - float(ev[versus][key])
            improvement = -delta if key in LOWER_IS_BETTER else delta
            if math.isfinite(improvement):
                rows.append((f"{key} x{float(ev['scale']):g}", delta, improvement))
    spans = {k: max((abs(r[2]) for r in rows if r[0].split(" ")[0] == k), default=1.0) for k in METRIC_KEYS}
    return _bar_chart(rows, spans)


def per_image_gain(row: dict[str, Any], versus: str = "bicubic") -> float:
    return float(row["model"]["psnr_y"]) - float(row[versus]["psnr_y"])


def _per_image(ev: dict[str, Any], whos: list[tuple[str, str]]) -> str:
    """Per-image PSNR-Y/SSIM-Y/LPIPS of every model, the challenger's gain, and a chart of the gains."""
    keys = ("psnr_y", "ssim_y", "lpips")
    whos = [w for w in whos if all(w[0] in row for row in ev.get("per_image", []))]
    head = "".join(f"<th>{label} {key}</th>" for _, label in whos for key in keys)
    others = [w for w in whos if w[0] != "model"]
    head += "".join(f"<th>&Delta;PSNR-Y vs {label}</th>" for _, label in others)
    rows, bars = [], []
    for row in ev.get("per_image", []):
        cells = "".join(f"<td>{_fmt(float(row[who][key]))}</td>" for who, _ in whos for key in keys)
        cells += "".join(
            f"<td>{_delta('psnr_y', float(row['model']['psnr_y']), float(row[w]['psnr_y']))}</td>"
            for w, _ in others
        )
        name = Path(row["path"]).name
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
        gain = per_image_gain(row)
        bars.append((name, gain, gain))
    chart = _bar_chart(bars)
    return (
        f"<table><tr><th>image</th>{head}</tr>{''.join(rows)}</table>"
        f"<p>Challenger minus bicubic, PSNR-Y per image (dB; right = better):</p>{chart}"
    )


def _summary_table(evaluations: list[dict[str, Any]], whos: list[tuple[str, str]]) -> str:
    """One row per scale and metric: every model's value (winner in bold), the winner, the deltas."""
    others = [w for w in whos if w[0] != "model"]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in whos) + "<th>winner</th>"
    head += "".join(f"<th>challenger &Delta; vs {html.escape(label)}</th>" for _, label in others)
    rows = []
    for ev in sorted(evaluations, key=lambda e: e["scale"]):
        for key in METRIC_KEYS:
            values = {label: float(ev[who][key]) for who, label in whos if who in ev}
            best = winner(key, values)
            cells = "".join(
                f'<td class="best">{_fmt(v)}</td>' if label == best else f"<td>{_fmt(v)}</td>"
                for label, v in values.items()
            )
            deltas = "".join(
                f"<td>{_delta(key, float(ev['model'][key]), float(ev[who][key]))}</td>"
                for who, _ in others
                if who in ev
            )
            arrow = "&darr;" if key in LOWER_IS_BETTER else "&uarr;"
            rows.append(
                f'<tr data-scale="{float(ev["scale"]):g}" data-metric="{key}" '
                f'data-winner="{html.escape(best)}">'
                f"<td>x{float(ev['scale']):g}</td><td>{METRIC_LABELS[key]} {arrow}</td>{cells}"
                f"<td>{html.escape(best) or 'n/a'}</td>{deltas}</tr>"
            )
    return (
        f"<table><tr><th>scale</th><th>metric (&uarr;/&darr; = higher/lower is better)</th>{head}</tr>"
        f"{''.join(rows)}</table>"
    )


def verdict_line(evaluations: list[dict[str, Any]], verdict: Verdict, incumbent_label: str) -> str:
    """One sentence: the x4 Y-PSNR of challenger, incumbent and bicubic, the decision and why."""
    x4 = next((ev for ev in evaluations if float(ev["scale"]) == 4.0), None)
    if x4 is None:
        return "No x4 evaluation: the promotion gate cannot decide."
    model, bic = float(x4["model"]["psnr_y"]), float(x4["bicubic"]["psnr_y"])
    text = f"At x4 on {x4['n_images']} held-out images the challenger scores {model:.3f} dB Y-PSNR"
    if "incumbent" in x4:
        inc = float(x4["incumbent"]["psnr_y"])
        text += f" vs {incumbent_label} {inc:.3f} dB ({model - inc:+.3f} dB)"
    text += f" vs bicubic {bic:.3f} dB ({model - bic:+.3f} dB)."
    if verdict.decision:
        action = "promote it" if verdict.decision == "champion" else "keep the incumbent as champion"
        text += f" Decision: {verdict.decision.upper()} ({action}) — {verdict.reason}."
    return text


def render_report(
    upscaler: Upscaler,
    paths: list[Path],
    evaluations: list[dict[str, Any]],
    *,
    title: str,
    steps: int = 0,
    incumbent: Upscaler | None = None,
    incumbent_label: str = "incumbent",
    verdict: Verdict | None = None,
) -> str:
    """A self-contained HTML page (see the module docstring). ``paths``: the scored images (the
    examples are looked up among them by name)."""
    verdict = verdict or Verdict()
    whos = [("model", "challenger" if incumbent is not None else "model")]
    if incumbent is not None:
        whos.append(("incumbent", incumbent_label))
    whos.append(("bicubic", "bicubic"))
    by_name = {p.name: p for p in paths}
    charts = []
    for who, label in whos[1:]:
        chart = _delta_chart(evaluations, who)
        if chart:
            charts.append(f"<h2>Challenger minus {html.escape(label)} (bars right = better)</h2>{chart}")
    sections = []
    for ev in sorted(evaluations, key=lambda e: e["scale"]):
        scale = float(ev["scale"])
        rows = [r for r in ev.get("per_image", []) if Path(r["path"]).name in by_name]
        examples = []
        if rows:
            ranked = sorted(rows, key=per_image_gain)
            picks = [("best", ranked[-1])] + ([("worst", ranked[0])] if len(ranked) > 1 else [])
            for kind, row in picks:
                name = Path(row["path"]).name
                panels = _panels(upscaler, by_name[name], scale, steps, incumbent, incumbent_label)
                size = ZOOM_CROP * ZOOM
                cells = "".join(
                    f'<figure><img src="data:image/png;base64,{data}" width="{size}" height="{size}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                    for caption, data in panels
                )
                examples.append(
                    f'<h4 class="example" data-kind="{kind}">{kind} at x{scale:g}: {html.escape(name)} '
                    f"(challenger {per_image_gain(row):+.2f} dB over bicubic; central {ZOOM_CROP} px, "
                    f"{ZOOM}x zoom)</h4><div class='row'>{cells}</div>"
                )
        sections.append(
            f'<section data-scale="{scale:g}"><h2>x{scale:g}</h2>'
            f"<h3>Per image</h3>{_per_image(ev, whos)}"
            f"<h3>Best and worst image (by challenger gain over bicubic)</h3>{''.join(examples)}</section>"
        )
    versions = "".join(
        f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in verdict.versions.items()
    )
    gate = f"<p>Promotion gate: {html.escape(verdict.gate)}</p>" if verdict.gate else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em;max-width:1400px}}
table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} .row{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0}} img{{image-rendering:pixelated}}
figcaption{{font-size:12px;max-width:{ZOOM_CROP * ZOOM}px}}
.best{{font-weight:bold;background:#e7f5ea}} .win{{color:#2a7d3b}} .lose{{color:#c8402f}}
.verdict{{font-size:1.15em;padding:.5em;border-left:6px solid #444;background:#f4f4f4}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="verdict" id="verdict">{html.escape(verdict_line(evaluations, verdict, incumbent_label))}</p>
{gate}
<ul class="versions">{versions}</ul>
<p>Held-out images: HR &rarr; antialiased bicubic down by the scale &rarr; model &rarr; compared with HR
(PSNR/SSIM on Y with a ceil(scale) border, LPIPS AlexNet v0.1, ERGAS, SAM in degrees). Every model and
bicubic are scored on the same images. The best value of each metric is in bold.</p>
{_summary_table(evaluations, whos)}
{"".join(charts)}
{"".join(sections)}
</body></html>
"""
