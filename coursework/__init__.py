"""Coursework tooling of the book: exercise markup (nbgrader's), the student edition and
the autograder.

* :mod:`coursework.answers` -- the checks that the exercises' autograded cells call;
  each says what is wrong.
* :mod:`coursework.markup` -- converts the book's exercise markup into nbgrader cell
  metadata (for authors).
* :mod:`coursework.student_edition` -- ``python -m coursework.student_edition --out
  _build/student``.
* :mod:`coursework.grade` -- ``python -m coursework.grade SUBMISSIONS --out
  grades.csv``: runs each submission in a sandbox (:mod:`coursework.sandbox`,
  :mod:`coursework.worker`), takes its answers out as plain data
  (:mod:`coursework.transport`) and runs the chapter's checks on them in a kernel of
  their own (:mod:`coursework.checking`).
"""
