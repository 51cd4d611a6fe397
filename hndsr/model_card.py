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


LOWER_IS_BETTER = {"lpips", "ergas", "sam"}

INTENDED_USE = (
    "Super-resolution (x2 to x4, any real factor in between) of RGB satellite and aerial imagery, "
    "8- or 16-bit, for viewing, mapping and visual interpretation. The deterministic path (default) "
    "is reproducible; the diffusion path adds texture, seeded."
)
LIMITATIONS = (
    "- Trained and scored on imagery degraded by antialiased bicubic downsampling: real sensor blur, "
    "noise, compression or haze outside that are not modelled, and gains over bicubic shrink there.\n"
    "- Added detail is a prediction, not a measurement: do not count, measure or detect objects "
    "smaller than the input's ground sample distance from the output.\n"
    "- Only the first three bands (R, G, B) are super-resolved; other bands are upsampled bicubically.\n"
    "- The figures below hold for the held-out images named under Data; other sites, seasons and "
    "sensors are not measured here."
)


def _beats(key: str, a: float, b: float) -> bool:
    return a < b if key in LOWER_IS_BETTER else a > b


def _path(ev: dict[str, Any]) -> str:
    path = "deterministic" if ev["steps"] == 0 else f"diffusion, {ev['steps']} steps"
    if ev["steps"] and ev.get("strength") is not None:
        path += f", strength {ev['strength']:g}"
    return path


def evaluation_table(evaluations: list[dict[str, Any]]) -> str:
    """One row per scale, path and metric (narrow enough not to scroll): the model, the incumbent
    when scored, bicubic, the model's delta over bicubic and the winner."""
    incumbent = any("incumbent" in ev for ev in evaluations)
    head = "| scale | path | images | metric | model |" + (" incumbent |" if incumbent else "")
    head += " bicubic | model - bicubic | best |"
    rule = "|" + " --- |" * (head.count("|") - 1)
    rows = [head, rule]
    for ev in sorted(evaluations, key=lambda e: (e["scale"], e["steps"])):
        for key, label, d in METRICS:
            values = {"model": ev["model"][key]}
            if "incumbent" in ev:
                values["incumbent"] = ev["incumbent"][key]
            values["bicubic"] = ev["bicubic"][key]
            finite = {k: v for k, v in values.items() if v == v}
            pick = min if key in LOWER_IS_BETTER else max
            best = pick(finite, key=lambda k: finite[k]) if finite else "n/a"
            delta = ev["model"][key] - ev["bicubic"][key]
            cells = [_fmt(ev["model"][key], d)]
            if incumbent:
                cells.append(_fmt(ev["incumbent"][key], d) if "incumbent" in ev else "n/a")
            cells.append(_fmt(ev["bicubic"][key], d))
            rows.append(
                f"| x{ev['scale']:g} | {_path(ev)} | {ev['n_images']} | {label} | "
                + " | ".join(cells)
                + f" | {'n/a' if delta != delta else f'{delta:+.{d}f}'} | {best} |"
            )
    speed = ", ".join(
        f"x{ev['scale']:g} {ev['seconds_per_megapixel']:.2f}"
        for ev in sorted(evaluations, key=lambda e: e["scale"])
    )
    return "\n".join(rows) + f"\n\nSeconds per output megapixel: {speed}."


def regressions(evaluations: list[dict[str, Any]]) -> list[str]:
    """Every metric and scale where the model loses to bicubic or to the incumbent, as sentences."""
    out = []
    for ev in sorted(evaluations, key=lambda e: (e["scale"], e["steps"])):
        for key, label, d in METRICS:
            model = ev["model"][key]
            for other in ("bicubic", "incumbent"):
                if other not in ev or model != model or ev[other][key] != ev[other][key]:
                    continue
                if _beats(key, ev[other][key], model):
                    per_image = ev.get("per_image", [])
                    worse = sum(
                        1
                        for row in per_image
                        if other in row and _beats(key, row[other][key], row["model"][key])
                    )
                    share = f", worse on {worse} of {len(per_image)} images" if per_image else ""
                    out.append(
                        f"x{ev['scale']:g} ({_path(ev)}) {label}: {_fmt(model, d)} vs {other} "
                        f"{_fmt(ev[other][key], d)}{share}"
                    )
    return out


def render_model_card(
    checkpoint_config: dict[str, Any],
    evaluations: list[dict[str, Any]],
    *,
    title: str,
    data: str,
    licence: str,
    reproduce: str,
    notes: str = "",
    recipe: str = "",
    intended_use: str = INTENDED_USE,
    limitations: str = LIMITATIONS,
) -> str:
    """``recipe``: how it was trained (profile, fine-tuned from what), one paragraph."""
    meta = checkpoint_config.get("metadata", {})
    stage_params = {s: meta.get(s, {}).get("params") for s in checkpoint_config.get("stages", [])}
    losses = regressions(evaluations)
    where_it_loses = (
        "\n".join(f"- {line}" for line in losses)
        if losses
        else "None: the model is at least as good as every reference on every metric and scale."
    )
    return f"""# {title}

- hndsr version: {checkpoint_config.get("package_version")}
- weights sha256: `{checkpoint_config.get("sha256")}`
- stages trained: {", ".join(checkpoint_config.get("stages", []))}
- default inference: {json.dumps(checkpoint_config["model_config"].get("sampling", {}))}

## Intended use

{intended_use}

## Limitations

{limitations}

## Where it loses

Every metric and scale where the model scores worse than bicubic or the incumbent (same images):

{where_it_loses}
{f"{chr(10)}## Training recipe{chr(10)}{chr(10)}{recipe}{chr(10)}" if recipe else ""}
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
