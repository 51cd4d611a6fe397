"""Where the steps' artifacts get a copy under their real name, and links to them."""

from __future__ import annotations

from pathlib import Path

# The names the artifacts' copies carry (see named_file).
VALIDATION_FILE, EVALUATION_FILE, REPORT_FILE, MODEL_CARD_FILE = (
    "validation.json",
    "evaluation.json",
    "report.html",
    "model_card.md",
)


def named_file(artifact_path: str | Path, filename: str) -> Path:
    """Where an artifact's copy under its real name (``report.html``, ``model_card.md``...) goes: beside
    the artifact (KFP names the artifact's own file after the output, without an extension), so a
    browser, an editor and MLflow open it as what it is."""
    return Path(artifact_path).with_name(filename)


def named_uri(artifact_uri: str, filename: str) -> str:
    """:func:`named_file` for an artifact URI: a local path, or a remote URI whose scheme is kept."""
    if "://" in artifact_uri:  # Kubeflow on a cluster: minio://, s3://, gs://
        return artifact_uri.rsplit("/", 1)[0] + "/" + filename
    return str(named_file(artifact_uri, filename))


def write_named(artifact_path: str | Path, filename: str, text: str) -> Path:
    """Write ``text`` to the artifact's own file and to its named copy; returns the copy."""
    Path(artifact_path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact_path).write_text(text)
    named = named_file(artifact_path, filename)
    named.write_text(text)
    return named


def file_uri(path: str | Path) -> str:
    """``file:///abs/path`` for a local path; a remote URI (s3://, gs://, minio://) unchanged."""
    text = str(path)
    if "://" in text:
        return text
    return Path(text).resolve().as_uri()
