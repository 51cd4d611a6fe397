"""Model cards rendered from measured figures (a checkpoint's config and evaluation JSONs),
never typed by hand."""

from __future__ import annotations

import json
from typing import Any

METRICS = (
    ("psnr_y", "PSNR-Y (dB)", 2),
    ("ssim_y", "SSIM-Y", 4),
    ("lpips", "LPIPS", 4),
    ("ergas", "ERGAS", 3),
    ("sam", "SAM (deg)", 3),
)


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN check without math import


def evaluation_table(evaluations: list[dict[str, Any]]) -> str:
    head = "| scale | path | images | " + " | ".join(f"{label} model / bicubic" for _, label, _ in METRICS)
    head += " | ΔPSNR-Y | s / output MP |"
    rule = "|" + " --- |" * (len(METRICS) + 5)
    rows = [head, rule]
    for ev in sorted(evaluations, key=lambda e: (e["scale"], e["steps"])):
        path = "deterministic" if ev["steps"] == 0 else f"diffusion, {ev['steps']} steps"
        if ev["steps"] and ev.get("strength") is not None:
            path += f", strength {ev['strength']:g}"
        cells = [f"{_fmt(ev['model'][key], d)} / {_fmt(ev['bicubic'][key], d)}" for key, _, d in METRICS]
        delta = ev["model"]["psnr_y"] - ev["bicubic"]["psnr_y"]
        rows.append(
            f"| x{ev['scale']:g} | {path} | {ev['n_images']} | "
            + " | ".join(cells)
            + f" | {delta:+.2f} | {ev['seconds_per_megapixel']:.2f} |"
        )
    return "\n".join(rows)


def render_model_card(
    checkpoint_config: dict[str, Any],
    evaluations: list[dict[str, Any]],
    *,
    title: str,
    data: str,
    licence: str,
    reproduce: str,
    notes: str = "",
) -> str:
    meta = checkpoint_config.get("metadata", {})
    stage_params = {s: meta.get(s, {}).get("params") for s in checkpoint_config.get("stages", [])}
    return f"""# {title}

- hndsr version: {checkpoint_config.get("package_version")}
- weights sha256: `{checkpoint_config.get("sha256")}`
- stages trained: {", ".join(checkpoint_config.get("stages", []))}
- default inference: {json.dumps(checkpoint_config["model_config"].get("sampling", {}))}

## Data and licences

{data}

{licence}

## Measured quality (held-out images, same weights for every scale)

Protocol: HR -> antialiased bicubic down by the scale -> model -> compare with HR; PSNR/SSIM on Y
(BT.601) with a ceil(scale) border cropped; LPIPS AlexNet v0.1; ERGAS; SAM in degrees. Bicubic is
scored on the same images.

{evaluation_table(evaluations)}

{notes}

## Reproduce

```bash
{reproduce}
```

## Model configuration

```json
{json.dumps(checkpoint_config["model_config"], indent=2)}
```

## Training parameters per stage

```json
{json.dumps(stage_params, indent=2)}
```
"""
