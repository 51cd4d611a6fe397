"""Great Expectations suites over the image catalog written by ``hndsr prepare``.

Kept out of the core package: ``hndsr`` never imports great_expectations; ``hndsr validate-data``
imports this package lazily.
"""

from data_validation.runner import Failure, ValidationReport, validate_catalog

__all__ = ["Failure", "ValidationReport", "validate_catalog"]
