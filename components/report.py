"""The evaluation's HTML report: LR / bicubic / model / HR side by side with the figures beside bicubic.

Images are embedded as base64 PNGs, so the single file renders in the Kubeflow UI (and offline).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hndsr.data import load_rgb
from hndsr.evaluation import METRIC_KEYS
from hndsr.inference import Upscaler
from hndsr.metrics import psnr_y
from hndsr.resample import degrade, resize

CROP = 192  # output px per panel: enough to see texture, small enough for an embedded page


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


def _panels(
    upscaler: Upscaler,
    path: Path,
    scale: float,
    steps: int,
    incumbent: Upscaler | None = None,
    incumbent_label: str = "incumbent",
) -> tuple[list[tuple[str, str]], str]:
    hr = _center_crop(load_rgb(path), CROP)
    size = (int(hr.shape[-2]), int(hr.shape[-1]))
    lr = degrade(hr, scale)
    bicubic = resize(lr, size).clamp(0, 1)
    border = int(np.ceil(scale))

    def db(image: torch.Tensor) -> str:
        return f"{psnr_y(image[None], hr[None], border=border):.2f} dB"

    nearest = torch.nn.functional.interpolate(lr[None], size=size, mode="nearest")[0]  # LR at HR size
    panels = [
        (f"LR ({lr.shape[-1]}x{lr.shape[-2]}, nearest)", _png_b64(nearest)),
        (f"bicubic, {db(bicubic)}", _png_b64(bicubic)),
    ]
    if incumbent is not None:
        old = incumbent.upscale(lr, scale=scale, out_size=size, steps=steps).cpu()
        panels.append((f"{incumbent_label}, {db(old)}", _png_b64(old)))
    sr = upscaler.upscale(lr, scale=scale, out_size=size, steps=steps).cpu()
    panels += [
        (f"{'challenger' if incumbent is not None else 'model'}, {db(sr)}", _png_b64(sr)),
        ("HR", _png_b64(hr)),
    ]
    return panels, path.name


# Metrics where lower is better: their deltas are drawn with the sign flipped, so a bar to the
# right is always an improvement.
LOWER_IS_BETTER = {"lpips", "ergas", "sam"}


def _delta_chart(evaluations: list[dict[str, Any]], versus: str) -> str:
    """An inline SVG bar chart: the challenger's improvement over ``versus`` per metric and scale,
    each metric scaled to its own largest bar (the numbers are printed beside the bars)."""
    rows = []
    for key in METRIC_KEYS:
        for ev in sorted(evaluations, key=lambda e: e["scale"]):
            if versus not in ev:
                continue
            delta = float(ev["model"][key]) - float(ev[versus][key])
            better = -delta if key in LOWER_IS_BETTER else delta
            if np.isfinite(better):
                rows.append((key, float(ev["scale"]), delta, better))
    if not rows:
        return ""
    row_h, label_w, half = 18, 120, 160
    spans = {k: max(abs(b) for kk, _, _, b in rows if kk == k) or 1.0 for k in {r[0] for r in rows}}
    parts = []
    for i, (key, scale, delta, better) in enumerate(rows):
        y = i * row_h
        width = half * abs(better) / spans[key]
        x = label_w + half if better >= 0 else label_w + half - width
        colour = "#2a9d4b" if better >= 0 else "#c8402f"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{html.escape(key)} x{scale:g}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{width:.1f}" height="{row_h - 6}" fill="{colour}"/>'
            f'<text x="{label_w + 2 * half + 6}" y="{y + 13}">{delta:+.4g}</text>'
        )
    height = len(rows) * row_h
    axis = f'<line x1="{label_w + half}" y1="0" x2="{label_w + half}" y2="{height}" stroke="#333"/>'
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + 2 * half + 80}" height="{height}" '
        f'font-size="12" font-family="sans-serif">{"".join(parts)}{axis}</svg>'
    )


def _per_image_table(ev: dict[str, Any], whos: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{label} {key}</th>" for _, label in whos for key in ("psnr_y", "ssim_y", "lpips"))
    rows = []
    for row in ev.get("per_image", []):
        cells = "".join(
            f"<td>{float(row[who][key]):.4g}</td>" for who, _ in whos for key in ("psnr_y", "ssim_y", "lpips")
        )
        rows.append(f"<tr><td>{html.escape(Path(row['path']).name)}</td>{cells}</tr>")
    return f"<table><tr><th>image</th>{head}</tr>{''.join(rows)}</table>"


def render_report(
    upscaler: Upscaler,
    paths: list[Path],
    evaluations: list[dict[str, Any]],
    *,
    title: str,
    scale: float = 4.0,
    steps: int = 0,
    max_images: int = 3,
    incumbent: Upscaler | None = None,
    incumbent_label: str = "incumbent",
) -> str:
    """A self-contained HTML page: the figures per scale (challenger, incumbent when given, bicubic),
    a chart of the challenger's deltas, per-image scores and crops of ``max_images`` images at ``scale``."""
    whos = [("model", "challenger" if incumbent is not None else "model")]
    if incumbent is not None:
        whos.append(("incumbent", incumbent_label))
    whos.append(("bicubic", "bicubic"))
    head = "".join(f"<th>{k} {label}</th>" for k in METRIC_KEYS for _, label in whos)
    rows = []
    for ev in sorted(evaluations, key=lambda e: e["scale"]):
        cells = "".join(
            f"<td>{float(ev[who][k]):.4g}</td>" for k in METRIC_KEYS for who, _ in whos if who in ev
        )
        rows.append(f"<tr><td>x{ev['scale']:g}</td><td>{ev['n_images']}</td>{cells}</tr>")
    charts = []
    for who, label in whos[1:]:
        chart = _delta_chart(evaluations, who)
        if chart:
            charts.append(f"<h2>Challenger minus {html.escape(label)} (bars right = better)</h2>{chart}")
    at_scale = next((ev for ev in evaluations if float(ev["scale"]) == scale), None)
    per_image = (
        f"<h2>Per image at x{scale:g}</h2>{_per_image_table(at_scale, [w for w in whos if w[0] in at_scale])}"
        if at_scale is not None
        else ""
    )
    figures = []
    for path in paths[:max_images]:
        panels, name = _panels(upscaler, path, scale, steps, incumbent, incumbent_label)
        cells = "".join(
            f'<figure><img src="data:image/png;base64,{data}" width="{CROP}" height="{CROP}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, data in panels
        )
        figures.append(f"<h3>{html.escape(name)} (x{scale:g})</h3><div class='row'>{cells}</div>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} .row{{display:flex;gap:8px}}
figure{{margin:0}} img{{image-rendering:pixelated}} figcaption{{font-size:12px}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Held-out images: HR &rarr; antialiased bicubic down by the scale &rarr; model &rarr; compared with HR
(PSNR/SSIM on Y with a ceil(scale) border, LPIPS AlexNet v0.1, ERGAS, SAM in degrees). Every model and
bicubic are scored on the same images.</p>
<table><tr><th>scale</th><th>images</th>{head}</tr>{"".join(rows)}</table>
{"".join(charts)}
{per_image}
{"".join(figures)}
</body></html>
"""
