"""Sphinx extension of the book: each page loads each script once.

Extensions that add an inline script after the HTML builder has started (sphinx-thebe's
configuration, ``const THEBE_JS_URL = ...``, and sphinx-togglebutton's) get it twice in
every page with Sphinx 7.4: once as added (``filename=None``) and once re-read from
Sphinx's registry (``filename=''``), which the builder does not see as the same script.
A second ``const`` declaration is a syntax error, so every page logged "Identifier
'THEBE_JS_URL' has already been declared" in the browser's console. Here the page's
scripts are deduplicated, the first copy kept, before the page is written
(``tests/test_book_browser.py`` checks the console). Loaded by ``_config.yml``
(``sphinx.local_extensions``).
"""

from __future__ import annotations


def _key(script) -> tuple:
    filename = getattr(script, "filename", script)
    attributes = getattr(script, "attributes", {})
    return (
        str(filename or ""),
        tuple(sorted((str(k), str(v)) for k, v in attributes.items())),
    )


def unique_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = (
        kept  # a new list: the builder's own is restored for the next page anyway
    )


def setup(app):
    app.connect("html-page-context", unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
