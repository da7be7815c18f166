"""The built book in a real browser: headless Chromium opens the chapter pages served on
loopback.

Needs ``_build/html`` (``make book`` or ``make test`` builds it first) and Debian's
``chromium`` and ``chromium-driver``. Without them the checks are skipped with the
reason on a developer's machine and fail in CI (``CI`` set), where ``.ci/run`` installs
them.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build" / "html"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(
            f"{reason}; CI must run the browser check (.ci/run installs chromium and "
            "chromium-driver)"
        )
    pytest.skip(reason)


def _chapter_pages() -> list[Path]:
    return sorted((BUILD / "notebooks").glob("*.html"))


def _book_pages() -> list[Path]:
    """Every page of the book: the chapters and the prose pages (not Sphinx's search and
    index pages)."""
    return _chapter_pages() + sorted((BUILD / "book").glob("*.html"))


@pytest.fixture(scope="module")
def site():
    """Base URL of the built book, served by a local HTTP server on 127.0.0.1."""
    if not _chapter_pages():
        _unavailable(
            f"the book is not built ({BUILD} has no chapter pages); run `make book` "
            "first"
        )
    handler = functools.partial(QuietHandler, directory=str(BUILD))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        _unavailable(
            "Chromium or ChromeDriver is not installed (Debian packages chromium, "
            "chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="icl-book-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # No network but loopback: anything the page fetched from elsewhere would fail
        # to load.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--window-size=1280,1600",
    ):
        options.add_argument(flag)
    # the console, read by _console_errors
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=Service(executable_path=chromedriver), options=options
    )
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(browser, url: str, math: bool = True) -> None:
    """Open ``url`` and wait for MathJax to typeset it (``math=False``: for the images
    to load instead)."""
    browser.get(url)
    if not math:
        browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all(Array.from(document.images).map(i => i.complete ? null :"
            " new Promise(r => { i.onload = i.onerror = r; }))).then(() => done('ok'));"
        )
        return
    typeset = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];if (!window.MathJax || "
        "!MathJax.startup) { done('MathJax did not load'); return; }"
        "MathJax.startup.promise.then(() => done('ok'), (e) => done('MathJax failed: ' "
        "+ e));"
    )
    assert typeset == "ok", f"{url}: {typeset}"


def test_math_is_typeset_with_no_network(browser, site):
    for page in _chapter_pages():
        url = site + page.relative_to(BUILD).as_posix()
        _open(browser, url)
        typeset = browser.execute_script(
            "return document.querySelectorAll('mjx-container').length"
        )
        errors = browser.execute_script(
            "return document.querySelectorAll('mjx-merror').length"
        )
        text = browser.execute_script("return document.querySelector('main').innerText")
        assert typeset > 0, f"{page.name}: no typeset math (mjx-container) on the page"
        assert (
            errors == 0
        ), f"{page.name}: {errors} MathJax errors (mjx-merror) on the page"
        for raw in ("\\(", "\\[", "$$"):
            assert raw not in text, (
                f"{page.name}: raw TeX {raw!r} left in the page text: MathJax did not "
                "typeset it"
            )
        resources = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        outside = [
            name
            for name in resources
            if not name.startswith(site) and not name.startswith("data:")
        ]
        assert (
            not outside
        ), f"{page.name}: the page requested resources from outside the book: {outside}"
        mathjax = [name for name in resources if "mathjax" in name.lower()]
        assert (
            mathjax
        ), f"{page.name}: MathJax was not loaded from the book's own _static folder"


def test_chapter_figures_are_present(browser, site):
    for page in _chapter_pages():
        _open(browser, site + page.relative_to(BUILD).as_posix())
        widths = browser.execute_script(
            "return Array.from(document.querySelectorAll('.cell_output img')).map(i => "
            "i.naturalWidth)"
        )
        assert widths, f"{page.name}: no figure in the executed chapter"
        assert all(
            width > 0 for width in widths
        ), f"{page.name}: a figure failed to load (widths {widths})"


def test_every_image_loaded_and_says_what_it_shows(browser, site):
    """Each page's images loaded (natural width > 0) and carry alt text, which for a
    figure is a description (icl_lib.plotting's, or a chapter's own), never empty and
    never the image's file name (Sphinx's default)."""
    for page in _book_pages():
        _open(browser, site + page.relative_to(BUILD).as_posix(), math=False)
        images = browser.execute_script(
            "return Array.from(document.querySelectorAll('main img')).map(i => ({src: "
            "i.getAttribute('src') || '', alt: (i.getAttribute('alt') || '').trim(), "
            "width: i.naturalWidth, complete: i.complete}))"
        )
        for image in images:
            name = image["src"].rsplit("/", 1)[-1]
            assert (
                image["complete"] and image["width"] > 0
            ), f"{page.name}: the image {name} did not load"
            assert image["alt"], f"{page.name}: the image {name} has no alt text"
            assert name not in image["alt"] and not image["alt"].lower().endswith(
                (".png", ".svg", ".jpg")
            ), (
                f"{page.name}: the alt text of {name} is a file name "
                f"({image['alt']!r}), not what the figure shows"
            )


def test_exercise_solution_opens_on_click(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for page in _chapter_pages():
        _open(browser, site + page.relative_to(BUILD).as_posix())
        solutions = browser.find_elements(By.CSS_SELECTOR, "div.solution.dropdown")
        assert solutions, f"{page.name}: no exercise solution shown as a dropdown"
        solution = solutions[0]
        body = solution.find_element(
            By.CSS_SELECTOR, ":scope > section, :scope > :not(.admonition-title)"
        )
        browser.execute_script(
            "arguments[0].scrollIntoView({block: 'center'})", solution
        )
        assert (
            not body.is_displayed()
        ), f"{page.name}: the solution is visible before it is opened"
        # The toggle button, not the title's centre: a one-line title centres on its
        # link to the exercise, and clicking that link scrolls to the exercise instead
        # of opening the solution.
        solution.find_element(
            By.CSS_SELECTOR, ".admonition-title button.toggle-button"
        ).click()
        WebDriverWait(browser, 10).until(lambda _: body.is_displayed())
        assert (
            body.is_displayed()
        ), f"{page.name}: clicking the solution's title did not open it"


def _settle(browser, url: str) -> None:
    """Open ``url`` and wait for its images to load and, where the page loads MathJax,
    for it to typeset."""
    _open(browser, url, math=False)
    typeset = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];if (!window.MathJax || "
        "!MathJax.startup) { done('ok'); return; }MathJax.startup.promise.then(() => "
        "done('ok'), (e) => done('MathJax failed: ' + e));"
    )
    assert typeset == "ok", f"{url}: {typeset}"


def _console_errors(browser) -> list[str]:
    """The console's errors since the last call (uncaught exceptions, console.error,
    failed loads)."""
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE"
    ]


# The page's prose: main's text without code, outputs and typeset math (where `$` and
# braces are legitimate).
_PROSE = (
    "const main = document.querySelector('main').cloneNode(true);"
    "main.querySelectorAll('pre, code, .highlight, .cell_output, .output, "
    "mjx-container, script, style, .MathJax').forEach(e => e.remove());return "
    "main.textContent;"
)
_READ = {
    "prose": _PROSE,
    "headings": (
        "return Array.from(document.querySelectorAll("
        "'main h1, main h2, main h3, main h4'))"
        ".map(h => h.textContent.replace(/#\\s*$/, '').trim())"
    ),
    "pdf_links": (
        "return Array.from(document.querySelectorAll("
        "'.article-header-buttons a.btn-book-pdf-button'))"
        ".map(a => a.href)"
    ),
    "wide_code": (
        "return Array.from(document.querySelectorAll('div.cell_input pre'))"
        ".filter(p => p.scrollWidth > p.clientWidth + 1).length"
    ),
    # the autograder's scaffolding, which the reader's edition leaves out
    # (book/_ext/reader_edition.py)
    "grading": (
        "const text = document.querySelector('main').textContent;"
        "return ['BEGIN HIDDEN TESTS', 'Autograded', 'answers.close(', "
        "'from coursework import answers']"
        ".filter(s => text.includes(s))"
    ),
    # what the cells printed (text outputs and tracebacks, not images)
    "outputs": (
        "return Array.from(document.querySelectorAll("
        "'.cell_output pre, .cell_output .output'))"
        ".map(o => o.textContent).join('\\n')"
    ),
    # figures outside an exercise's solution (a box in the PDF, where a numbered figure
    # cannot go)
    "bare_figures": (
        "return Array.from(document.querySelectorAll('.cell_output img'))"
        ".filter(i => !i.closest('.solution'))"
        ".filter(i => !i.closest('figure') || "
        "!i.closest('figure').querySelector('figcaption')).length"
    ),
}


@pytest.fixture(scope="module")
def read_pages(browser, site) -> dict[str, dict]:
    """Every page of the book opened once at the desktop width (1280 px), settled
    (images loaded, math typeset): its console errors and what the checks below read
    from it, by the page's path in the book."""
    read = {}
    for page in _book_pages():
        _console_errors(browser)  # whatever an earlier page logged after it was checked
        _settle(browser, site + page.relative_to(BUILD).as_posix())
        found = {name: browser.execute_script(script) for name, script in _READ.items()}
        found["errors"] = _console_errors(browser)
        found["prose"] = " ".join(found["prose"].split())
        read[page.relative_to(BUILD).as_posix()] = found
    return read


def test_no_console_error_on_any_page(read_pages):
    """No page logs an error: e.g. sphinx-thebe's configuration script, declared twice,
    threw "Identifier 'THEBE_JS_URL' has already been declared" on every page
    (book/_ext/unique_scripts.py)."""
    for page, found in read_pages.items():
        assert not found[
            "errors"
        ], f"{page}: errors in the browser's console: {found['errors']}"


def test_no_raw_markup_in_the_page_text(read_pages):
    """The prose shows no markup that failed to render: no stray `$` (math MathJax did
    not receive), no MyST role left as text (`{ref}`, `{numref}`, `{doc}`, `{cite}`,
    `{prf:ref}`), no exercise shown by its label (`ch1-ex-step-size`) instead of its
    number, no unresolved reference (`??`)."""
    raw = re.compile(
        r"\$|\{(?:ref|numref|doc|cite|cite:[tp]|prf:ref|eq|math)\}|"
        r"\bch\d+-ex-[\w-]+|\?\?"
    )
    for page, found in read_pages.items():
        text = found["prose"]
        places = [
            text[max(0, m.start() - 60) : m.end() + 60] for m in raw.finditer(text)
        ]
        assert (
            not places
        ), f"{page}: raw markup in the page text, {len(places)} places: {places[:3]}"


def test_the_readers_edition_has_no_grading_scaffolding(read_pages):
    """The autograder's check cells (hidden tests, `answers.close(...)`) and the
    exercises' "Autograded: store ..." notes are for students (the student edition keeps
    them); a reader of a chapter sees neither (the instructor's guide describes
    them)."""
    chapters = {
        page: found
        for page, found in read_pages.items()
        if page.startswith("notebooks/")
    }
    assert len(chapters) == 6, sorted(read_pages)
    for page, found in chapters.items():
        assert not found[
            "grading"
        ], f"{page}: grading scaffolding in the reader's edition: {found['grading']}"


def test_headings_are_numbered_once(read_pages):
    """A chapter's section headings carry the book's numbers only ("3.1. The identity,
    exactly"), not a number of their own as well ("3.1. 1. The identity")."""
    twice = re.compile(r"^\d+(\.\d+)+\.?\s+\d+(\.\d+)*[.)]\s")
    for page, found in read_pages.items():
        numbered = [h for h in found["headings"] if twice.match(h)]
        assert not numbered, f"{page}: headings numbered twice: {numbered}"


def test_every_page_links_the_pdf(read_pages, site):
    """The header of every page links the whole book as a PDF, book.pdf at the site's
    root (make pdf puts it there; where it was not built the link finds nothing, and the
    page does not load it)."""
    for page, found in read_pages.items():
        assert found["pdf_links"] == [
            site + "book.pdf"
        ], f"{page}: the header's PDF link is {found['pdf_links']}, not {site}book.pdf"


def test_no_output_prints_a_warning_or_a_machine_path(read_pages):
    """A reader sees results, not the machine's noise: no printed warning (a torch
    `UserWarning` once showed in chapter 2 with the path of the file that raised it) and
    no absolute path of the machine that built the book."""
    noise = re.compile(
        r"\b\w*Warning\b|\bwarnings\.warn|"
        r"(?<![\w.])/(?:home|work|tmp|usr|root|Users|opt)/|"
        r"site-packages|[A-Z]:\\"
    )
    for page, found in read_pages.items():
        text = found["outputs"]
        places = [
            text[max(0, m.start() - 60) : m.end() + 60] for m in noise.finditer(text)
        ]
        assert not places, (
            f"{page}: warnings or machine paths in the outputs, {len(places)} places: "
            f"{places[:3]}"
        )


@pytest.fixture()
def narrow(browser):
    """The browser with a viewport 400 px wide (a phone), restored afterwards."""
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 400, "height": 900, "deviceScaleFactor": 1, "mobile": True},
    )
    yield browser
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_no_page_scrolls_sideways_at_400_px(narrow, site):
    """At 400 px every page fits the width: outputs wrap, and wide code, tables and
    formulas scroll within their own boxes (book/_static/book.css); the page itself
    never scrolls sideways."""
    for page in _book_pages():
        _settle(narrow, site + page.relative_to(BUILD).as_posix())
        scroll, client, body = narrow.execute_script(
            "const e = document.documentElement; return [e.scrollWidth, e.clientWidth, "
            "document.body.scrollWidth];"
        )
        assert max(scroll, body) <= client + 1, (
            f"{page.name}: at 400 px the page is {max(scroll, body)} px wide (viewport "
            f"{client} px): it scrolls sideways"
        )


def test_no_code_cell_scrolls_sideways(read_pages):
    """At the desktop width (1280 px), every line of every code cell fits its box:
    chapters' code is at most 88 characters a line (tests/test_chapter_style.py) and
    book/_static/book.css sizes the code font for 88."""
    for page, found in read_pages.items():
        assert (
            found["wide_code"] == 0
        ), f"{page}: {found['wide_code']} code cells scroll sideways at 1280 px"


def test_every_chapter_figure_has_a_caption(read_pages):
    """Every figure of a chapter, outside the exercises' solutions, is a numbered figure
    with a caption (tests/test_chapter_style.py checks the notebooks' side)."""
    for page, found in read_pages.items():
        assert (
            found["bare_figures"] == 0
        ), f"{page}: {found['bare_figures']} figures without a caption"
