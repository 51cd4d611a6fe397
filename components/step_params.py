"""params.yaml as every step receives it: text, parsed with its profile."""

from __future__ import annotations

from typing import Any

import yaml

from hndsr.config import Params, parse_params


def load(params: str, profile: str = "", overrides: dict[str, Any] | None = None) -> Params:
    """``params``: params.yaml as YAML or JSON text. Text, not a dict: KFP would turn its ints into floats."""
    return parse_params(yaml.safe_load(params) or {}, profile=profile or None, overrides=overrides)
