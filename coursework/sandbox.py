"""Run the grader's worker for one submission in an OS sandbox (bubblewrap), or, where
there is none, say what is exposed.

With ``bwrap`` (Debian/Ubuntu package ``bubblewrap``; Linux only) each run gets:

* a fresh writable folder, seen as the repository's ``notebooks/`` folder and holding
  only the notebook to run, a fresh home (``/home/student``: IPython, Jupyter and
  matplotlib configuration, ``~/.local``) and ``/grading``;
* read-only views of the system (``/usr``, ``/etc``, ...), the Python installation and
  its environment, and the repository's ``icl_lib/``, ``coursework/``, ``checkpoints/``,
  ``results/`` and ``configs/``: nothing a later kernel loads can be changed;
* no view at all of the rest of the repository (the instructor's chapters, their hidden
  tests, ``tests/``), of the submissions folder, of the grade table or of the host's
  ``/tmp``, ``/root`` and ``/home``;
* new PID, mount, IPC, UTS and network namespaces (loopback only) and no capabilities:
  when the run ends, every process it started ends with it, detached (``setsid``) and
  double-forked ones included.

Without it, :data:`UNPROTECTED` lists what a submission can do; the grader refuses to
start unless told to go on (``--no-sandbox``), and then compares a :func:`fingerprint`
of what a later kernel loads before and after each run.
"""

from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from coursework.checking import GRADING_DIR_ENV
from coursework.student_edition import repository_root
from coursework.transport import ANSWERS_DIR_ENV

# the repository's folders a chapter may read
SHARED = ("icl_lib", "coursework", "checkpoints", "results", "configs")
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/sys")
TMPFS_BYTES = 512 * 2**20  # the sandbox's /tmp, a tmpfs: in the machine's memory
# the only variables of the grader's environment kept
PASSED_ON = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LANG", "TZ")
UNPROTECTED = (
    "the submission can read every file the grader can: the instructor's chapters with "
    "their hidden tests, the other submissions, the grade table",
    "it can change or delete those files, and write anywhere the grader can",
    "a process it starts with setsid or a double fork can outlive its kernel and "
    "change files after grading",
    "it can change what a later kernel loads (site-packages, ~/.local, IPython startup "
    "files, the library): the grader detects such changes (modification times and "
    "sizes) and stops, but cannot undo them",
    "it can use the network",
)


@dataclass(frozen=True)
class Layout:
    """Where a run sees its folders: the notebook's folder, its home and the grading
    folder."""

    notebooks: Path
    home: Path
    grading: Path


def bubblewrap_problem() -> str | None:
    """None if ``bwrap`` can start a sandbox here, else why not (one line)."""
    if not sys.platform.startswith("linux"):
        return f"no sandbox on {sys.platform} (bubblewrap needs Linux)"
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (apt-get install bubblewrap)"
    command = _bwrap_arguments(Path("/"), repository_root()) + ["--", "/bin/true"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap does not start: {error}"
    if done.returncode != 0:
        return f"bwrap cannot create namespaces here: {done.stderr.strip()[:200]}"
    return None


def tmpfs_size() -> list[str]:
    """``["--size", TMPFS_BYTES]`` where bubblewrap can bound a tmpfs (0.8.0 on): /tmp
    is held in the machine's memory."""
    global _TMPFS_SIZE
    if _TMPFS_SIZE is None:
        try:
            usage = subprocess.run(
                ["bwrap", "--help"], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            usage = ""
        _TMPFS_SIZE = ["--size", str(TMPFS_BYTES)] if "--size" in usage else []
    return _TMPFS_SIZE


_TMPFS_SIZE: list[str] | None = None


def _bwrap_arguments(work: Path | None, root: Path) -> list[str]:
    arguments = (
        [
            "bwrap",
            "--die-with-parent",
            "--new-session",
            "--unshare-all",
            "--cap-drop",
            "ALL",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]
        + tmpfs_size()
        + ["--tmpfs", "/tmp"]
    )
    for folder in SYSTEM:
        if os.path.exists(folder):
            arguments += ["--ro-bind", folder, folder]
    for folder in {sys.base_prefix, sys.prefix} | {str(root / name) for name in SHARED}:
        if os.path.exists(folder):
            arguments += ["--ro-bind", folder, folder]
    if work is not None and work != Path("/"):
        arguments += [
            "--bind",
            str(work / "notebooks"),
            str(root / "notebooks"),
            "--bind",
            str(work / "home"),
            "/home/student",
            "--bind",
            str(work / "grading"),
            "/grading",
            "--chdir",
            str(root / "notebooks"),
        ]
    return arguments


@dataclass(frozen=True)
class Sandbox:
    """How runs are isolated: ``"bubblewrap"``, or ``"none"`` (a plain subprocess in a
    fresh folder).

    ``watch``: for ``"none"``, the folders whose :func:`fingerprint` the grader compares
    before and after each run.
    """

    kind: str
    root: Path
    watch: tuple[Path, ...] = field(default=())

    def layout(self, work: Path) -> Layout:
        """Where a run in ``work`` sees its folders."""
        if self.kind == "bubblewrap":
            return Layout(
                self.root / "notebooks", Path("/home/student"), Path("/grading")
            )
        return Layout(work / "notebooks", work / "home", work / "grading")

    def run(self, work: Path, argv: list[str], timeout: float) -> str:
        """Run ``argv`` in a sandbox over ``work`` (from :func:`new_work`) for at most
        ``timeout`` s; return a note.

        The note is ``""`` if the command exited with status 0, else what happened.
        Every process the command started has ended when this returns (with bubblewrap;
        without it, those still in its process group).
        """
        inside = self.layout(work)
        env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
        env |= {
            "HOME": str(inside.home),
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "TMPDIR": "/tmp",
            "IPYTHONDIR": f"{inside.home}/.ipython",
            "JUPYTER_CONFIG_DIR": f"{inside.home}/.jupyter",
            "JUPYTER_DATA_DIR": f"{inside.home}/.local/share/jupyter",
            "JUPYTER_RUNTIME_DIR": f"{inside.home}/.local/share/jupyter/runtime",
            "MPLCONFIGDIR": f"{inside.home}/.config/matplotlib",
            "PYTHONDONTWRITEBYTECODE": "1",
            # the library of the views it is shown, whatever an editable install names
            "PYTHONPATH": str(self.root),
            ANSWERS_DIR_ENV: f"{inside.grading}/answers",
            GRADING_DIR_ENV: str(inside.grading),
        }
        command = (
            _bwrap_arguments(work, self.root) + ["--"] + argv
            if self.kind == "bubblewrap"
            else argv
        )
        with open(work / "log.txt", "wb") as log:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=inside.notebooks if self.kind == "none" else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                status = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                status = None
            finally:
                try:
                    # with bubblewrap, its PID 1 takes the namespace with it
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
        if status is None:
            return f"the run was stopped after {timeout:g} s"
        return "" if status == 0 else f"the run ended with status {status}"


def choose(kind: str) -> Sandbox:
    """The sandbox ``kind`` (``"bubblewrap"`` or ``"none"``); ``RuntimeError`` (saying
    why) where bubblewrap cannot run."""
    if kind == "bubblewrap":
        problem = bubblewrap_problem()
        if problem is not None:
            raise RuntimeError(problem)
        return Sandbox("bubblewrap", repository_root())
    if kind == "none":
        return Sandbox("none", repository_root(), tuple(watched()))
    raise ValueError(f"sandbox must be 'bubblewrap' or 'none', got {kind!r}")


def new_work(parent: Path) -> Path:
    """A fresh folder for one run, with ``notebooks/``, ``home/`` and
    ``grading/answers/`` in it."""
    work = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
    for sub in ("notebooks", "home", "grading/answers"):
        (work / sub).mkdir(parents=True)
    return work


def watched() -> list[Path]:
    """What a later kernel loads or the grader reads, for :func:`fingerprint` when there
    is no sandbox."""
    from jupyter_core import paths

    home = Path.home()
    candidates = [
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(site.getuserbase()),
        home / ".ipython",
        home / ".jupyter",
        home / ".config",
        *map(Path, paths.jupyter_config_path()),
        *map(Path, paths.jupyter_path()),
    ] + [repository_root() / name for name in ("icl_lib", "coursework", "notebooks")]
    return sorted({path for path in candidates if path.exists()})


def fingerprint(roots: list[Path]) -> dict[str, tuple[int, int, int, int]]:
    """Size, inode, modification and change time of every file and folder under
    ``roots`` (links not followed)."""
    seen = {}
    for root in roots:
        for folder, folders, files in os.walk(root):
            for name in folders + files:
                path = os.path.join(folder, name)
                try:
                    status = os.lstat(path)
                except OSError:
                    continue
                seen[path] = (
                    status.st_size,
                    status.st_ino,
                    status.st_mtime_ns,
                    status.st_ctime_ns,
                )
    return seen


def changed(before: dict, after: dict) -> list[str]:
    """The paths added, removed or changed between two fingerprints."""
    return sorted(
        path
        for path in before.keys() | after.keys()
        if before.get(path) != after.get(path)
    )
