"""The PDF of the book (``make pdf``, ``_build/latex/book.pdf``) holds the whole book,
read back with poppler.

Checked with ``pdftotext``, ``pdfimages`` and ``pdftohtml -xml`` (Debian's
poppler-utils): every chapter's title, a theorem, at least one figure in every chapter,
the bibliography, and no mathematics left as TeX source in the text (code listings, set
in FreeMono, may hold TeX in Python strings and are not counted). Without the PDF or
poppler the checks are skipped with the reason on a developer's machine and fail in CI
(``CI`` set), where .ci/packages installs TeX and poppler and ``make test`` builds the
PDF.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PDF = ROOT / "_build" / "latex" / "book.pdf"
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(
            f"{reason}; CI must check the PDF (.ci/packages installs TeX and poppler, "
            "make test builds it)"
        )
    pytest.skip(reason)


def _title(path: Path) -> str:
    first = next(
        c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"
    )
    return "".join(first["source"]).splitlines()[0].lstrip("# ").strip()


def _words(text: str) -> str:
    """Text with hyphenation at line ends undone, all whitespace as single spaces
    (titles break over lines) and typographic apostrophes as plain ones."""
    return " ".join(re.sub(r"-\n(?=[a-z])", "", text).replace("\u2019", "'").split())


@pytest.fixture(scope="module")
def pages() -> list[str]:
    """The PDF's text, one string per page."""
    if not all(shutil.which(tool) for tool in ("pdftotext", "pdfimages", "pdftohtml")):
        _unavailable(
            "pdftotext, pdfimages or pdftohtml is not installed (Debian package "
            "poppler-utils)"
        )
    if not PDF.is_file():
        _unavailable(f"{PDF} does not exist; run `make pdf`")
    text = subprocess.run(
        ["pdftotext", "-layout", str(PDF), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return text.split("\f")


def _chapter_pages(pages: list[str]) -> list[tuple[str, int, int]]:
    """(title, first page, last page) of each chapter, 1-based, from where its title
    starts a page's heading."""
    starts = []
    for number, path in enumerate(CHAPTERS, start=1):
        title = _words(_title(path))
        # The heading reads CHAPTER / ONE / TITLE (the class's upper case), numbered
        # within the part, as in the HTML.
        word = ("ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")[
            number - 1
        ]
        heading = re.compile(rf"CHAPTER {word} {re.escape(title.upper())}")
        found = [
            i for i, page in enumerate(pages) if heading.search(_words(page).upper())
        ]
        assert found, f"{path.name}: no heading 'Chapter {number}: {title}' in the PDF"
        starts.append((title, found[0] + 1))
    ends = [start - 1 for _, start in starts[1:]] + [len(pages)]
    return [(title, start, end) for (title, start), end in zip(starts, ends)]


def test_every_chapter_title_is_in_the_pdf(pages):
    chapters = _chapter_pages(pages)
    assert [start for _, start, _ in chapters] == sorted(
        start for _, start, _ in chapters
    ), "chapters out of order"


def test_a_theorem_is_in_the_pdf(pages):
    text = _words("\n".join(pages))
    assert re.search(
        r"Theorem \d+(\.\d+)*", text
    ), "no numbered theorem (sphinx-proof) in the PDF"


def test_every_chapter_has_a_figure(pages):
    listing = subprocess.run(
        ["pdfimages", "-list", str(PDF)], capture_output=True, text=True, check=True
    ).stdout
    image_pages = {
        int(line.split()[0]) for line in listing.splitlines()[2:] if line.split()
    }
    for title, start, end in _chapter_pages(pages):
        assert image_pages & set(
            range(start, end + 1)
        ), f"chapter {title!r} (pages {start}-{end}) has no figure"


def test_the_bibliography_is_in_the_pdf(pages):
    text = _words("\n".join(pages))
    assert "Bibliography" in text or "BIBLIOGRAPHY" in text
    assert re.search(r"Garg", text) and re.search(
        r"von Oswald", text
    ), "the bibliography's entries are missing"


# \frac, $$, \(, \[, ^{, _{
TEX_SOURCE = re.compile(r"\\[A-Za-z]{2,}|\$\$|\\\(|\\\[|\^\{|_\{")


def _prose_pages(pdf: Path) -> list[str]:
    """Each page's text outside code listings (text in a monospaced font is left out),
    from ``pdftohtml -xml``."""
    xml = subprocess.run(
        ["pdftohtml", "-xml", "-i", "-stdout", "-q", str(pdf)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    root = ElementTree.fromstring(xml)
    mono = {
        spec.get("id")
        for spec in root.iter("fontspec")
        if "mono" in spec.get("family", "").lower()
    }
    return [
        " ".join(
            "".join(t.itertext())
            for t in page.iter("text")
            if t.get("font") not in mono
        )
        for page in root.iter("page")
    ]


def test_no_math_is_left_as_tex_source(pages):
    prose = _prose_pages(PDF)
    assert any(
        "Theorem" in page for page in prose
    ), "the PDF's text could not be read with its fonts"
    leftovers = [
        (number, page[max(0, m.start() - 50) : m.end() + 50])
        for number, page in enumerate(prose, start=1)
        for m in TEX_SOURCE.finditer(page)
    ]
    assert not leftovers, (
        f"TeX source left in the PDF's text, in {len(leftovers)} places (page, "
        f"context): {leftovers[:4]}"
    )
