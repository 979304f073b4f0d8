"""The status page as a strict HTML5 parser reads it: the document, an element's text, and the
table's rows by session (html5lib, a test-only dependency, is imported only to parse)."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

XHTML = "{http://www.w3.org/1999/xhtml}"


def parse_page(path: Path) -> ElementTree.Element:
    """Strict HTML5 parse: any parse error (bad nesting, stray tags, bad entities) raises."""
    import html5lib

    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=True)
    page: ElementTree.Element = parser.parse(path.read_bytes(), transport_encoding="utf-8")
    return page


def text_of(el: ElementTree.Element) -> str:
    return " ".join("".join(el.itertext()).split())


def session_rows(doc: ElementTree.Element) -> dict[str, ElementTree.Element]:
    """The page's session rows by session name (the name cell's text after the subject)."""
    rows = doc.findall(f".//{XHTML}tbody/{XHTML}tr")
    out = {}
    for tr in rows:
        name = tr.find(f".//{XHTML}div[@class='name']")
        assert name is not None
        out[text_of(name).split(" / ", 1)[1].removesuffix(" site1")] = tr
    return out
