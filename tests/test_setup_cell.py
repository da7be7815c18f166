"""The setup cell (``tools/setup_cell.py``): every chapter starts with it, it does
nothing in a checkout or when grading, and elsewhere (the Colab branch) it clones the
repository and a chapter runs top to bottom from the clone.

The Colab branch runs without the network: a fresh virtual environment outside the
checkout that sees the project's packages (torch, numpy, Jupyter: what Colab has) but
not ``icl_lib``, the repository URL pointed at a local bare repository that holds this
checkout's ``HEAD`` (committed content: uncommitted changes are not in the clone), and a
fresh ``HOME``. Chapter 1 runs there through nbclient, as Colab would run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import nbformat
import pytest

from coursework.student_edition import student_notebook
from tools import setup_cell

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# about 25 s on a laptop core
FAST_CHAPTER = ROOT / "notebooks" / "01_icl_as_a_learning_problem.ipynb"
# What the fresh environment keeps of ours: nothing that points at this checkout
# (PYTHONPATH, a grader's folder).
KEPT = ("PATH", "LANG", "LC_ALL", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TMPDIR")


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_chapter_starts_with_the_setup_cell(path):
    nb = nbformat.read(path, as_version=4)
    first = setup_cell.first_code_cell(nb)
    assert first == setup_cell.setup_cell(), (
        f"{path.name}: the first code cell is not the setup cell that `python -m "
        "tools.setup_cell` writes (from _config.yml's repository.url and branch); run "
        "it"
    )
    assert (
        not first.outputs and first.execution_count is None
    ), f"{path.name}: the setup cell has stored outputs"
    assert [c.get("id") for c in nb.cells].count(setup_cell.CELL_ID) == 1


def test_the_cell_reads_the_repository_url_from_the_config_only():
    url, branch = setup_cell.read_repository()
    source = setup_cell.cell_source()
    assert f"repository={url!r}, ref={branch!r}" in source
    compile(source, "<setup cell>", "exec")
    assert "pip" not in source.replace(
        "pipeline", ""
    ), "the setup cell must not install packages"


def test_writing_the_cell_is_idempotent_and_moves_a_stale_copy(tmp_path):
    shutil.copytree(
        ROOT / "notebooks",
        tmp_path / "notebooks",
        ignore=shutil.ignore_patterns(".ipynb_checkpoints"),
    )
    for name in ("_config.yml", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    chapter = tmp_path / "notebooks" / FAST_CHAPTER.name
    nb = nbformat.read(chapter, as_version=4)
    nb.cells = [c for c in nb.cells if c.get("id") != setup_cell.CELL_ID]
    stale = nbformat.v4.new_code_cell("print('old setup')", id=setup_cell.CELL_ID)
    nb.cells.insert(5, stale)  # a stale copy further down
    nbformat.write(nb, chapter)
    (tmp_path / "_config.yml").write_text(
        (ROOT / "_config.yml")
        .read_text()
        .replace(setup_cell.read_repository()[0], "https://example.org/fork/icl-book")
    )

    assert setup_cell.update(tmp_path, check=True) == [
        p for p in sorted((tmp_path / "notebooks").glob("*.ipynb"))
    ]
    setup_cell.update(tmp_path)
    assert setup_cell.update(tmp_path, check=True) == []
    before = {p.name: p.read_bytes() for p in (tmp_path / "notebooks").glob("*.ipynb")}
    assert setup_cell.update(tmp_path) == []
    assert before == {
        p.name: p.read_bytes() for p in (tmp_path / "notebooks").glob("*.ipynb")
    }
    nb = nbformat.read(chapter, as_version=4)
    assert (
        setup_cell.first_code_cell(nb).source.count("https://example.org/fork/icl-book")
        == 1
    )
    assert "old setup" not in json.dumps(nb.cells)
    original = nbformat.read(FAST_CHAPTER, as_version=4)
    assert [c.source for c in nb.cells if c.get("id") != "setup"] == [
        c.source for c in original.cells if c.get("id") != "setup"
    ], "writing the cell changed another cell"


def test_check_mode_names_the_stale_chapters(tmp_path, capsys):
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "_config.yml").write_text(
        "repository:\n  url: https://example.org/other\n  branch: main\n"
    )
    assert setup_cell.main(["--root", str(tmp_path), "--check"]) == 1
    out, err = capsys.readouterr()
    assert (
        out.count("not current: ") == len(CHAPTERS)
        and "python -m tools.setup_cell" in err
    )


def test_the_student_edition_keeps_the_cell_and_its_tag():
    for path in CHAPTERS:
        student = student_notebook(nbformat.read(path, as_version=4))
        assert setup_cell.first_code_cell(student) == setup_cell.setup_cell(), path.name


def _run_cell(python: str | Path, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    probe = setup_cell.cell_source() + "\nimport sys\nprint('PATH0', sys.path[0])\n"
    return subprocess.run(
        [str(python), "-c", probe],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_cell_does_nothing_in_a_checkout(tmp_path):
    env = {name: os.environ[name] for name in KEPT if name in os.environ}
    # how the test suite imports this checkout
    env |= {"HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("COURSEWORK_GRADING_DIR", None)
    done = _run_cell(sys.executable, env, ROOT / "notebooks")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(
        "PATH0"
    ), f"the setup cell printed something: {done.stdout!r}"
    assert not (tmp_path / "icl-book").exists()


# ------------------------------------------------------------ the Colab branch, offline


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """``(python, env, origin)``: a fresh venv outside the checkout that sees our
    packages but not icl_lib, an environment for it, and a bare repository holding this
    checkout's HEAD as branch ``main``."""
    if shutil.which("git") is None:
        _fail_or_skip("git is not installed")
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        _fail_or_skip(f"{ROOT} is not a git checkout: the Colab branch clones it")
    base = tmp_path_factory.mktemp("colab")
    origin = base / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(origin)], check=True)
    subprocess.run(
        ["git", "-C", str(origin), "config", "receive.shallowUpdate", "true"],
        check=True,
    )
    branch = setup_cell.read_repository()[1]
    subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "push",
            "--quiet",
            str(origin),
            f"HEAD:refs/heads/{branch}",
        ],
        check=True,
    )
    venv = base / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True
    )
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [
                str(python),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # Colab's preinstalled packages: ours, as a plain path (so that the editable install
    # of icl_lib is not activated).
    (purelib / "preinstalled.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    kernels = venv / "share" / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    str(python),
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "Python 3 (fresh)",
                "language": "python",
            }
        )
    )
    home = base / "home"
    home.mkdir()
    env = {name: os.environ[name] for name in KEPT if name in os.environ}
    env |= {
        "HOME": str(home),
        "ICL_BOOK_REPOSITORY": origin.as_uri(),
        "MPLBACKEND": "Agg",
    }
    missing = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; print(u.find_spec('icl_lib'))",
        ],
        env=env,
        cwd=base,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert missing == "None", f"the fresh environment already sees icl_lib: {missing}"
    return python, env, origin, head.stdout.strip()


def test_the_cell_does_nothing_when_grading(fresh, tmp_path):
    python, env, _, _ = fresh
    done = _run_cell(python, env | {"COURSEWORK_GRADING_DIR": str(tmp_path)}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(
        "PATH0"
    ), f"the setup cell printed something: {done.stdout!r}"
    assert not (
        Path(env["HOME"]) / "icl-book"
    ).exists(), "the setup cell cloned the repository while grading"


DRIVER = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=False,
               resources={"metadata": {"path": sys.argv[3]}}).execute()
nbformat.write(nb, sys.argv[2])
"""


def test_colab_branch_runs_a_chapter_from_a_fresh_environment(fresh, tmp_path):
    python, env, origin, head = fresh
    work = tmp_path / "content"  # Colab's working folder: the notebook alone
    work.mkdir()
    shutil.copy(FAST_CHAPTER, work / FAST_CHAPTER.name)
    start = time.perf_counter()
    done = subprocess.run(
        [
            str(python),
            "-c",
            DRIVER,
            str(work / FAST_CHAPTER.name),
            str(tmp_path / "ran.ipynb"),
            str(work),
        ],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    seconds = time.perf_counter() - start
    assert (
        done.returncode == 0
    ), f"{FAST_CHAPTER.name} failed in the fresh environment:\n{done.stderr[-4000:]}"
    ran = nbformat.read(tmp_path / "ran.ipynb", as_version=4)
    said = (
        "".join(o.get("text", "") for o in setup_cell.first_code_cell(ran).outputs)
        .strip()
        .splitlines()
    )
    clone = Path(env["HOME"]) / "icl-book"
    assert (
        len(said) == 1
    ), f"the setup cell should say what it did in one line, said {said}"
    assert said[0].startswith(
        f"setup: cloned {origin.as_uri()} (main) into {clone}"
    ), said[0]
    assert (
        f"icl_lib at commit {head[:7]}" in said[0] and "installed nothing" in said[0]
    ), said[0]
    print(
        f"\n{FAST_CHAPTER.name} ran in the fresh environment in {seconds:.0f} s: "
        f"{said[0]}"
    )

    # Later kernels find the clone through the .pth file, and load_model finds the
    # committed runs in it.
    probe = (
        "from icl_lib.checkpoints import checkpoints_root, load_model; "
        "load_model('garg_dense_linear_laptop'); print(checkpoints_root())"
    )
    found = subprocess.run(
        [str(python), "-c", probe],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == clone / "checkpoints"
    again = _run_cell(python, env, tmp_path)
    assert again.returncode == 0 and again.stdout.splitlines()[0].startswith("PATH0"), (
        "the setup cell should do nothing once the clone is on the path: "
        f"{again.stdout!r} {again.stderr[-500:]}"
    )
