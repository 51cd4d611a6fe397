"""The promotion gate: the figures it compares and its rule, champion or challenger."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Figures:
    """The gate's figures: held-out Y-PSNR (dB) and LPIPS at x4 (NaN = not measured)."""

    psnr_y: float
    lpips: float


@dataclass(frozen=True)
class PromotionDecision:
    alias: str  # CHAMPION or CHALLENGER
    reason: str
    candidate: Figures
    champion: Figures | None
    champion_version: str | None
    lpips_tolerance: float
    min_gain_db: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_promotion(
    candidate: Figures,
    champion: Figures | None,
    *,
    lpips_tolerance: float,
    champion_version: str | None = None,
    min_gain_db: float = 0.0,
) -> PromotionDecision:
    """Champion only if the candidate beats the champion's Y-PSNR by at least ``min_gain_db`` (and by
    something when that is 0) and its LPIPS is not worse by more than ``lpips_tolerance``; the first
    model with a finite Y-PSNR becomes champion."""

    def decision(alias: str, reason: str) -> PromotionDecision:
        return PromotionDecision(
            alias, reason, candidate, champion, champion_version, lpips_tolerance, min_gain_db
        )

    if not math.isfinite(candidate.psnr_y):
        return decision(CHALLENGER, "the candidate has no held-out Y-PSNR at x4")
    if champion is None:
        return decision(CHAMPION, "first model in the registry")
    gain = candidate.psnr_y - champion.psnr_y
    if not (gain > 0 and gain >= min_gain_db):
        return decision(
            CHALLENGER,
            f"Y-PSNR x4 {candidate.psnr_y:.4f} dB does not beat the champion's {champion.psnr_y:.4f} dB "
            f"by the gate's margin of {min_gain_db:g} dB ({gain:+.4f} dB)",
        )
    if math.isfinite(champion.lpips):
        if not math.isfinite(candidate.lpips):
            return decision(CHALLENGER, "the candidate has no LPIPS to compare with the champion's")
        if candidate.lpips > champion.lpips + lpips_tolerance:
            return decision(
                CHALLENGER,
                f"LPIPS x4 {candidate.lpips:.4f} is worse than the champion's {champion.lpips:.4f} by more "
                f"than {lpips_tolerance:g}",
            )
    return decision(
        CHAMPION,
        f"Y-PSNR x4 {candidate.psnr_y:.4f} dB beats the champion's {champion.psnr_y:.4f} dB by "
        f"{gain:+.4f} dB (margin {min_gain_db:g}) and LPIPS {candidate.lpips:.4f} is within "
        f"{lpips_tolerance:g} of {champion.lpips:.4f}",
    )
