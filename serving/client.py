"""A small Python client of the HNDSR inference service (the transformer's endpoint).

>>> client = SRClient("http://127.0.0.1:8080")                      # doctest: +SKIP
>>> result = client.upscale_file("scene.tif", "scene_x4.tif", scale=4)  # doctest: +SKIP
>>> result.meta["timings_ms"]                                        # doctest: +SKIP

429 and 503 answers are retried after their ``Retry-After`` (``retries`` times); any other error is a
:class:`ServiceError` carrying the server's status and message.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from hndsr.errors import HNDSRError

_FORMAT_BY_SUFFIX = {".png": "png", ".tif": "geotiff", ".tiff": "geotiff"}


class ServiceError(HNDSRError):
    def __init__(self, status: int, message: str, kind: str = "") -> None:
        super().__init__(f"the service answered {status}{f' ({kind})' if kind else ''}: {message}")
        self.status = status
        self.kind = kind
        self.server_message = message


@dataclass
class SRResult:
    image: bytes
    meta: dict[str, Any]
    uncertainty: bytes | None = None  # samples >= 2 with PNG output: the 16-bit std image
    item_path: Path | None = None  # where upscale_file wrote a GeoTIFF's STAC Item


class SRClient:
    def __init__(
        self,
        url: str,
        *,
        model: str = "hndsr",
        protocol: str = "v1",
        api_key: str | None = None,
        timeout_s: float = 600.0,
        retries: int = 3,
    ) -> None:
        if protocol not in ("v1", "v2"):
            raise ValueError(f"protocol must be v1 or v2, got {protocol!r}")
        self.url = url.rstrip("/")
        self.model = model
        self.protocol = protocol
        self.retries = retries
        headers = {"x-api-key": api_key} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upscale_bytes(
        self,
        data: bytes,
        *,
        scale: float = 4.0,
        steps: int | None = None,
        seed: int = 0,
        strength: float | None = None,
        output_format: str = "png",
        samples: int = 1,
        cog: bool = True,
    ) -> SRResult:
        params: dict[str, Any] = {"scale": scale, "seed": seed, "output_format": output_format}
        if steps is not None:
            params["steps"] = steps
        if strength is not None:
            params["strength"] = strength
        if samples != 1:
            params["samples"] = samples
        if not cog:
            params["cog"] = False
        image_b64 = base64.b64encode(data).decode("ascii")
        if self.protocol == "v1":
            url = f"{self.url}/v1/models/{self.model}:predict"
            body: dict[str, Any] = {"instances": [{"image_b64": image_b64, **params}]}
        else:
            url = f"{self.url}/v2/models/{self.model}/infer"
            body = {
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image_b64]}],
                "parameters": params,
            }
        doc = self._post(url, orjson.dumps(body))
        if self.protocol == "v1":
            pred = dict(doc["predictions"][0])
            image = base64.b64decode(pred.pop("image_b64"))
            spread = pred.pop("uncertainty_png_b64", None)
            return SRResult(image=image, meta=pred, uncertainty=base64.b64decode(spread) if spread else None)
        outputs = {out["name"]: out for out in doc["outputs"]}
        meta = dict(doc.get("parameters") or {})
        timings = {
            k[len("timing_") : -len("_ms")]: meta.pop(k) for k in list(meta) if k.startswith("timing_")
        }
        meta["timings_ms"] = timings
        spread_out = outputs.get("uncertainty")
        return SRResult(
            image=base64.b64decode(outputs["image"]["data"][0]),
            meta=meta,
            uncertainty=base64.b64decode(spread_out["data"][0]) if spread_out else None,
        )

    def upscale_file(self, input: str | Path, output: str | Path, **options: Any) -> SRResult:
        output = Path(output)
        fmt = _FORMAT_BY_SUFFIX.get(output.suffix.lower())
        if fmt is None:
            raise HNDSRError(f"output {output} must end in .png, .tif or .tiff")
        try:
            data = Path(input).read_bytes()
        except OSError as exc:
            raise HNDSRError(f"cannot read {input}: {exc}") from exc
        result = self.upscale_bytes(data, output_format=fmt, **options)
        files = [(output, result.image)]
        if result.uncertainty is not None:  # beside the image, as `hndsr sr` writes it
            from hndsr.uncertainty_output import uncertainty_path

            files.append((uncertainty_path(output), result.uncertainty))
        item = result.meta.pop("stac_item", None)
        if item is not None:  # a GeoTIFF's STAC Item, its data asset pointed at the saved file
            from hndsr.stac_items import DATA_ASSET, item_path

            doc = orjson.loads(item) if isinstance(item, str) else dict(item)
            doc["id"] = output.stem
            doc["assets"][DATA_ASSET]["href"] = output.name
            result.item_path = item_path(output)
            files.append((result.item_path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"))
        for path, content in files:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(content)
            tmp.replace(path)
        return result

    def health(self) -> dict[str, Any]:
        r = self._http.get(f"{self.url}/health")
        doc: dict[str, Any] = r.json()
        return doc

    def _post(self, url: str, body: bytes) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                r = self._http.post(url, content=body, headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:
                raise ServiceError(
                    0, f"cannot reach {url} ({type(exc).__name__}: {exc}); is the service up?"
                ) from exc
            if r.status_code == 200:
                doc: dict[str, Any] = orjson.loads(r.content)
                return doc
            if r.status_code in (429, 503) and attempt < self.retries:
                attempt += 1
                time.sleep(min(30.0, float(r.headers.get("retry-after", "1") or 1)))
                continue
            try:
                err = orjson.loads(r.content)
                message, kind = str(err.get("error", r.text)), str(err.get("kind", ""))
            except (orjson.JSONDecodeError, AttributeError):
                message, kind = r.text[:500], ""
            raise ServiceError(r.status_code, message, kind)
