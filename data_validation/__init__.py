"""Great Expectations suites over the image catalog written by ``hndsr prepare``.

Kept out of the core package: ``hndsr`` never imports great_expectations. Nothing is imported here,
so that the ``hndsr`` entry point (``data_validation.cli``) stays light: import ``data_validation.runner``.
"""
