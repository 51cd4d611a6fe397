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


def _panels(upscaler: Upscaler, path: Path, scale: float, steps: int) -> tuple[list[tuple[str, str]], str]:
    hr = _center_crop(load_rgb(path), CROP)
    size = (int(hr.shape[-2]), int(hr.shape[-1]))
    lr = degrade(hr, scale)
    bicubic = resize(lr, size).clamp(0, 1)
    sr = upscaler.upscale(lr, scale=scale, out_size=size, steps=steps).cpu()
    border = int(np.ceil(scale))
    nearest = torch.nn.functional.interpolate(lr[None], size=size, mode="nearest")[0]  # LR at HR size
    panels = [
        (f"LR ({lr.shape[-1]}x{lr.shape[-2]}, nearest)", _png_b64(nearest)),
        (f"bicubic, {psnr_y(bicubic[None], hr[None], border=border):.2f} dB", _png_b64(bicubic)),
        (f"model, {psnr_y(sr[None], hr[None], border=border):.2f} dB", _png_b64(sr)),
        ("HR", _png_b64(hr)),
    ]
    return panels, path.name


def render_report(
    upscaler: Upscaler,
    paths: list[Path],
    evaluations: list[dict[str, Any]],
    *,
    title: str,
    scale: float = 4.0,
    steps: int = 0,
    max_images: int = 3,
) -> str:
    """A self-contained HTML page: the figures per scale, then ``max_images`` crops at ``scale``."""
    head = "".join(f"<th>{k} model</th><th>{k} bicubic</th>" for k in METRIC_KEYS)
    rows = []
    for ev in sorted(evaluations, key=lambda e: e["scale"]):
        cells = "".join(
            f"<td><b>{ev['model'][k]:.4g}</b></td><td>{ev['bicubic'][k]:.4g}</td>" for k in METRIC_KEYS
        )
        rows.append(f"<tr><td>x{ev['scale']:g}</td><td>{ev['n_images']}</td>{cells}</tr>")
    figures = []
    for path in paths[:max_images]:
        panels, name = _panels(upscaler, path, scale, steps)
        cells = "".join(
            f'<figure><img src="data:image/png;base64,{data}" width="{CROP}" height="{CROP}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, data in panels
        )
        figures.append(f"<h3>{html.escape(name)} (x{scale:g})</h3><div class='row'>{cells}</div>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} .row{{display:flex;gap:8px}}
figure{{margin:0}} img{{image-rendering:pixelated}} figcaption{{font-size:12px}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Held-out images: HR &rarr; antialiased bicubic down by the scale &rarr; model &rarr; compared with HR
(PSNR/SSIM on Y with a ceil(scale) border, LPIPS AlexNet v0.1, ERGAS, SAM in degrees). Bicubic is scored
on the same images.</p>
<table><tr><th>scale</th><th>images</th>{head}</tr>{"".join(rows)}</table>
{"".join(figures)}
</body></html>
"""
