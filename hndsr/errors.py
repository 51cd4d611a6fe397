"""Typed errors of the core. Adapters (CLI, servers) map them to exit codes and HTTP statuses in one place.

Every message says what went wrong and what to do about it.
"""

from __future__ import annotations


class HNDSRError(Exception):
    """Base class of every error the core raises on purpose."""


class InputError(HNDSRError):
    """The caller's input is wrong (unreadable file, unsupported format, bad scale, too small ...)."""


class UnsupportedFormatError(InputError):
    """The file is not an image format HNDSR reads (PNG, JPEG, TIFF, GeoTIFF)."""


class ImageTooSmallError(InputError):
    """The image is smaller than the model can work on."""


class ScaleError(InputError):
    """The requested scale is outside the supported range."""


class ValueRangeError(InputError):
    """Pixel values outside the range the model reads ([0, 1] as float), or not finite."""


class CheckpointError(HNDSRError):
    """A checkpoint is missing, incomplete, tampered with or incompatible."""


class OutputValidationError(HNDSRError):
    """The model produced an output that must not be written (non-finite, out of range, degenerate)."""


class ConfigError(HNDSRError):
    """params.yaml (or an override) is invalid."""
