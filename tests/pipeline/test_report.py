"""What a person opens after a run, parsed for its key content: the evaluation report (verdict,
versions, winner and delta per metric and scale, per-image charts, best/worst examples with zoomed
crops and difference maps at every scale), the model card (intended use, limitations, recipe, every
metric where the model loses) and the CLI's file:// links."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

from components.artifact_files import file_uri, named_file, named_uri
from components.evaluation_steps import evaluation_verdict
from components.registry_steps import training_recipe
from components.report import Verdict, render_report, winner
from hndsr.evaluation import evaluate_images
from hndsr.model_card import regressions, render_model_card
from hndsr.resample import resize
from pipelines.cli import format_summary

SCALES = (2.0, 4.0)


class Filtered:
    """A stand-in model: bicubic, then sharpened (amount > 0) or blurred (< 0), so that the
    challenger, the incumbent and bicubic differ and each wins somewhere."""

    def __init__(self, amount: float) -> None:
        self.amount = amount

    def upscale(self, lr: torch.Tensor, *, out_size: tuple[int, int], **_: object) -> torch.Tensor:
        up = resize(lr[None] if lr.dim() == 3 else lr, out_size).clamp(0, 1)
        blurred = torch.nn.functional.avg_pool2d(up, 3, stride=1, padding=1, count_include_pad=False)
        out = (up + self.amount * (up - blurred)).clamp(0, 1)
        return out[0] if lr.dim() == 3 else out


class _Rows(HTMLParser):
    """The summary table's rows (data-scale, data-metric, data-winner) and the example headings."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.examples: list[tuple[str, str]] = []
        self._section = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._section = a["data-scale"]
        if tag == "tr" and "data-metric" in a:
            self.rows.append(a)
        if tag == "h4" and a.get("class") == "example":
            self.examples.append((self._section, a["data-kind"]))


@pytest.fixture(scope="module")
def scored(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Filtered, Filtered, list[Path], list[dict[str, Any]]]:
    from PIL import Image
    from synthetic import synthetic_aerial

    root = tmp_path_factory.mktemp("hr")
    for i in range(4):
        Image.fromarray(synthetic_aerial((96, 96), seed=i)).save(root / f"img_{i}.png")
    paths = sorted(root.glob("*.png"))
    challenger, incumbent = Filtered(0.6), Filtered(-0.5)
    evaluations = []
    for s in SCALES:
        ev = evaluate_images(challenger, paths, scale=s, steps=0).as_dict()
        inc = evaluate_images(incumbent, paths, scale=s, steps=0).as_dict()
        ev["incumbent"] = inc["model"]
        for row, inc_row in zip(ev["per_image"], inc["per_image"], strict=True):
            row["incumbent"] = inc_row["model"]
        evaluations.append(ev)
    return challenger, incumbent, paths, evaluations


def test_report_leads_with_the_verdict_and_marks_every_winner(scored: Any) -> None:
    challenger, incumbent, paths, evaluations = scored
    figures = {
        f"{who}_{k}_x{ev['scale']:g}": float(ev[who][k])
        for ev in evaluations
        for who in ("model", "incumbent", "bicubic")
        for k in ev["model"]
    }
    verdict = evaluation_verdict(
        figures,
        {"version": "1"},
        min_gain_db=0.05,
        lpips_tolerance=0.01,
        versions={"challenger": "sha256 abc", "data": "d123", "code": "c456"},
    )
    page = render_report(
        challenger,  # type: ignore[arg-type]  # the report needs only upscale()
        paths,
        evaluations,
        title="t",
        incumbent=incumbent,  # type: ignore[arg-type]
        incumbent_label="incumbent v1",
        verdict=verdict,
    )
    line = re.search(r'<p class="verdict" id="verdict">(.*?)</p>', page, re.S)
    assert line is not None
    text = line.group(1)
    assert "challenger" in text and "incumbent v1" in text and "bicubic" in text
    assert f"Decision: {verdict.decision.upper()}" in text and verdict.decision in ("champion", "challenger")
    assert "0.05 dB" in page  # the gate's rule is stated
    for value in ("sha256 abc", "d123", "c456"):
        assert value in page
    parsed = _Rows()
    parsed.feed(page)
    assert len(parsed.rows) == len(SCALES) * 5
    x2 = next(ev for ev in evaluations if ev["scale"] == 2.0)
    for row in parsed.rows:
        ev = next(e for e in evaluations if f"{e['scale']:g}" == row["data-scale"])
        values = {
            "challenger": ev["model"][row["data-metric"]],
            "incumbent v1": ev["incumbent"][row["data-metric"]],
        }
        values["bicubic"] = ev["bicubic"][row["data-metric"]]
        assert row["data-winner"] == winner(row["data-metric"], values)
    # Lower is better for LPIPS-like metrics: SAM's winner is the smallest value.
    sam = {
        "challenger": x2["model"]["sam"],
        "incumbent v1": x2["incumbent"]["sam"],
        "bicubic": x2["bicubic"]["sam"],
    }
    assert winner("sam", sam) == min(sam, key=lambda k: sam[k])
    assert "&#9650;" in page or "&#9660;" in page  # delta arrows
    # best and worst at every scale, each with zoomed crops and difference maps
    assert sorted(parsed.examples) == sorted((f"{s:g}", k) for s in SCALES for k in ("best", "worst"))
    assert page.count("data:image/png;base64,") == len(SCALES) * 2 * 8  # LR, 3 SR, HR, 3 diffs
    assert page.count("|challenger - HR| x4") == len(SCALES) * 2
    # delta charts: per reference + per-image per scale
    assert page.count("<svg") == 2 + len(SCALES)


def test_model_card_says_use_limits_recipe_and_every_loss(scored: Any) -> None:
    _, _, _, scored_evaluations = scored
    # the blurring stand-in as the model: it loses to bicubic and to the sharpening one
    evaluations = [
        ev
        | {"model": ev["incumbent"], "incumbent": ev["model"]}
        | {"per_image": [r | {"model": r["incumbent"], "incumbent": r["model"]} for r in ev["per_image"]]}
        for ev in scored_evaluations
    ]
    config = {"package_version": "9.9", "sha256": "f" * 64, "stages": ["autoencoder"], "model_config": {}}
    losses = regressions(evaluations)
    card = render_model_card(
        config,
        evaluations,
        title="card",
        data="d",
        licence="l",
        reproduce="r",
        recipe=training_recipe(
            "quick", {"stage": "diffusion", "mode": "fine-tuned", "steps": 200, "init_from": "release"}
        ),
    )
    for heading in ("## Intended use", "## Limitations", "## Where it loses", "## Training recipe"):
        assert heading in card
    assert "profile **quick**" in card and "smoke-test budget" in card and "`release`" in card
    # every loss is listed, with how many images it loses on
    assert losses and all(f"- {line}" in card for line in losses)
    assert any("vs incumbent" in line and "worse on 4 of 4 images" in line for line in losses)
    for ev in evaluations:
        if ev["model"]["psnr_y"] < ev["bicubic"]["psnr_y"]:
            assert any(
                line.startswith(f"x{ev['scale']:g} ") and "PSNR-Y" in line and "bicubic" in line
                for line in losses
            )
    # narrow: no table row has more than 9 columns
    assert max(line.count("|") for line in card.splitlines() if line.startswith("|")) <= 10


def test_artifacts_have_real_names_and_the_cli_prints_links(tmp_path: Path) -> None:
    assert (
        named_file(tmp_path / "evaluate" / "report", "report.html") == tmp_path / "evaluate" / "report.html"
    )
    assert named_uri("minio://b/run/evaluate/report", "report.html") == "minio://b/run/evaluate/report.html"
    assert file_uri(tmp_path / "x.md") == f"file://{tmp_path}/x.md"
    x4 = {k: 1.0 for k in ("psnr_y", "ssim_y", "lpips")}
    summary = {
        "model": "hndsr", "version": "2", "alias": "challenger", "reason": "r", "champion_version": "1",
        "tracking_uri": "sqlite:///m.db", "report": "/a/report.html", "model_card": "/a/model_card.md",
        "evaluation": "/a/evaluation.json",
        "links": {"report": "file:///a/report.html", "evaluation": "file:///a/evaluation.json",
                  "model_card": "file:///a/model_card.md"},
        "x4": {"model": x4, "bicubic": x4, "incumbent": x4, "incumbent_version": "1", "n_images": 3},
    }  # fmt: skip
    text = format_summary(summary)
    for link in summary["links"].values():
        assert link in text


def test_verdict_without_incumbent_is_first_model(scored: Any) -> None:
    verdict = evaluation_verdict(
        {"model_psnr_y_x4": 30.0}, None, min_gain_db=0.05, lpips_tolerance=0.01, versions={}
    )
    assert isinstance(verdict, Verdict) and verdict.decision == "champion"
