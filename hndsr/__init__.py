"""HNDSR: Hybrid Neural-operator Diffusion Super-Resolution for satellite and aerial imagery."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hndsr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
