"""The pipeline's validate step builds Great Expectations data docs that a person can open offline
(issue 19): the index lists every suite's validation result with a link to its page, and no page
loads anything from the network (GX's own load Bootstrap, jQuery and bootstrap-table from CDNs and
fill the index in the browser: offline it was empty and unstyled)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from imagesets import TILE, write_clean_set
from mlflow.tracking import MlflowClient

from components import data_steps
from data_validation.docs import OFFLINE_MARK, offline_page, remote_references
from data_validation.suites import SUITES
from hndsr.config import Params, parse_params
from hndsr.prepare import PrepareConfig, prepare

# imagesets.data_params, as the params.yaml text a pipeline step receives.
PARAMS = {
    "prepare": {"tile_size": TILE, "scales": [2, 3, 4]},
    "data": {"val_fraction": 0.2, "test_fraction": 0.2, "patch_size": TILE},
}


class _Page(HTMLParser):
    """Tables (rows of cell texts and the row's link) and every src/href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[list[str], str | None]] = []
        self.refs: list[str] = []
        self._cells: list[str] | None = None
        self._link: str | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "tr":
            self._cells, self._link = [], None
        elif tag == "td" and self._cells is not None:
            self._text = []
        elif tag == "a" and self._cells is not None and self._link is None:
            self._link = a.get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cells is not None and self._text is not None:
            self._cells.append(" ".join("".join(self._text).split()))
            self._text = None
        elif tag == "tr" and self._cells:
            self.rows.append((self._cells, self._link))
            self._cells = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """The validate step as the pipeline runs it, on a clean prepared set, with a real MLflow store."""
    root = tmp_path_factory.mktemp("docs")
    write_clean_set(root / "raw", n=12)
    prepare(root / "raw", root / "dataset", PrepareConfig.from_params(_params()))
    store = f"sqlite:///{root / 'mlflow.db'}"
    out = data_steps.validate_data(
        str(root / "dataset"),
        str(root / "report"),
        params=json.dumps(PARAMS),
        profile="",
        tracking_uri=store,
        docs_dir=str(root / "data_docs"),
    )
    return root / "data_docs", out, store


def _params() -> Params:
    return parse_params(PARAMS)


@pytest.mark.timeout(900)  # prepare + GX on a busy 2-core machine
def test_index_lists_every_suites_result_with_a_link_to_its_page(
    validated: tuple[Path, dict[str, Any], str],
) -> None:
    docs, out, _ = validated
    assert out["evaluated"] > 10
    index = _parse(docs / "index.html")
    results = [(cells, link) for cells, link in index.rows if link and link.startswith("validations/")]
    assert len(results) == len(SUITES), index.rows
    suites = set()
    for cells, link in results:
        assert cells[0].endswith("Success"), cells  # the status, in words (GX: an icon font from a CDN)
        page = docs / link
        assert page.is_file(), link
        suites |= {name for name in SUITES if name in cells}
        text = page.read_text(encoding="utf-8")
        # The validation page itself: its suite's expectations and their outcome, not an empty shell.
        assert "expect_" in text or "Expectation" in text
        assert len(re.sub(r"<[^>]+>", "", text).split()) > 100
    assert suites == set(SUITES)


def test_no_page_loads_anything_from_the_network(validated: tuple[Path, dict[str, Any], str]) -> None:
    docs, _, _ = validated
    pages = sorted(docs.rglob("*.html"))
    assert len(pages) > len(SUITES)
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert remote_references(text) == [], (page, remote_references(text))
        assert OFFLINE_MARK in text and "<style>" in text  # styled without the CDN's Bootstrap
        assert "bootstrapTable" not in text and "$(" not in text  # nothing left that needs jQuery
        parsed = _parse(page)
        for ref in parsed.refs:
            if ref.startswith(("http://", "https://", "#", "mailto:")) or ref.endswith(".html"):
                continue
            # Local resources (logo, favicon, fonts) exist where the page points.
            assert (page.parent / ref.split("?")[0]).resolve().is_file(), (page, ref)


def test_data_docs_are_logged_with_the_validate_run(validated: tuple[Path, dict[str, Any], str]) -> None:
    _, _, store = validated
    client = MlflowClient(store)
    (run,) = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
        if r.data.tags.get("hndsr.step") == "validate"
    ]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "data_docs")}
    assert "data_docs/index.html" in logged


def test_offline_page_is_idempotent_and_keeps_plain_links() -> None:
    page = (
        '<html><head><link rel="stylesheet" href="https://cdn.example/b.css"/>'
        '<script src="https://cdn.example/j.js"></script></head>'
        '<body><a href="https://greatexpectations.io">GX</a></body></html>'
    )
    once = offline_page(page, "static/images/")
    assert remote_references(once) == [] and 'href="https://greatexpectations.io"' in once
    assert offline_page(once, "static/images/") == once
    assert remote_references(page) == ["https://cdn.example/j.js", "https://cdn.example/b.css"]
