"""Sphinx extension of the book: a header button that links the whole book as a PDF,
``book.pdf`` at the site's root.

``make pdf`` writes ``_build/latex/book.pdf`` and copies it to ``_build/html/book.pdf``
when the HTML book is there; the publishing workflow does the same before it deploys
``_build/html``. The HTML build comes first, so the button is always there: where the
PDF was not built, following it finds no file, and nothing else on the page depends on
it (the page never requests it). The link is relative (``pathto``), so it works from
every page, on GitHub Pages and from ``file://``. Loaded by ``_config.yml``
(``sphinx.local_extensions``).
"""

from __future__ import annotations

PDF = "book.pdf"


def add_pdf_button(app, pagename, templatename, context, doctree):
    """Append the button to sphinx-book-theme's header buttons (after its own, priority
    501)."""
    buttons = context.get("header_buttons")
    if buttons is None or "pathto" not in context:
        return
    buttons.append(
        {
            "type": "link",
            "url": context["pathto"](PDF, 1),
            "tooltip": "The whole book as a PDF (book.pdf)",
            "icon": "fas fa-file-pdf",
            "label": "book-pdf-button",
        }
    )


def setup(app):
    app.connect("html-page-context", add_pdf_button, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
