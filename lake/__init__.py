"""The S3 data lake: settings, transfers (minio) and an embedded SeaweedFS server for local runs and tests."""
