"""Drift monitoring: request-image features, the Evidently drift job, alert rules and dashboards."""
