"""Checkpoints: atomic writes, run metadata, and the loader the chapters call by name.

A run directory (written by :func:`icl_lib.train.train`) holds

* ``checkpoint.pt``: the full training state (model, optimizer, step, random states,
  config), for resuming;
* ``model.pt``: the final weights and the model's config, small enough to commit for
  laptop-scale models;
* ``meta.json``: config, seed, git commit, device, torch version, wall time, steps,
  final metrics, the exact command that produced the run, and the SHA-256 of the
  ``checkpoint.pt`` and ``model.pt`` it wrote (``"sha256"``);
* ``metrics.jsonl``: one JSON record per logging or evaluation step;
* while a run writes it, ``.train.lock``: the advisory lock (:func:`run_lock`) that
  keeps a second run out.

Files are written atomically (a temporary file in the same directory, flushed and
fsynced, then ``os.replace``), so an interruption leaves either the old file or the new
one. Everything is loaded with ``torch.load(..., weights_only=True)``, from regular
files only, and checked against the SHA-256 that ``meta.json`` records (runs written
before that record load unchecked): configs are stored as plain dicts, never as pickled
objects.

Chapters load committed runs by name: ``load_model("garg_dense_linear_laptop")`` reads
``<repository>/checkpoints/garg_dense_linear_laptop/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from icl_lib.devices import cpu_kernels, device_name, resolve_device
from icl_lib.models import make_model

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
FORMAT = "icl_lib/1"
# The advisory lock a training run holds on its directory (removed when the run ends;
# .gitignore'd after a kill -9).
LOCK_FILE = ".train.lock"
# Runs that need another session wait in checkpoints/in_progress/<name> with their
# resume checkpoint (committed): move the directory back to checkpoints/<name> and rerun
# its command to resume bit for bit.
IN_PROGRESS = "in_progress"


def repository_root() -> Path:
    """The repository that holds the package (``icl_lib/..``)."""
    return Path(__file__).resolve().parent.parent


def checkpoints_root() -> Path:
    """Where named checkpoints live: ``<repository>/checkpoints``."""
    return repository_root() / "checkpoints"


# ---------------------------------------------------------------- atomic writes


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(file)`` fills a temporary file beside it,
    which then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private; a checkpoint is meant to be shared
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)
    return path


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically. ``obj`` must hold only what
    ``weights_only=True`` loads back."""
    return atomic_write(path, lambda file: torch.save(obj, file))


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda file: file.write(text.encode()))


def _reason(error: BaseException, limit: int = 300) -> str:
    """An error's message on one line, cut at ``limit`` characters (torch's messages run
    over many lines)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed :func:`atomic_write` left in
    ``directory``; return them."""
    names = (CHECKPOINT_FILE, MODEL_FILE, META_FILE, METRICS_FILE)
    leftovers = [
        p
        for name in names
        for p in Path(directory).glob(f".{name}.*.tmp")
        if p.is_file()
    ]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def _read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``; ``ValueError`` unless it is a regular file (a FIFO would
    block the read forever)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError(
                f"{path} is not a regular file (a FIFO, device, socket or directory "
                "cannot hold weights)"
            )
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({_reason(error)})") from None


def _load_bytes(
    path: str | os.PathLike, data: bytes, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load`` of ``data`` (read from ``path``), ``weights_only=True``;
    ``ValueError`` naming ``path``."""
    try:
        return torch.load(
            io.BytesIO(data), map_location=map_location, weights_only=True
        )
    # on foreign bytes torch's readers raise anything (KeyError, ...)
    except Exception as error:  # noqa: BLE001
        raise ValueError(
            f"{path} is not a readable torch file ({_reason(error)})"
        ) from None


def load_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)``; an empty, truncated or
    foreign file, one that holds more than plain data, or no regular file at all (a
    FIFO, a directory), raises ``ValueError`` naming it."""
    return _load_bytes(path, _read_regular(path), map_location)


def _load_stored(path: Path) -> tuple[dict, str]:
    """:func:`load_file` of a dict in this library's ``FORMAT`` (``ValueError`` for
    anything else), with the SHA-256 of the bytes it was loaded from."""
    data = _read_regular(path)
    stored = _load_bytes(path, data)
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        found = (
            stored.get("format") if isinstance(stored, dict) else type(stored).__name__
        )
        raise ValueError(f"{path} has format {found!r}; this library reads {FORMAT!r}")
    return stored, hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a file, as ``meta.json`` records it under ``"sha256"``."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_recorded_sha256(path: Path, digest: str, step: Any = None) -> None:
    """Refuse (``ValueError``) a file whose SHA-256 differs from the one its run's
    ``meta.json`` records.

    Runs written before the record (and files it does not list) pass. ``checkpoint.pt``
    is checked only when ``meta.json`` describes its step: a kill between writing the
    checkpoint and ``meta.json`` leaves an older one.
    """
    try:
        meta = load_meta(path.parent)
    except ValueError:  # no meta.json, or an unreadable one: a model loads without it
        return
    recorded = meta.get("sha256")
    expected = recorded.get(path.name) if isinstance(recorded, dict) else None
    if expected is None or (
        path.name == CHECKPOINT_FILE and step != meta.get("steps_done")
    ):
        return
    if digest != expected:
        raise ValueError(
            f"{path} is not the file its {META_FILE} records (SHA-256 "
            f"{str(expected)[:16]}..., found {digest[:16]}...): it was changed or "
            "damaged; restore it or train the run again"
        )


# ---------------------------------------------------------------- run directories


def save_training_state(directory: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``checkpoint.pt`` (atomically) in ``directory``; ``state`` is a dict of
    tensors and plain values."""
    return save_atomic({"format": FORMAT, **state}, Path(directory) / CHECKPOINT_FILE)


def load_training_state(directory: str | os.PathLike) -> dict | None:
    """The state saved by :func:`save_training_state` (on the CPU), or ``None`` if there
    is none."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        return None
    state, digest = _load_stored(path)
    missing = sorted(
        {
            "config",
            "step",
            "model",
            "optimizer",
            "generator",
            "rng_cpu",
            "totals",
            "totals_steps",
            "wall_s",
        }
        - set(state)
    )
    if missing:
        raise ValueError(f"{path} is not a training checkpoint (it lacks {missing})")
    _check_recorded_sha256(path, digest, state["step"])
    return state


def save_model_file(
    directory: str | os.PathLike,
    model: nn.Module,
    model_spec: Mapping,
    n_dims: int,
    n_points: int,
) -> Path:
    """Write ``model.pt``: the weights (on the CPU) and what
    :func:`icl_lib.models.make_model` needs to rebuild them."""
    weights = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    model_config = {"spec": dict(model_spec), "n_dims": n_dims, "n_points": n_points}
    return save_atomic(
        {"format": FORMAT, "model_config": model_config, "state_dict": weights},
        Path(directory) / MODEL_FILE,
    )


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold the run directory's advisory lock (``fcntl.flock`` on ``LOCK_FILE``) for the
    ``with`` block.

    A second holder, in this process or another, gets ``ValueError`` naming the
    directory and the process that holds it. The lock file is removed when the block
    ends (a ``kill -9`` leaves it, unlocked: the next run takes it).
    """
    path = Path(directory) / LOCK_FILE
    fd = _acquire_lock(path, directory)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        # while still locked, so that no one takes a lock on a file about to vanish
        path.unlink(missing_ok=True)
        os.close(fd)


def _acquire_lock(path: Path, directory: str | os.PathLike) -> int:
    """An open descriptor of ``path`` locked exclusively; ``ValueError`` if another
    holder has it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(
                f"{directory} is in use by another training run (process {holder}): "
                "wait for it to end, or choose another --out (out_dir)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        # the holder before us removed the file after we opened it: lock the one now
        # there
        os.close(fd)


def git_commit(cwd: str | os.PathLike | None = None) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the repository at ``cwd`` (default: the package's), or
    ``("unknown", None)``."""
    cwd = Path(cwd) if cwd is not None else repository_root()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return commit, dirty


def provenance(device: torch.device) -> dict[str, Any]:
    """Where and with what a run or an evaluation was made, as ``meta.json`` and the
    result files record it: the git commit (and whether the work tree had uncommitted
    changes), the device and its name, torch's and Python's versions, and on a CPU what
    decides bit-exactness there (:func:`icl_lib.devices.cpu_kernels`)."""
    commit, dirty = git_commit()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        **(cpu_kernels() if device.type == "cpu" else {}),
    }


def write_meta(directory: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """Write ``meta.json`` (atomically)."""
    return write_json_atomic(dict(meta), Path(directory) / META_FILE)


def read_metrics(
    name_or_path: str | os.PathLike, missing_ok: bool = False
) -> list[dict]:
    """The records of a run's ``metrics.jsonl``, by name
    (``"garg_dense_linear_laptop"``) or run directory.

    A run without the file raises ``ValueError``; ``missing_ok=True`` (for training,
    which reads its own run directory before it has logged anything) returns ``[]``
    instead.
    """
    path = resolve(name_or_path) / METRICS_FILE
    if not path.exists():
        if missing_ok:
            return []
        raise ValueError(f"{path} does not exist (the run has logged nothing yet)")
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not valid JSON lines ({error})") from None
    lines = text.splitlines()
    # a last line cut by a kill or a full disk
    torn = bool(lines) and not text.endswith("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            record = _metrics_record(path, number, line, torn and number == len(lines))
            if record is not None:
                records.append(record)
    return records


def _metrics_record(
    path: Path, number: int, line: str, last_and_torn: bool
) -> dict | None:
    """Line ``number`` of ``metrics.jsonl``: a JSON object with an integer ``"step"``; a
    torn last line that does not parse is dropped (None): its record was never complete,
    and the run goes on without it."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as error:
        if last_and_torn:
            return None
        raise ValueError(
            f"{path} is not valid JSON lines (line {number}: {_reason(error, 120)})"
        ) from None
    step = record.get("step") if isinstance(record, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(
            f"{path} line {number} is not a metrics record (a JSON object with an "
            f"integer 'step' >= 0), got {line[:80]!r}"
        )
    return record


# ---------------------------------------------------------------- loading by name


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The run directory of ``name_or_path``: an existing directory, or
    ``<repository>/checkpoints/<name>``."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(
            "name_or_path must be a checkpoint name or a path (str or Path), got "
            f"{name_or_path!r}"
        )
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    named = checkpoints_root() / str(name_or_path)
    if named.is_dir():
        return named
    root = checkpoints_root()
    available = (
        sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != IN_PROGRESS)
        if root.is_dir()
        else []
    )
    raise ValueError(
        f"no checkpoint {str(name_or_path)!r}: not a directory, and not a name under "
        f"{root} (available: {available or 'none'}). Produce one with `python -m "
        "icl_lib.train configs/<experiment>.toml --out checkpoints/<name>`."
    )


def run_directory(name: str) -> Path:
    """The directory of the run ``name``: finished in ``checkpoints/<name>``, or paused
    for a later session in ``checkpoints/in_progress/<name>`` (the chapters read a
    paused run's log and resume checkpoint)."""
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise ValueError(
            "name must be a run's name (a directory name under checkpoints/), got "
            f"{name!r}"
        )
    for directory in (
        checkpoints_root() / name,
        checkpoints_root() / IN_PROGRESS / name,
    ):
        if (directory / META_FILE).is_file():
            return directory
    raise ValueError(f"no run {name!r} in checkpoints/ or checkpoints/{IN_PROGRESS}/")


def load_meta(name_or_path: str | os.PathLike) -> dict:
    """The ``meta.json`` of a run, by name or path."""
    path = resolve(name_or_path) / META_FILE
    if not path.exists():
        raise ValueError(
            f"{path} does not exist (the run has written no checkpoint yet)"
        )
    try:
        meta = json.loads(path.read_text())
    # deep nesting: RecursionError
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path} is not a run's meta.json (it needs a 'config' table)")
    return meta


def _stored_model(name_or_path: str | os.PathLike) -> tuple[Path, dict, dict]:
    """``(file, model_config, weights)`` of a run's ``model.pt``, else its
    ``checkpoint.pt`` (or of the file named)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(
            "name_or_path must be a checkpoint name or a path (str or Path), got "
            f"{name_or_path!r}"
        )
    path = Path(name_or_path)
    if path.is_file():
        files = [path]
    else:
        directory = resolve(name_or_path)
        files = [directory / MODEL_FILE, directory / CHECKPOINT_FILE]
    for file in (f for f in files if f.exists()):
        stored, digest = _load_stored(file)
        _check_recorded_sha256(file, digest, stored.get("step"))
        try:
            if "model_config" in stored:
                model_config, weights = stored["model_config"], stored["state_dict"]
            else:  # a training checkpoint
                config = stored["config"]
                model_config = {
                    "spec": config["model"],
                    "n_dims": config["n_dims"],
                    "n_points": config["n_points"],
                }
                weights = stored["model"]
        except (KeyError, TypeError):
            raise ValueError(
                f"{file} holds no model (neither 'model_config' and 'state_dict' nor a "
                "checkpoint's 'config' and 'model')"
            ) from None
        return file, model_config, weights
    raise ValueError(f"no {MODEL_FILE} or {CHECKPOINT_FILE} in {files[0].parent}")


def model_config(name_or_path: str | os.PathLike) -> dict:
    """``{"spec", "n_dims", "n_points"}`` of the model :func:`load_model` would load
    (without building it)."""
    return dict(_stored_model(name_or_path)[1])


def load_model(
    name_or_path: str | os.PathLike, device: str | torch.device | None = None
) -> nn.Module:
    """Rebuild a trained model from its run directory (by name or path), in eval mode on
    ``device`` (default CPU).

    Reads ``model.pt`` if the run finished, else the latest ``checkpoint.pt``; a path to
    either file also works. ``device``: None (the CPU), a ``torch.device``, or a name
    that :func:`icl_lib.devices.resolve_device` accepts.
    """
    if device is None:
        device = torch.device("cpu")
    elif isinstance(device, str):
        device = resolve_device(device)
    elif not isinstance(device, torch.device):
        raise ValueError(
            "device must be None, a torch.device or 'auto', 'cpu', 'cuda', 'cuda:N', "
            f"got {device!r}"
        )
    file, config, weights = _stored_model(name_or_path)
    try:
        model = make_model(config["spec"], config["n_dims"], config["n_points"])
        model.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"{file}: its weights do not fit its model config {config!r} "
            f"({_reason(error)})"
        ) from None
    return model.to(device).eval()
