"""Container image references, tied to the package version.

One place decides the image names: KFP components (``base_image``), Kubernetes manifests and the
Dockerfiles' build tags all derive from it, and a test checks that they agree.
"""

from __future__ import annotations

import os

from hndsr import __version__

#: Images this project builds (Dockerfiles under ``docker/``).
IMAGE_KINDS = ("train", "serve", "worker")

#: Registry/namespace prefix; override per environment with HNDSR_IMAGE_REGISTRY (no trailing slash).
DEFAULT_REGISTRY = "hndsr"


def image_ref(kind: str, *, version: str | None = None, registry: str | None = None) -> str:
    """``<registry>/hndsr-<kind>:<version>``, e.g. ``hndsr/hndsr-train:0.1.0``."""
    if kind not in IMAGE_KINDS:
        raise ValueError(f"unknown image kind {kind!r}: use one of {', '.join(IMAGE_KINDS)}")
    prefix = (registry or os.environ.get("HNDSR_IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    return f"{prefix}/hndsr-{kind}:{version or __version__}"
