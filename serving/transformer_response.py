"""The transformer's v2 (Open Inference Protocol) answer: the image as a BYTES output (base64 text, in
JSON or as a binary element), the uncertainty PNG as a second output, the rest as parameters."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from kserve import InferOutput, InferRequest, InferResponse


def wants_binary_output(request: InferRequest) -> bool:
    """The binary tensor extension for the answer: asked per output (``binary_data``) or for all
    (``binary_data_output``, what tritonclient sends when no outputs are named)."""
    binary = bool((request.parameters or {}).get("binary_data_output", False))
    for out in request.request_outputs or []:
        params = out.parameters or {}
        if "binary_data" in params:
            binary = bool(params["binary_data"])
    return binary


def v2_response(out: dict[str, Any], request_id: str, model_name: str, binary: bool) -> InferResponse:
    """One image's answer (:func:`serving.image_work.image_result`) as a v2 response."""
    image = out.pop("image_b64")
    spread_png = out.pop("uncertainty_png_b64", None)
    timings = out.pop("timings_ms")
    if "stac_item" in out:  # parameters hold scalars: the Item travels as JSON text
        out["stac_item"] = orjson.dumps(out["stac_item"]).decode()
    params: dict[str, Any] = {k: v for k, v in out.items() if v is not None}
    params.update({f"timing_{k}_ms": v for k, v in timings.items()})
    outputs_v2 = [_base64_output("image", image, binary)]
    if spread_png is not None:  # samples >= 2 with PNG: the std as a second image (serving.image_work)
        outputs_v2.append(_base64_output("uncertainty", spread_png, binary))
    return InferResponse(
        response_id=request_id,
        model_name=model_name,
        infer_outputs=outputs_v2,
        model_version=out.get("model_version") or None,
        parameters=params,
        use_binary_outputs=binary,
    )


def _base64_output(name: str, text: str, binary: bool) -> InferOutput:
    """A BYTES output of one element: the base64 text either way, in JSON or as a binary element
    (tritonclient's default)."""
    output = InferOutput(name=name, shape=[1], datatype="BYTES")
    output.set_data_from_numpy(np.array([text.encode("ascii")], dtype=np.object_), binary_data=binary)
    return output
