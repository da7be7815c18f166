"""The setup cell: the first code cell of every chapter, which makes a chapter run where
the repository is not.

    python -m tools.setup_cell
        # write the cell into every chapter in notebooks/ (idempotent)
    python -m tools.setup_cell --check
        # exit 1, naming the chapters whose first code cell is not the cell

The cell is generated from ``_config.yml`` (``repository.url`` and
``repository.branch``, the one place the book's repository is named) and from the pins
of ``pyproject.toml``; after changing either, run this again. In a checkout of the
repository (``icl_lib`` importable and its committed runs beside it) and when the
coursework grader runs a notebook (``COURSEWORK_GRADING_DIR`` set) the cell does nothing
and prints nothing. Elsewhere, as on Colab, it makes a shallow clone of the repository
at the configured branch and puts the clone on Python's path (a ``.pth`` file in
site-packages, so later kernels find it too): ``icl_lib`` and ``coursework`` import from
the clone and ``load_model`` finds the committed runs in its ``checkpoints/``. It
installs no package, so the environment's own torch and numpy are kept, and it says what
it did in one line. ``ICL_BOOK_REPOSITORY``, ``ICL_BOOK_REF`` and ``ICL_BOOK_CLONE``
override the repository URL (any URL ``git clone`` takes, ``file://`` included), the
branch or tag, and the folder of the clone (default ``~/icl-book``).

The cell carries the tag ``remove-cell`` (the HTML and PDF books do not show it) and the
id ``setup``; this script replaces a cell with that id wherever it is, or inserts one,
so that it is the chapter's first code cell.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
CELL_ID = "setup"
TAGS = ["remove-cell"]
PINNED = ("torch", "numpy")  # the packages the cell reports (it never installs them)

TEMPLATE = """\
# Setup for Colab and other fresh environments; in a checkout of the book's repository
# it does nothing. Where icl_lib or its committed runs are missing, it clones the
# repository (shallow) and puts the clone on Python's path; it installs no package (the
# environment's own torch and numpy are kept). Written by `python -m tools.setup_cell`
# from _config.yml: edit that, not this cell.
def _setup_book(repository={url!r}, ref={branch!r}):
    import importlib, importlib.util, os, pathlib, subprocess, sys, sysconfig
    spec = importlib.util.find_spec("icl_lib")
    here = spec is not None and spec.origin is not None and any(
        pathlib.Path(spec.origin).parents[1].glob("checkpoints/*/model.pt"))
    if here or os.environ.get("COURSEWORK_GRADING_DIR"):
        # a checkout of the repository, or the coursework grader: nothing to do
        return
    repository = os.environ.get("ICL_BOOK_REPOSITORY", repository)
    ref = os.environ.get("ICL_BOOK_REF", ref)
    clone = os.environ.get("ICL_BOOK_CLONE", "~/icl-book")
    clone = pathlib.Path(clone).expanduser().absolute()
    if (clone / "icl_lib" / "__init__.py").is_file():
        done = f"used the clone {{clone}}"
    else:
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--branch", ref,
                        repository, str(clone)], check=True)
        done = f"cloned {{repository}} ({{ref}}) into {{clone}}"
    commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    sys.path.insert(0, str(clone))
    for name in [name for name in sys.modules
                 if name.split(".")[0] in ("icl_lib", "coursework")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    try:
        pth = pathlib.Path(sysconfig.get_paths()["purelib"]) / "icl_book.pth"
        pth.write_text(f"{{clone}}\\n")
        done += f", put it on the path ({{pth}})"
    except OSError:
        done += ", put it on the path of this kernel"
    runs = len(list(clone.glob("checkpoints/*/model.pt")))
    import numpy, torch
    print(f"setup: {{done}}: icl_lib at commit {{commit}}, {{runs}} committed runs; "
          f"installed nothing (torch {{torch.__version__}}, numpy {{numpy.__version__}}; "
          f"the book is checked with {pins})")


_setup_book()
del _setup_book"""


def read_repository(root: Path = ROOT) -> tuple[str, str]:
    """``(repository.url, repository.branch)`` from ``root/_config.yml``; ``ValueError``
    if either is missing."""
    path = Path(root) / "_config.yml"
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(
            f"{path} cannot be read as YAML ({' '.join(str(error).split())})"
        ) from None
    repository = config.get("repository") if isinstance(config, dict) else None
    url = repository.get("url") if isinstance(repository, dict) else None
    branch = repository.get("branch", "main") if isinstance(repository, dict) else None
    if not isinstance(url, str) or not url.strip():
        raise ValueError(
            f"{path}: repository.url must be the repository's URL (a non-empty "
            f"string), got {url!r}"
        )
    if not isinstance(branch, str) or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch):
        raise ValueError(
            f"{path}: repository.branch must be a branch or tag name, got {branch!r}"
        )
    return url.strip(), branch


def read_pins(root: Path = ROOT) -> dict[str, str]:
    """The exact pins of :data:`PINNED` in ``root/pyproject.toml``'s dependencies
    (``{"torch": "2.13.0", ...}``)."""
    path = Path(root) / "pyproject.toml"
    try:
        project = tomllib.loads(path.read_text()).get("project")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"{path} cannot be read as TOML ({_why(error)})") from None
    dependencies = project.get("dependencies") if isinstance(project, dict) else None
    if not isinstance(dependencies, list) or not all(
        isinstance(item, str) for item in dependencies
    ):
        raise ValueError(
            f"{path}: project.dependencies must be a list of requirement strings, got "
            f"{dependencies!r:.80}"
        )
    pins = {}
    for requirement in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", requirement.strip())
        if match and match.group(1).lower() in PINNED:
            pins[match.group(1).lower()] = match.group(2)
    missing = [name for name in PINNED if name not in pins]
    if missing:
        raise ValueError(
            f"{path}: the dependencies must pin {missing} exactly (name==version)"
        )
    return pins


def _why(error: Exception) -> str:
    """An error in one line, without the path it names (the message names it
    already)."""
    text = (
        error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    )
    return " ".join(text.split())


def read_chapter(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path``; ``ValueError`` naming it if it cannot be read (a
    folder, not JSON, not a notebook)."""
    try:
        return nbformat.read(path, as_version=4)
    # nbformat raises OSError, ValueError, TypeError, AttributeError, ...
    except Exception as error:  # noqa: BLE001
        raise ValueError(
            f"{path} cannot be read as a notebook ({type(error).__name__}: "
            f"{_why(error)[:200]})"
        ) from None


def cell_source(root: Path = ROOT) -> str:
    """The setup cell's source for the repository at ``root``."""
    url, branch = read_repository(root)
    pins = ", ".join(f"{name} {version}" for name, version in read_pins(root).items())
    return TEMPLATE.format(url=url, branch=branch, pins=pins)


def setup_cell(root: Path = ROOT) -> nbformat.NotebookNode:
    """The setup cell (a new code cell without outputs)."""
    cell = nbformat.v4.new_code_cell(cell_source(root), id=CELL_ID)
    cell.metadata["tags"] = list(TAGS)
    return cell


def first_code_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    return next((cell for cell in nb.cells if cell.cell_type == "code"), None)


def is_current(nb: nbformat.NotebookNode, cell: nbformat.NotebookNode) -> bool:
    """True if the first code cell of ``nb`` is exactly ``cell`` (id, source, metadata,
    no outputs)."""
    first = first_code_cell(nb)
    return first is not None and first == cell


def with_setup_cell(
    nb: nbformat.NotebookNode, cell: nbformat.NotebookNode
) -> nbformat.NotebookNode:
    """``nb`` with ``cell`` as its first code cell: any cell with the setup id is
    removed first (in place)."""
    nb.cells = [c for c in nb.cells if c.get("id") != CELL_ID]
    index = next(
        (i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells)
    )
    nb.cells.insert(index, cell)
    return nb


def chapters(root: Path = ROOT) -> list[Path]:
    found = sorted((Path(root) / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise ValueError(
            "--root must be the book's repository (with notebooks/NN_*.ipynb), got "
            f"'{root}'"
        )
    return found


def update(root: Path = ROOT, check: bool = False) -> list[Path]:
    """Write the setup cell into every chapter (``check``: write nothing); return the
    chapters that were not current."""
    paths = chapters(root)
    cell = setup_cell(root)
    stale = []
    for path in paths:
        nb = read_chapter(path)
        if is_current(nb, cell):
            continue
        stale.append(path)
        if not check:
            try:
                nbformat.validate(with_setup_cell(nb, cell))
                nbformat.write(nb, path)
            except (OSError, nbformat.ValidationError) as error:
                raise ValueError(
                    f"{path} cannot be written with the setup cell "
                    f"({_why(error)[:200]})"
                ) from None
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.setup_cell",
        description=(
            "Write the setup cell (Colab and fresh environments) into every chapter."
        ),
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        help="the book's repository (default: this one)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 if a chapter is not current",
    )
    args = parser.parse_args(argv)
    try:
        stale = update(args.root, check=args.check)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in stale:
        print(f"{'not current' if args.check else 'wrote the setup cell into'}: {path}")
    if args.check and stale:
        print("run `python -m tools.setup_cell` to update them", file=sys.stderr)
        return 1
    if not stale:
        print(
            "every chapter's first code cell is the setup cell "
            f"({len(chapters(args.root))} chapters)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
