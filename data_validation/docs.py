"""Great Expectations data docs that render offline.

GX's pages load Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega from CDNs and its logo from
S3, and its tables (the index's list of validation results among them) are filled in by
bootstrap-table in the browser: without the network the index is empty and no page is styled.
:func:`make_offline` rewrites a built site so that it needs nothing but its own files: the CDN tags
go, the logo and icon point at the site's ``static/images`` (from every page's depth), each
bootstrap-table is rendered as a plain HTML table (its rows link where GX's clickable rows went, the
status is said in words), and a small stylesheet stands in for Bootstrap and the icon font.
"""

from __future__ import annotations

import ast
import html
import os
import re
from pathlib import Path
from typing import Any

# <script src="https://..."></script> and <link ... href="https://..."> (CSS, fonts).
_REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>\s*", re.I)
_REMOTE_LINK = re.compile(r"<link\b[^>]*\bhref=\"https?://[^\"]*\"[^>]*>\s*", re.I)
# GX's own relative paths to static/images (its validation pages' favicon is one level short).
_LOCAL_IMAGES = re.compile(r"(?<=[\"'])(?:\./|(?:\.\./)+)?static/images/")
_S3_IMAGES = re.compile(
    r"https://great-expectations-web-assets\.s3[^\"']*?/([\w.-]+\.(?:png|svg|ico|gif))[^\"']*"
)
# A bootstrap-table: the empty <table id=...> and the script that fills it.
_TABLE = re.compile(
    r"<table\s+id=\"(?P<id>[^\"]+)\"(?P<attrs>[^>]*)data-toggle=\"table\"\s*>\s*</table>", re.S
)
_FILL = re.compile(
    r"<script>\s*\$\('#(?P<id>[^']+)'\)\.bootstrapTable\(.*?^\s*columns: (?P<columns>.*?),\s*$"
    r"\s*^\s*data: (?P<data>.*?),\s*$.*?</script>",
    re.S | re.M,
)
# GX's helper functions for bootstrap-table and its row-click handlers: jQuery, which is gone.
_JQUERY_SCRIPT = re.compile(
    r"<script>(?:(?!</script>).)*?(?:\$\(|bootstrapTable)(?:(?!</script>).)*</script>\s*", re.S
)

OFFLINE_MARK = "<!-- hndsr: offline data docs -->"

STYLE = """<style>
/* hndsr: stands in for the CDN's Bootstrap (data_validation/docs.py) */
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #212529;
  background: #fff; font-size: 15px; line-height: 1.45; }
a { color: #0b5cad; }
nav.navbar { display: flex; align-items: center; padding: 6px 24px; border-bottom: 1px solid #dee2e6;
  background: #f8f9fa; }
.breadcrumb { display: flex; list-style: none; margin: 0 0 0 16px; padding: 0; gap: 8px; }
.breadcrumb-item + .breadcrumb-item::before { content: "/"; padding-right: 8px; color: #6c757d; }
.container-fluid { padding: 16px 32px; }
.row { display: flex; flex-wrap: wrap; gap: 16px; }
.col-12, .col-md-10, .col-lg-10 { flex: 1 1 640px; min-width: 0; }
.col-md-2, .col-lg-2, .ge-sidebar { flex: 0 1 260px; }
.card { border: 1px solid #dee2e6; border-radius: 6px; margin-bottom: 16px; background: #fff; }
.card-header { padding: 8px 16px; background: #f1f3f5; border-bottom: 1px solid #dee2e6; font-weight: 600; }
.card-body { padding: 12px 16px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; }
th, td { border: 1px solid #dee2e6; padding: 6px 10px; text-align: left; vertical-align: top; }
th { background: #f1f3f5; }
tr.hndsr-link:hover { background: #eef4fb; }
.text-success, .fa-check-circle { color: #198754; }
.text-danger, .fa-times, .fa-times-circle { color: #c62828; }
.badge { display: inline-block; padding: 2px 7px; border-radius: 10px; background: #e9ecef; font-size: 85%; }
.badge-success { background: #d1e7dd; } .badge-danger { background: #f8d7da; }
.fas.fa-check-circle::before, .fas.fa-check::before { content: "\\2714"; font-style: normal; }
.fas.fa-times::before, .fas.fa-times-circle::before { content: "\\2718"; font-style: normal; }
.fas.fa-exclamation-triangle::before { content: "\\26A0"; font-style: normal; color: #b26a00; }
.d-none, .ge-cta-footer, #ge-cta-footer, .cooltip .tooltiptext { display: none; }
code, pre { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }
.btn { display: none; }
</style>
"""


def _cell(value: Any) -> str:
    """GX's cell values are HTML it rendered itself, or plain values."""
    return "" if value is None else str(value)


def _static_table(attrs: str, columns: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    classes = re.search(r"class=\"([^\"]*)\"", attrs)
    head = "".join(f"<th>{html.escape(str(c.get('title', c['field'])))}</th>" for c in columns)
    body = []
    for row in rows:
        link = row.get("_table_row_link_path")
        cells = []
        for i, col in enumerate(columns):
            content = _cell(row.get(col["field"]))
            if col["field"] == "validation_success" and "_validation_success_text" in row:
                # GX shows an icon only (Font Awesome, from a CDN): say it in words.
                ok = row["_validation_success_text"] == "Success"
                content = f'<span class="{"text-success" if ok else "text-danger"}">' + (
                    f"{'&#10004;' if ok else '&#10008;'} {row['_validation_success_text']}</span>"
                )
            if link and i == 0:  # the row's link, where GX made the whole row clickable with jQuery
                content = f'<a href="{html.escape(str(link))}">{content or "open"}</a>'
            cells.append(f"<td>{content}</td>")
        attr = f' class="hndsr-link" data-href="{html.escape(str(link))}"' if link else ""
        body.append(f"<tr{attr}>{''.join(cells)}</tr>")
    cls = f' class="{classes.group(1)}"' if classes else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def offline_page(text: str, static_images: str) -> str:
    """One page of the site without the network; ``static_images``: the site's static/images/ relative
    to the page."""
    if OFFLINE_MARK in text:
        return text
    fills = {m["id"]: m for m in _FILL.finditer(text)}

    def table(m: re.Match[str]) -> str:
        fill = fills.get(m["id"])
        if fill is None:
            return m.group(0)
        columns = ast.literal_eval(fill["columns"])  # GX prints Python literals into the script
        rows = ast.literal_eval(fill["data"])
        return _static_table(m["attrs"], columns, rows)

    text = _TABLE.sub(table, text)
    text = _FILL.sub("", text)
    text = _JQUERY_SCRIPT.sub("", text)
    text = _REMOTE_SCRIPT.sub("", text)
    text = _REMOTE_LINK.sub("", text)
    text = _LOCAL_IMAGES.sub(static_images, text)
    text = _S3_IMAGES.sub(lambda m: static_images + m[1], text)
    return text.replace("</head>", f"{OFFLINE_MARK}\n{STYLE}</head>", 1)


def make_offline(site: str | Path) -> list[Path]:
    """Rewrite every page of the data docs site ``site`` (in place); returns the pages."""
    site = Path(site)
    pages = sorted(site.rglob("*.html"))
    for page in pages:
        rel = os.path.relpath(site / "static" / "images", page.parent).replace(os.sep, "/") + "/"
        page.write_text(offline_page(page.read_text(encoding="utf-8"), rel), encoding="utf-8")
    return pages


def remote_references(text: str) -> list[str]:
    """The http(s) URLs a page loads (scripts, stylesheets, images, fonts); links to follow are not."""
    loads = re.findall(r"<(?:script|img|iframe)\b[^>]*\bsrc=\"(https?://[^\"]+)\"", text, re.I)
    loads += re.findall(r"<link\b[^>]*\bhref=\"(https?://[^\"]+)\"", text, re.I)
    loads += re.findall(r"url\(\s*['\"]?(https?://[^)'\"]+)", text, re.I)
    loads += re.findall(r"@import\s+['\"](https?://[^'\"]+)", text, re.I)
    return loads
