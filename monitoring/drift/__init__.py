"""The drift job: request statistics of a window against the training reference, with Evidently."""
