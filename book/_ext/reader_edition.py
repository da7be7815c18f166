"""Sphinx extension of the book: the reader's edition leaves out the grading
scaffolding.

The chapters are also the course's assignments (``coursework/``): each exercise says
what a student stores for the autograder ("*Autograded:* store ... in ``step_errors``"),
and an nbgrader check cell (``"grade": true`` in its metadata) tests what was stored,
with hidden tests between ``### BEGIN HIDDEN TESTS`` markers. A reader of the book needs
neither. Here, after a page is read, the check cells (input and output) and the
exercises' "Autograded" paragraphs are removed from the page, for the HTML and the PDF
alike. The notebooks are unchanged: the build still executes the check cells, so the
book's solutions are still tested, and ``coursework/student_edition.py`` keeps
everything for students. ``tests/test_book_browser.py`` checks the built pages. Loaded
by ``_config.yml`` (``sphinx.local_extensions``).
"""

from __future__ import annotations

from docutils import nodes

# "*Autograded:*", or "*Autograded (the check; the proof is graded by hand):*"
AUTOGRADED = "Autograded"


def is_check_cell(node: nodes.Node) -> bool:
    """A MyST-NB code cell that nbgrader grades (the autograder's check of an
    exercise)."""
    if not isinstance(node, nodes.container) or node.get("nb_element") != "cell_code":
        return False
    return bool((node.get("cell_metadata") or {}).get("nbgrader", {}).get("grade"))


def is_autograded_paragraph(node: nodes.Node) -> bool:
    """A paragraph that opens with an emphasised "Autograded..." note (what a student
    stores for the grader)."""
    if not isinstance(node, nodes.paragraph) or not node.children:
        return False
    first = node.children[0]
    return isinstance(first, nodes.emphasis) and first.astext().strip().startswith(
        AUTOGRADED
    )


def remove_grading(app, doctree: nodes.document) -> None:
    for node in list(
        doctree.findall(lambda n: is_check_cell(n) or is_autograded_paragraph(n))
    ):
        node.parent.remove(node)


def setup(app):
    app.connect("doctree-read", remove_grading)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
