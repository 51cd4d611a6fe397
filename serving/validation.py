"""Client requests to the transformer: parsing and validation before any heavy work.

v1: ``{"instances": [{"image_b64": "...", "scale": 4, "steps": 0, "seed": 0, "output_format": "png"}]}``

v2: ``{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}],
"parameters": {"scale": 4, "steps": 0, "seed": 0, "output_format": "png"}}``

Order of the checks (cheapest first, nothing decoded before its size is known): body size (the
middleware, before reading), structure and types (400), value ranges (422), base64 (400), image
signature and header — format (422), dimensions and pixel count (413, decompression-bomb safe:
only the header is read), tile count against the synchronous limit (413, pointing to the async
path) — and only then the pixels are decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Any

from hndsr.errors import HNDSRError
from hndsr.inference import MIN_INPUT_SIDE
from hndsr.resample import MAX_SCALE, MIN_SCALE
from serving.batch_params import check_render_samples
from serving.errors import BadRequest, PayloadTooLarge, Unprocessable

OUTPUT_FORMATS = ("png", "geotiff")
_B64_RE = re.compile(rb"^[A-Za-z0-9+/\r\n]*={0,2}\s*$")
_KNOWN_KEYS = {"image_b64", "scale", "steps", "seed", "strength", "output_format", "samples", "cog"}
_V1_KEYS = {"instances"}
_V2_OUTPUTS = {"image", "uncertainty"}  # uncertainty: with samples >= 2 and PNG output
# An encoded image's own signature: binary BYTES elements (the v2 binary tensor extension, e.g.
# tritonclient's defaults) may carry the file itself instead of its base64 text (which never starts
# with these bytes: they are outside the base64 alphabet).
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20 * 1024 * 1024
    max_input_pixels: int = 2048 * 2048
    max_instances: int = 4
    max_steps: int = 50
    max_seed: int = 2**32 - 1


@dataclass(frozen=True)
class SRParams:
    scale: float
    steps: int | None
    seed: int
    strength: float | None
    output_format: str
    samples: int = 1  # K >= 2: K seeded draws; the mean is the image, their spread an uncertainty output
    cog: bool = True  # a GeoTIFF output is Cloud-Optimized (false: a plain GeoTIFF)


@dataclass
class SRInput:
    data: bytes  # the encoded image
    params: SRParams
    index: int
    where: str = ""  # how error messages name this image: instances[i] (v1) or inputs[0].data[0] (v2)


@dataclass(frozen=True)
class ImageHeader:
    kind: str  # png | jpeg | tiff
    width: int
    height: int
    bands: int


# ------------------------------------------------------------------------------------ parameters


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{where}: '{name}' must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise Unprocessable(f"{where}: '{name}' must be finite, got {value!r}")
    return float(value)


def _integer(value: Any, name: str, where: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{where}: '{name}' must be an integer, got {type(value).__name__} {value!r}")
    return value


def parse_params(raw: dict[str, Any], limits: Limits, where: str) -> SRParams:
    scale = _number(raw.get("scale", 4), "scale", where)
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise Unprocessable(
            f"{where}: scale {scale:g} is outside [{MIN_SCALE:g}, {MAX_SCALE:g}]: "
            "pass a scale between 2 and 4",
            kind="invalid_scale",
        )
    steps = raw.get("steps")
    if steps is not None:
        steps = _integer(steps, "steps", where)
        if not 0 <= steps <= limits.max_steps:
            raise Unprocessable(
                f"{where}: steps {steps} is outside [0, {limits.max_steps}] (0 = deterministic path; more "
                "steps belong to the asynchronous path)",
                kind="invalid_steps",
            )
    seed = _integer(raw.get("seed", 0), "seed", where)
    if not 0 <= seed <= limits.max_seed:
        raise Unprocessable(f"{where}: seed {seed} is outside [0, {limits.max_seed}]", kind="invalid_seed")
    strength = raw.get("strength")
    if strength is not None:
        strength = _number(strength, "strength", where)
        if not 0.0 < strength <= 1.0:
            raise Unprocessable(f"{where}: strength {strength:g} is outside (0, 1]", kind="invalid_strength")
    fmt = raw.get("output_format", "png")
    if not isinstance(fmt, str):
        raise BadRequest(f"{where}: 'output_format' must be a string: one of {', '.join(OUTPUT_FORMATS)}")
    fmt = fmt.lower()
    if fmt not in OUTPUT_FORMATS:
        raise Unprocessable(
            f"{where}: output_format {fmt!r} is not supported: use one of {', '.join(OUTPUT_FORMATS)}",
            kind="invalid_output_format",
        )
    samples = parse_samples(raw.get("samples", 1), steps, where)
    cog = raw.get("cog", True)
    if not isinstance(cog, bool):
        raise BadRequest(
            f"{where}: 'cog' must be true or false (a Cloud-Optimized or a plain GeoTIFF), got "
            f"{type(cog).__name__} {cog!r}"
        )
    return SRParams(
        scale=scale, steps=steps, seed=seed, strength=strength, output_format=fmt, samples=samples, cog=cog
    )


def parse_samples(value: Any, steps: int | None, where: str) -> int:
    """The uncertainty's sample count K: 1 (none), or [2, 16] draws on the diffusion path (steps > 0;
    steps left to the model's default are checked by the predictor, which knows that default)."""
    samples = _integer(value, "samples", where)
    check_render_samples(samples, steps, where)
    return samples


def decode_b64(value: Any, where: str, limits: Limits) -> bytes:
    if isinstance(value, bytes) and value.startswith(_IMAGE_SIGNATURES):
        return value  # the image file itself, from a binary BYTES tensor
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"{where}: the image must be base64 text") from exc
    if not isinstance(value, str):
        raise BadRequest(f"{where}: the image must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:") and "," in value[:100]:
        value = value.split(",", 1)[1]  # tolerate a data: URL prefix
    if not value:
        raise BadRequest(f"{where}: the image is empty; send the file's bytes base64-encoded")
    if len(value) * 3 // 4 > limits.max_body_bytes:
        raise PayloadTooLarge(f"{where}: the image is over {limits.max_body_bytes // (1024 * 1024)} MB")
    raw = value.encode("ascii", errors="replace")
    if not _B64_RE.match(raw):
        raise BadRequest(
            f"{where}: the image is not valid base64 (use the standard alphabet A-Z a-z 0-9 + /)",
            kind="invalid_base64",
        )
    try:
        return base64.b64decode(raw.replace(b"\n", b"").replace(b"\r", b"").strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(
            f"{where}: the image is not valid base64 ({exc}); check padding and alphabet",
            kind="invalid_base64",
        ) from exc


def parse_v1(payload: Any, limits: Limits) -> list[SRInput]:
    example = '{"instances": [{"image_b64": "<base64 PNG/JPEG/TIFF>", "scale": 4}]}'
    if not isinstance(payload, dict):
        raise BadRequest(f"the body must be a JSON object like {example}")
    unknown_top = set(payload) - _V1_KEYS
    if unknown_top:
        raise BadRequest(
            f"unknown top-level keys {sorted(unknown_top)}: a v1 request holds only 'instances' (options go "
            f"in each instance); send {example}"
        )
    instances = payload.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadRequest(f"'instances' must be a non-empty list: send {example}")
    if len(instances) > limits.max_instances:
        raise PayloadTooLarge(
            f"{len(instances)} instances in one request; at most {limits.max_instances}: split the request",
            kind="too_many_instances",
        )
    inputs = []
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        if not isinstance(inst, dict):
            raise BadRequest(f"{where} must be an object with 'image_b64' and options, e.g. {example}")
        unknown = set(inst) - _KNOWN_KEYS
        if unknown:
            raise BadRequest(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_KNOWN_KEYS)}")
        if "image_b64" not in inst:
            raise BadRequest(f"{where}: 'image_b64' is missing; send the image base64-encoded")
        params = parse_params(inst, limits, where)
        inputs.append(SRInput(decode_b64(inst["image_b64"], where, limits), params, i, where))
    return inputs


def parse_v2(request: Any, limits: Limits) -> list[SRInput]:
    """A KServe ``InferRequest`` (already shape/type checked by KServe's pydantic model)."""
    example = (
        '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}], '
        '"parameters": {"scale": 4}}'
    )
    inputs = list(request.inputs or [])
    if len(inputs) != 1 or inputs[0].name != "image":
        names = [i.name for i in inputs]
        raise BadRequest(f"expected exactly one input named 'image', got {names}: send {example}")
    inp = inputs[0]
    if inp.datatype != "BYTES":
        raise BadRequest(f"input 'image' must have datatype BYTES (base64 strings), got {inp.datatype}")
    data = inp.data
    if not isinstance(data, list):
        raise BadRequest("input 'image' needs 'data': a list with one base64 string")
    flat = [v for row in data for v in (row if isinstance(row, list) else [row])]
    if len(flat) != 1:
        raise BadRequest(
            f"input 'image' must hold exactly one image (got {len(flat)}); send one image per v2 request"
        )
    if list(inp.shape or []) not in ([1], [1, 1]):
        raise BadRequest(f"input 'image' must have shape [1], got {inp.shape}")
    for out in request.request_outputs or []:
        if out.name not in _V2_OUTPUTS:
            raise BadRequest(
                f"unknown output {out.name!r} requested: this model's outputs are 'image' and 'uncertainty'"
            )
    raw_params: dict[str, Any] = dict(request.parameters or {})
    raw_params.update(dict(inp.parameters or {}))
    for key in ("binary_data_size", "binary_data_output", "binary_data"):  # the binary tensor extension's
        raw_params.pop(key, None)
    unknown = set(raw_params) - (_KNOWN_KEYS - {"image_b64"})
    if unknown:
        raise BadRequest(
            f"unknown parameters {sorted(unknown)}; allowed: scale, steps, seed, strength, output_format, "
            "samples, cog"
        )
    params = parse_params(raw_params, limits, "parameters")
    where = "inputs[0].data[0]"
    return [SRInput(decode_b64(flat[0], where, limits), params, 0, where)]


# ------------------------------------------------------------------------------------ image header


def probe_image(data: bytes, where: str, limits: Limits) -> ImageHeader:
    """Format, size and bands from the header only; refuses unknown formats (422), images over the
    pixel limit (413) and images under the model's minimum side (422)."""
    head = data[:32]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        header = _probe_png(data, where)
    elif head.startswith(b"\xff\xd8\xff"):
        header = _probe_pillow(data, where, "jpeg")
    elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        header = _probe_tiff(data, where)
    else:
        raise Unprocessable(
            f"{where}: not a PNG, JPEG or TIFF image (unrecognised signature); "
            "send a PNG, JPEG, TIFF or GeoTIFF",
            kind="unsupported_format",
        )
    pixels = header.width * header.height
    if header.width < 1 or header.height < 1:
        raise Unprocessable(
            f"{where}: the image header says {header.width}x{header.height} px; the file is corrupt",
            kind="invalid_image",
        )
    if pixels > limits.max_input_pixels:
        raise PayloadTooLarge(
            f"{where}: the image is {header.width}x{header.height} = {pixels:,} px, "
            "over the synchronous limit of "
            f"{limits.max_input_pixels:,} px: split it into smaller images or use the asynchronous path",
            kind="image_too_large",
        )
    if min(header.width, header.height) < MIN_INPUT_SIDE:
        raise Unprocessable(
            f"{where}: the image is {header.width}x{header.height} px; "
            f"each side needs at least {MIN_INPUT_SIDE} px",
            kind="image_too_small",
        )
    return header


def _probe_png(data: bytes, where: str) -> ImageHeader:
    if len(data) < 26 or data[12:16] != b"IHDR":
        raise Unprocessable(
            f"{where}: truncated PNG (no IHDR header); re-export the image", kind="invalid_image"
        )
    width, height = struct.unpack(">II", data[16:24])
    bands = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(data[25], 0)
    return ImageHeader("png", int(width), int(height), bands)


def _probe_pillow(data: bytes, where: str, kind: str) -> ImageHeader:
    from PIL import JpegImagePlugin

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = JpegImagePlugin.JpegImageFile(io.BytesIO(data))  # parses the header only
        width, height = im.size
        bands = len(im.getbands())
        im.close()
    except Exception as exc:  # Pillow raises many types for corrupt headers
        raise Unprocessable(
            f"{where}: cannot read the JPEG header ({type(exc).__name__}: {exc}); re-export it",
            kind="invalid_image",
        ) from exc
    return ImageHeader(kind, int(width), int(height), bands)


def _probe_tiff(data: bytes, where: str) -> ImageHeader:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED="NO"):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(data) as mf, mf.open(driver="GTiff") as src:  # header only; no pixels read
                return ImageHeader("tiff", int(src.width), int(src.height), int(src.count))
    except HNDSRError:
        raise
    except Exception as exc:  # GDAL raises RasterioIOError and friends
        raise Unprocessable(
            f"{where}: cannot read the TIFF header ({type(exc).__name__}: {exc}); re-export it",
            kind="invalid_image",
        ) from exc
