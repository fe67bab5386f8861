"""``report.html``: every ``report.md`` (ensemble, pipeline, study) as one self-contained page for a browser.

The page is the markdown report itself, converted by Python-Markdown (tables, heading anchors) and set in the
Jinja2 template ``medens/templates/report.html.j2`` (package data), so it holds exactly the tables, intervals and
verdicts of the markdown, whatever sections a report has. Every image the report shows (plots, the gallery) is
embedded as a ``data:`` URI, so the page needs no network and no file beside it; links to other reports (a study's
runs) stay relative. No JavaScript; a print style sheet drops the navigation and keeps figures whole.
"""

from __future__ import annotations

import base64
import html
import logging
import mimetypes
import os
import re
from pathlib import Path

from medens.io import atomic_write_text
from medens.layout import HTML_REPORT_NAME

logger = logging.getLogger(__name__)

__all__ = ["HTML_REPORT_NAME", "TEMPLATE_NAME", "render_html_report", "write_html_report"]

#: The Jinja2 template, in the package's ``templates`` folder.
TEMPLATE_NAME = "report.html.j2"
_IMG_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]+)(")')
_H1 = re.compile(r"<h1[^>]*>(.*?)</h1>\s*", re.DOTALL)


def _environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("medens", "templates"), autoescape=select_autoescape(["html", "j2"]),
                       keep_trailing_newline=True)


def _embed(match: re.Match, folder: Path) -> str:
    src = html.unescape(match.group(2))
    if src.startswith(("data:", "http:", "https:")):
        return match.group(0)
    path = folder / src
    if not path.is_file():
        logger.warning("report.html: the image %s is missing; the page shows its caption instead", path)
        return match.group(0)
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"{match.group(1)}data:{kind};base64,{data}{match.group(3)}"


def render_html_report(markdown_text: str, folder: str | os.PathLike[str], kind: str,
                       markdown_name: str = "report.md") -> str:
    """The HTML page of a markdown report.

    Args:
        markdown_text: the report as written to ``report.md``.
        folder: the report's folder (images are read from it, relative to it).
        kind: what the report is (``ensemble``, ``study``, ...), for the page's header.
        markdown_name: the markdown file's name, for the footer.

    Returns:
        The page (UTF-8 text).
    """
    import markdown

    import medens

    converter = markdown.Markdown(extensions=["tables", "toc", "sane_lists"],
                                  extension_configs={"toc": {"toc_depth": "2"}})
    body = converter.convert(markdown_text)
    found = _H1.search(body)
    title = re.sub(r"<[^>]+>", "", found.group(1)) if found else f"medens {kind} report"
    if found:
        body = body[: found.start()] + body[found.end():]
    body = body.replace("<table>", '<div class="table-wrap"><table>').replace("</table>", "</table></div>")
    body = _IMG_SRC.sub(lambda m: _embed(m, Path(folder)), body)
    sections = [{"id": t["id"], "title": html.unescape(t["name"])}
                for top in converter.toc_tokens for t in ([top] if top["level"] == 2 else top.get("children", []))
                if t["level"] == 2]
    template = _environment().get_template(TEMPLATE_NAME)
    from markupsafe import Markup

    return template.render(title=html.unescape(title), kind=kind, body=Markup(body), sections=sections,
                           version=medens.__version__, markdown_name=markdown_name)


def write_html_report(markdown_text: str, folder: str | os.PathLike[str], kind: str) -> Path:
    """Write :data:`HTML_REPORT_NAME` into ``folder`` (atomically) from the markdown report; returns its path."""
    folder = Path(folder)
    return atomic_write_text(folder / HTML_REPORT_NAME, render_html_report(markdown_text, folder, kind))
