"""Bad input, table-driven: each probe is one row, so that the next failure found is one
line to add.

* :data:`CLI_ERRORS`: a command line of ``python -m icl_lib.train``, ``python -m
  icl_lib.evaluate``, ``python -m icl_lib.sweep``, ``python -m tools.setup_cell`` or
  ``python -m coursework.student_edition``, run in-process through ``main(argv)``, that
  must end with exit code 2 and one line on stderr, ``error: ...``, naming the argument,
  the value and what is accepted (never a traceback), and leave the run directory as it
  was (a row's setup may carry the ``env`` a process of torchrun sees:
  :func:`torchrun`);
* :data:`LIBRARY_ERRORS`: a call of a public function that must raise ``ValueError``
  with a given message;
* then the behaviours that are not errors: a finished run is never overwritten and a
  rerun after a kill at any point finishes the run; SIGINT runs in a subprocess.

Every run directory lives under ``tmp_path``: nothing here writes under
``checkpoints/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from icl_lib import (
    baselines,
    checkpoints,
    dual_form,
    evaluate,
    evaluation,
    finetuning,
    fits,
    models,
    plotting,
    samplers,
    shifts,
    sweep,
    tasks,
    theory,
)
from icl_lib import train as train_module
from icl_lib.checkpoints import (
    CHECKPOINT_FILE,
    META_FILE,
    METRICS_FILE,
    MODEL_FILE,
    repository_root,
)
from icl_lib.devices import make_generator
from icl_lib.train import TrainConfig, load_config, train
from coursework import student_edition
from coursework import markup as coursework_markup
from tools import setup_cell

REPO = repository_root()
# 6 steps, checkpoints at 3 and 6, logs every 2
TINY = REPO / "configs" / "tiny_test.toml"
CUDA = torch.cuda.is_available()


def tiny_toml(tmp: Path, changes: dict[str, str]) -> Path:
    """``tmp/bad.toml``: ``configs/tiny_test.toml`` with whole lines replaced
    (``{'lr = 1e-3': 'lr = 2e-3'}``)."""
    text = TINY.read_text()
    for old, new in changes.items():
        assert f"\n{old}\n" in text, f"no line {old!r} in tiny_test.toml"
        text = text.replace(f"\n{old}\n", f"\n{new}\n")
    (tmp / "bad.toml").write_text(text)
    return tmp / "bad.toml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of tiny_test.toml (with its checkpoint), trained once for the
    module; copy it to change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(
        load_config(TINY),
        out,
        progress=False,
        command="python -m icl_lib.train configs/tiny_test.toml",
    )
    return out


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def call_cli(
    main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture
) -> tuple[int, str, str]:
    """``main(argv)`` in-process: ``(exit code, stdout, stderr)``."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------ the table of command lines

# Setups change the run directory (or write a file) before the command runs; they return
# nothing.


def truncate(name: str) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])

    return setup


def empty(name: str) -> Callable[[Path, Path], None]:
    return lambda run, tmp: (run / name).write_bytes(b"")


def foreign(name: str) -> Callable[[Path, Path], None]:
    return lambda run, tmp: torch.save({"weights": torch.zeros(3)}, run / name)


def text(name: str, content: str = "hello") -> Callable[[Path, Path], None]:
    return lambda run, tmp: (run / name).write_text(content)


def flip_a_weight_byte(name: str) -> Callable[[Path, Path], None]:
    """A byte of ``name``'s first tensor flipped: the file still loads, with other
    weights."""

    def setup(run: Path, tmp: Path) -> None:
        path = run / name
        with zipfile.ZipFile(path) as archive:
            offset = next(
                i.header_offset
                for i in archive.infolist()
                if i.filename.endswith("/data/0")
            )
        data = bytearray(path.read_bytes())
        start = (
            offset
            + 30
            + int.from_bytes(data[offset + 26 : offset + 28], "little")
            + int.from_bytes(data[offset + 28 : offset + 30], "little")
        )  # after the local header, its name and its extra field
        data[start + 1] ^= 0x40
        path.write_bytes(bytes(data))

    return setup


def fifo(name: str) -> Callable[[Path, Path], None]:
    """``name`` replaced by a FIFO. A reader that opens it anyway is released after 20 s
    (end of file), so that a regression fails the test instead of hanging it."""

    def setup(run: Path, tmp: Path) -> None:
        path = run / name
        path.unlink()
        os.mkfifo(path)

        def release() -> None:
            try:
                # fails (ENXIO) when no one reads
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

        timer = threading.Timer(20, release)
        timer.daemon = True
        timer.start()

    return setup


def metrics_lines(*lines: str) -> Callable[[Path, Path], None]:
    return lambda run, tmp: (run / METRICS_FILE).write_text(
        "".join(line + "\n" for line in lines)
    )


def edit_meta(**changes: object) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        meta = json.loads((run / META_FILE).read_text())
        meta["config"].update(changes)
        (run / META_FILE).write_text(json.dumps(meta))

    return setup


def without_checkpoint(status: str) -> Callable[[Path, Path], None]:
    """The committed runs' layout (model.pt and meta.json, no checkpoint.pt), with
    meta.json's status set."""

    def setup(run: Path, tmp: Path) -> None:
        (run / CHECKPOINT_FILE).unlink()
        meta = json.loads((run / META_FILE).read_text())
        (run / META_FILE).write_text(json.dumps({**meta, "status": status}))

    return setup


def bad_toml(
    changes: dict[str, str], then: Callable[[Path, Path], None] | None = None
) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        tiny_toml(tmp, changes)
        if then is not None:
            then(run, tmp)

    return setup


def no_setup(run: Path, tmp: Path) -> None:
    pass


def torchrun(
    world_size: str, then: Callable[[Path, Path], None] = no_setup, **variables: str
) -> Callable[[Path, Path], None]:
    """``then``, run as one of torchrun's processes: its variables (``WORLD_SIZE``, rank
    0 unless ``variables`` say otherwise) are set for the command, through the setup's
    ``env``, and unset after."""

    def setup(run: Path, tmp: Path) -> None:
        then(run, tmp)

    setup.env = {"WORLD_SIZE": world_size, "RANK": "0", "LOCAL_RANK": "0", **variables}  # type: ignore[attr-defined]
    return setup


def a_result(run: Path, tmp: Path) -> None:
    """``tmp/r.json``: a result file, as an earlier ``icl_lib.evaluate`` left it."""
    (tmp / "r.json").write_text(
        json.dumps({"format": evaluate.RESULT_FORMAT, "curves": {}})
    )


def book_root(
    pyproject: str | None = '[project]\ndependencies = ["torch==2.0", "numpy==1.0"]\n',
    chapter: str | None = "{}",
) -> Callable[[Path, Path], None]:
    """``tmp`` as a book's repository for ``tools.setup_cell``: a config, ``pyproject``
    (None: none) and one chapter (None: a folder in its place)."""

    def setup(run: Path, tmp: Path) -> None:
        (tmp / "notebooks" / "01_x.ipynb").mkdir(parents=True) if chapter is None else (
            (tmp / "notebooks").mkdir(),
            (tmp / "notebooks" / "01_x.ipynb").write_text(chapter),
        )
        (tmp / "_config.yml").write_text(
            "repository:\n  url: https://example.org/book\n"
        )
        if pyproject is not None:
            (tmp / "pyproject.toml").write_text(pyproject)

    return setup


def broken_markup(run: Path, tmp: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("```{solution-end}\n```", id="x")]
    nbformat.write(nb, tmp / "broken.ipynb")


def warm_start_toml(
    init_from: str,
    changes: dict[str, str] | None = None,
    then: Callable[[Path, Path], None] | None = None,
) -> Callable[[Path, Path], None]:
    """``tmp/bad.toml`` with ``init_from = <init_from>`` ({run} is the finished run) and
    other lines replaced."""

    def setup(run: Path, tmp: Path) -> None:
        line = f"threads = 1\ninit_from = {init_from.format(run=run)}"
        tiny_toml(tmp, {"threads = 1": line, **(changes or {})})
        if then is not None:
            then(run, tmp)

    return setup


def sweep_file(text: str, other_run: bool = False) -> Callable[[Path, Path], None]:
    """``tmp/sweep.toml`` holding ``text`` ({tiny}: tiny_test.toml, {tmp}: the folder);
    with ``other_run``, ``tmp/run.toml``: tiny_test.toml at another lr, whose run would
    train into the finished run's directory."""

    def setup(run: Path, tmp: Path) -> None:
        (tmp / "sweep.toml").write_text(text.format(tiny=TINY, tmp=tmp))
        if other_run:
            (tmp / "run.toml").write_text(
                TINY.read_text().replace("\nlr = 1e-3\n", "\nlr = 2e-3\n")
            )

    return setup


TRAIN = ["{tiny}", "--out", "{run}", "--no-progress"]
SWEEP = ["{tmp}/sweep.toml", "--status"]
A_SWEEP = sweep_file('root = "{tmp}"\n[[runs]]\nconfig = "{tiny}"\n')
WARM = ["{tmp}/bad.toml", "--out", "{tmp}/warm", "--no-progress"]
EVALUATE = [
    "{run}",
    "--task",
    "linear",
    "--prompts",
    "16",
    "--estimators",
    "least_squares",
    "--out",
    "{tmp}/r.json",
]
EVALUATE_INTO = EVALUATE[:-1]  # + the --out file

# (id, "train" | "evaluate", argv with {tiny} {run} {tmp} {file}, setup, expected
# message after "error: ")
CLI_ERRORS = [
    (
        "train --device cuda without CUDA",
        "train",
        TRAIN + ["--device", "cuda"],
        no_setup,
        r"device = 'cuda' but CUDA is not available here; use 'cpu' or 'auto'",
    ),
    (
        "train --device gpu",
        "train",
        TRAIN + ["--device", "gpu"],
        no_setup,
        r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'",
    ),
    (
        "train --steps -3",
        "train",
        TRAIN + ["--steps", "-3"],
        no_setup,
        r"steps must be a positive integer",
    ),
    (
        "train --stop-at 0",
        "train",
        TRAIN + ["--stop-at", "0"],
        no_setup,
        r"--stop-at must be a positive integer",
    ),
    (
        "train --out /sys/run",
        "train",
        ["{tiny}", "--out", "/sys/run"],
        no_setup,
        r"--out must be a directory that can be written, got '/sys/run'",
    ),
    (
        "train --out naming a file",
        "train",
        ["{tiny}", "--out", "{file}"],
        no_setup,
        r"--out must be a directory, got '.*', which is a file",
    ),
    (
        "train --steps 8 into a 6-step run",
        "train",
        TRAIN + ["--steps", "8"],
        no_setup,
        r"cannot resume the run in .* \(finished, 6 of 6 steps\): its config differs "
        r"in steps: 6 -> 8 \(a schedule may change on resume only where the steps "
        r"already taken keep their learning rates\); start over with --fresh",
    ),
    (
        "train on a truncated checkpoint.pt",
        "train",
        TRAIN,
        truncate(CHECKPOINT_FILE),
        r"cannot resume .*checkpoint.pt is not a readable torch file .*; start over "
        r"with --fresh",
    ),
    (
        "train on an empty checkpoint.pt",
        "train",
        TRAIN,
        empty(CHECKPOINT_FILE),
        r"checkpoint.pt is not a readable torch file \(EOFError\); start over with "
        r"--fresh",
    ),
    (
        "train on a foreign checkpoint.pt",
        "train",
        TRAIN,
        foreign(CHECKPOINT_FILE),
        r"checkpoint.pt has format None; this library reads 'icl_lib/1'; start over "
        r"with --fresh",
    ),
    (
        'train with noise_std = "0.5"',
        "train",
        ["{tmp}/bad.toml", "--out", "{run}"],
        bad_toml({'name = "linear"': 'name = "noisy_linear"\nnoise_std = "0.5"'}),
        r"task: noise_std must be a number >= 0, got '0.5'",
    ),
    (
        'train with model preset = "huge"',
        "train",
        ["{tmp}/bad.toml", "--out", "{run}"],
        bad_toml({'name = "gpt"': 'preset = "huge"'}),
        r"model.preset must be one of 'laptop', 'laptop_deep', 'paper'; got 'huge'",
    ),
    (
        "train with width = 10**6",
        "train",
        ["{tmp}/bad.toml", "--out", "{run}"],
        bad_toml({"width = 16": "width = 1000000"}),
        r"model: width 1000000, n_layers 1 and n_dims 3 give about 1.20e\+13 "
        r"parameters; at most 1.07e\+09 \(2\*\*30\)",
    ),
    (
        "train with n_dims = 10**9",
        "train",
        ["{tmp}/bad.toml", "--out", "{run}"],
        bad_toml({"n_dims = 3": "n_dims = 1000000000"}),
        r"batch_size x n_points x n_dims must be at most 2\*\*28 \(1 GiB of float32 "
        r"inputs\), got 16 x 5 x 1000000000",
    ),
    (
        "train with eval_batch = 10**8",
        "train",
        ["{tmp}/bad.toml", "--out", "{run}"],
        bad_toml({"eval_batch = 32": "eval_batch = 100000000"}),
        r"eval_batch x n_points x n_dims must be at most 2\*\*28 \(1 GiB of float32 "
        r"inputs\), got 100000000 x 5 x 3",
    ),
    (
        "evaluate --prompts 1e13",
        "evaluate",
        EVALUATE + ["--prompts", "10000000000000"],
        no_setup,
        r"--prompts x points x n_dims must be at most 2\*\*28 \(1 GiB of float32 "
        r"inputs\), got 10000000000000 x ",
    ),
    (
        "train with an unknown model option",
        "train",
        ["{tmp}/bad.toml", "--out", "{run}"],
        bad_toml({"width = 16": "widht = 16"}),
        r"unknown option\(s\) \['widht'\] for model 'gpt'; accepted: \['n_layers', "
        r"'width', 'n_heads', 'token_format', ",
    ),
    (
        "train with a task component without name",
        "train",
        ["{tmp}/bad.toml", "--out", "{run}"],
        bad_toml(
            {
                "name = "
                '"linear"': 'name = "mixture"\nweights = [1.0]\ncomponents = [{k = 2}]'
            }
        ),
        r"task: components\[0\] must be a table with a 'name' \(one of \['linear', ",
    ),
    (
        'train with draw = "fresh"',
        "train",
        ["{tmp}/bad.toml", "--out", "{run}"],
        bad_toml(
            {
                "name = "
                '"linear"': 'name = "finite_pool_linear"\npool_size = 8\ndraw = "fresh"'
            }
        ),
        r"task: draw must be one of 'pool', 'gaussian'; got 'fresh'",
    ),
    (
        "train a config of another run into a finished run without checkpoint",
        "train",
        ["{tmp}/bad.toml", "--out", "{run}", "--no-progress"],
        bad_toml({"lr = 1e-3": "lr = 2e-3"}, without_checkpoint("finished")),
        r"the run in .* \(finished, 6 of 6 steps\) is another run: its config differs "
        r"in lr: 0.001 -> 0.002; start over with --fresh \(resume=False\), which "
        r"discards it, or choose another --out",
    ),
    (
        "train into an unfinished run without checkpoint",
        "train",
        TRAIN,
        without_checkpoint("running"),
        r"the run in .* \(running, 6 of 6 steps\) has no checkpoint.pt to resume from; "
        r"start over with --fresh",
    ),
    (
        "train with lr = 1e30 (diverges)",
        "train",
        ["{tmp}/bad.toml", "--out", "{tmp}/diverged", "--no-progress"],
        bad_toml({"lr = 1e-3": "lr = 1e30"}),
        r"training diverged: train_loss, train_normalized_error not finite at logged "
        r"step 2 \(lr = 1e\+30\); no checkpoint was written; lower lr",
    ),
    (
        "train on a checkpoint.pt of text",
        "train",
        TRAIN,
        text(CHECKPOINT_FILE),
        r"cannot resume .*checkpoint.pt is not a readable torch file \(.*\); start "
        r"over with --fresh",
    ),
    (
        "train on a checkpoint.pt that is a FIFO",
        "train",
        TRAIN,
        fifo(CHECKPOINT_FILE),
        r"cannot resume .*checkpoint.pt is not a regular file \(a FIFO, device, socket "
        r"or directory cannot hold weights\)",
    ),
    (
        "train on a checkpoint.pt with a flipped byte",
        "train",
        TRAIN,
        flip_a_weight_byte(CHECKPOINT_FILE),
        r"cannot resume .*checkpoint.pt is not the file its meta.json records "
        r"\(SHA-256 [0-9a-f]{16}\.\.\., found [0-9a-f]{16}\.\.\.\): it was changed or "
        r"damaged; restore it or train the run again; start over with --fresh",
    ),
    (
        "train on a model.pt of text (committed layout)",
        "train",
        TRAIN,
        lambda run, tmp: ((run / CHECKPOINT_FILE).unlink(), text(MODEL_FILE)(run, tmp)),
        r"model.pt is not a readable torch file",
    ),
    (
        "train on metrics.jsonl with a record without step",
        "train",
        TRAIN,
        metrics_lines('{"x": 1}'),
        r"cannot resume the run in .*: .*metrics.jsonl line 1 is not a metrics record "
        r"\(a JSON object with an integer 'step' >= 0\), got '\{\"x\": 1\}'; start "
        r"over with --fresh",
    ),
    (
        "train on metrics.jsonl with a string step",
        "train",
        TRAIN,
        metrics_lines('{"step": 2}', '{"step": "2"}'),
        r"metrics.jsonl line 2 is not a metrics record .*, got '\{\"step\": \"2\"\}'",
    ),
    (
        "train on metrics.jsonl with a list",
        "train",
        TRAIN,
        metrics_lines("[1, 2]"),
        r"metrics.jsonl line 1 is not a metrics record .*, got '\[1, 2\]'",
    ),
    (
        "train on metrics.jsonl with a broken line before the last",
        "train",
        TRAIN,
        metrics_lines('{"step": 2', '{"step": 3}'),
        r"cannot resume .*metrics.jsonl is not valid JSON lines \(line 1: .*\); start "
        r"over with --fresh",
    ),
    (
        "train --threads 2**40",
        "train",
        TRAIN + ["--threads", str(2**40)],
        no_setup,
        r"threads must be a positive integer <= 4096, got 1099511627776",
    ),
    (
        "train with init_from naming no run",
        "train",
        WARM,
        warm_start_toml('"no_such_run"'),
        r"init_from: no checkpoint 'no_such_run': not a directory, and not a name "
        r"under .*checkpoints",
    ),
    (
        "train with init_from = 3",
        "train",
        WARM,
        warm_start_toml("3"),
        r"init_from must be a run name or directory \(a non-empty string\), got 3",
    ),
    (
        "train with init_from a model of another width",
        "train",
        WARM,
        warm_start_toml('"{run}"', {"width = 16": "width = 32"}),
        r"init_from: '.*run' holds a model .*'width': 16.*, but this config trains "
        r".*'width': 32",
    ),
    (
        "train with init_from an unfinished run",
        "train",
        WARM,
        warm_start_toml('"{run}"', then=lambda run, tmp: (run / MODEL_FILE).unlink()),
        r"init_from: '.*run' has no model.pt \(only a finished run can start another\)",
    ),
    (
        "train under torchrun, 3 processes for batch_size = 16",
        "train",
        TRAIN,
        torchrun("3"),
        r"batch_size = 16 must be divisible by the world size 3 \(each process trains "
        r"on an equal slice\); choose --nproc_per_node among the divisors of 16",
    ),
    (
        "train under torchrun --device cuda without CUDA",
        "train",
        TRAIN + ["--device", "cuda"],
        torchrun("2"),
        r"device = 'cuda' but CUDA is not available here; use 'cpu' or 'auto'",
    ),
    (
        "train under torchrun --device cuda:1",
        "train",
        TRAIN + ["--device", "cuda:1"],
        torchrun("2"),
        r"device = 'cuda:1' names one GPU, but torchrun started 2 processes; use "
        r"'cuda' \(each process trains on the GPU of its LOCAL_RANK\)",
    ),
    (
        "train under torchrun --backend mpi",
        "train",
        TRAIN + ["--backend", "mpi"],
        torchrun("2"),
        r"backend must be one of 'auto', 'nccl', 'gloo'; got 'mpi'",
    ),
    (
        "train under torchrun --backend nccl",
        "train",
        TRAIN + ["--backend", "nccl"],
        torchrun("2"),
        r"backend 'nccl' (is not available in this torch build; use --backend "
        r"gloo|needs CUDA devices, got device = 'cpu'; use --backend gloo)",
    ),
    (
        "train under torchrun with cuda_graph = true",
        "train",
        ["{tmp}/bad.toml", "--out", "{run}"],
        torchrun("2", bad_toml({"threads = 1": "threads = 1\ncuda_graph = true"})),
        r"cuda_graph = true trains one process only, got a world of 2 \(torchrun\); "
        r"set cuda_graph = false",
    ),
    (
        "train under torchrun with dropout",
        "train",
        ["{tmp}/bad.toml", "--out", "{run}"],
        torchrun(
            "2",
            bad_toml(
                {'token_format = "paired"': 'token_format = "paired"\ndropout = 0.1'}
            ),
        ),
        r"model.dropout = 0.1 draws its masks per process, so a run over 2 processes "
        r"would differ from one process's; set dropout = 0 to train with torchrun",
    ),
    (
        "train with WORLD_SIZE = 2 but no RANK",
        "train",
        TRAIN,
        torchrun("2", RANK="none"),
        r"RANK must be a non-negative integer, got 'none'; launch with torchrun "
        r"--nproc_per_node=N -m icl_lib.train CONFIG --out DIR",
    ),
    (
        "sweep with an unknown field",
        "sweep",
        SWEEP,
        sweep_file('seed = 1\n[[runs]]\nconfig = "{tiny}"\n'),
        r"sweep.toml: unknown field\(s\) \['seed'\]; accepted: \['root', 'device', "
        r"'vary', 'runs'\]",
    ),
    (
        "sweep with an unknown field of a run",
        "sweep",
        SWEEP,
        sweep_file('[[runs]]\nconfig = "{tiny}"\nseed = [1]\n'),
        r"sweep.toml: runs\[0\]: unknown field\(s\) \['seed'\]; accepted: \['config', "
        r"'seeds'\]",
    ),
    (
        "sweep with a seed the config refuses",
        "sweep",
        SWEEP,
        sweep_file('[[runs]]\nconfig = "{tiny}"\nseeds = [-1]\n'),
        r"sweep.toml: runs\[0\].seeds: seed must be a non-negative integer \(>= 0\), "
        r"got -1",
    ),
    (
        "sweep with a missing config",
        "sweep",
        SWEEP,
        sweep_file('[[runs]]\nconfig = "{tmp}/nope.toml"\n'),
        r"sweep.toml: runs\[0\] \(.*nope.toml\): config file '.*nope.toml' does not "
        r"exist",
    ),
    (
        "sweep with no runs",
        "sweep",
        SWEEP,
        sweep_file('root = "{tmp}"\n'),
        r"sweep.toml: runs must be a non-empty list of \[\[runs\]\] tables, got None",
    ),
    (
        "sweep whose configs differ beyond vary",
        "sweep",
        SWEEP,
        sweep_file(
            'vary = ["task.pool_size"]\n[[runs]]\nconfig = "{tiny}"\n[[runs]]\nconfig '
            '= "{tmp}/run.toml"\n',
            other_run=True,
        ),
        r"vary must list every field in which the runs' configs differ; run differs "
        r"from tiny_test in \['lr'\], got vary = \['task.pool_size'\]",
    ),
    (
        'sweep with device = "gpu"',
        "sweep",
        SWEEP,
        sweep_file('device = "gpu"\n[[runs]]\nconfig = "{tiny}"\n'),
        r"sweep.toml: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'",
    ),
    (
        "sweep --executor pbs",
        "sweep",
        SWEEP + ["--executor", "pbs"],
        A_SWEEP,
        r"--executor must be one of 'local', 'slurm'; got 'pbs'",
    ),
    (
        "sweep --partition on the local executor",
        "sweep",
        SWEEP + ["--partition", "gpu"],
        A_SWEEP,
        r"--partition applies to --executor slurm only, got --executor local",
    ),
    (
        "sweep --jobs 2 on slurm",
        "sweep",
        SWEEP + ["--executor", "slurm", "--jobs", "2"],
        A_SWEEP,
        r"--jobs applies to --executor local only, got --executor slurm \(Slurm's is "
        r"--array-parallelism\)",
    ),
    (
        "sweep --time 0",
        "sweep",
        SWEEP + ["--time", "0"],
        A_SWEEP,
        r"--time must be a positive integer \(>= 1\), got 0",
    ),
    (
        "sweep into a directory holding another run",
        "sweep",
        ["{tmp}/sweep.toml"],
        sweep_file(
            'root = "{tmp}"\n[[runs]]\nconfig = "{tmp}/run.toml"\n', other_run=True
        ),
        r"run run: cannot resume the run in .*run \(finished, 6 of 6 steps\): its "
        r"config differs in lr: 0.001 -> 0.002; the sweep never overwrites a run: move "
        r"it away, or give the sweep another --root",
    ),
    (
        "evaluate --prompts 0",
        "evaluate",
        EVALUATE + ["--prompts", "0"],
        no_setup,
        r"--prompts must be a positive integer \(>= 1\), got 0",
    ),
    (
        "evaluate --prompts -4",
        "evaluate",
        EVALUATE + ["--prompts", "-4"],
        no_setup,
        r"--prompts must be a positive integer \(>= 1\), got -4",
    ),
    (
        "evaluate --dims 7 beyond the run",
        "evaluate",
        EVALUATE + ["--dims", "7"],
        no_setup,
        r"--dims must be between 1 and the run's n_dims = 3, got 7",
    ),
    (
        "evaluate --dims 0",
        "evaluate",
        EVALUATE + ["--dims", "0"],
        no_setup,
        r"--dims must be a positive integer",
    ),
    (
        "evaluate --points 50",
        "evaluate",
        EVALUATE + ["--points", "50"],
        no_setup,
        r"--points must be between 1 and the run's n_points = 5, got 50",
    ),
    (
        "evaluate --points 0",
        "evaluate",
        EVALUATE + ["--points", "0"],
        no_setup,
        r"--points must be a positive integer",
    ),
    (
        "evaluate --estimators lasso,bogus",
        "evaluate",
        EVALUATE + ["--estimators", "lasso,bogus"],
        no_setup,
        r"--estimators must be one of 'least_squares', .*'relu_net_gd', 'dmmse'; got "
        r"'bogus'",
    ),
    (
        "evaluate knn.n_neighbors=0",
        "evaluate",
        EVALUATE + ["--estimators", "knn", "--estimator-option", "knn.n_neighbors=0"],
        no_setup,
        r"estimator 'knn': n_neighbors must be a positive integer \(>= 1\), got 0",
    ),
    (
        "evaluate an unknown estimator option",
        "evaluate",
        EVALUATE + ["--estimators", "lasso", "--estimator-option", "lasso.alpah=0.1"],
        no_setup,
        r"unknown option\(s\) \['alpah'\] for estimator 'lasso'; accepted: \['alpha'\]",
    ),
    (
        "evaluate --estimator-option without NAME.",
        "evaluate",
        EVALUATE + ["--estimator-option", "alpha=0.1"],
        no_setup,
        r"--estimator-option must look like NAME.KEY=VALUE, got 'alpha'",
    ),
    (
        "evaluate an option of an unknown estimator",
        "evaluate",
        EVALUATE + ["--estimator-option", "lasoo.alpha=0.1"],
        no_setup,
        r"--estimator-option must be one of 'least_squares', .*'dmmse'; got 'lasoo'",
    ),
    (
        "evaluate dmmse without pool_size",
        "evaluate",
        EVALUATE + ["--estimators", "dmmse"],
        no_setup,
        r"estimator 'dmmse' needs the option\(s\) \['pool_size'\]; accepted: "
        r"\['pool_size', 'pool_seed', 'noise_std'\]",
    ),
    (
        "evaluate --task-option of another task",
        "evaluate",
        EVALUATE + ["--task-option", "k=2"],
        no_setup,
        r"unknown option\(s\) \['k'\] for task 'linear'; accepted: \['scale'\]",
    ),
    (
        "evaluate --task cubic",
        "evaluate",
        EVALUATE + ["--task", "cubic"],
        no_setup,
        r"task.name must be one of 'linear', .*'linear_classification'; got 'cubic'",
    ),
    (
        "evaluate --shift scaled_inputs without scale",
        "evaluate",
        EVALUATE + ["--shift", "scaled_inputs"],
        no_setup,
        r"shift 'scaled_inputs' needs the option\(s\) \['scale'\]; accepted: "
        r"\['scale'\]",
    ),
    (
        "evaluate --shift-option scale=-2",
        "evaluate",
        EVALUATE + ["--shift", "scaled_outputs", "--shift-option", "scale=-2"],
        no_setup,
        r"scale must be a finite number >= 0, got -2",
    ),
    (
        "evaluate dmmse.pool_size=0",
        "evaluate",
        EVALUATE + ["--estimators", "dmmse", "--estimator-option", "dmmse.pool_size=0"],
        no_setup,
        r"estimator 'dmmse': pool_size must be a positive integer \(>= 1\), got 0",
    ),
    (
        "evaluate sparse k = 10 > d",
        "evaluate",
        EVALUATE + ["--task", "sparse_linear", "--task-option", "k=10"],
        no_setup,
        r"task at n_dims = 3: k must be at most d = 3",
    ),
    (
        "evaluate --out unwritable",
        "evaluate",
        EVALUATE + ["--out", "/sys/r.json"],
        no_setup,
        r"the directory of --out must be a directory that can be written, got '/sys'",
    ),
    (
        "evaluate --out a directory",
        "evaluate",
        EVALUATE + ["--out", "{tmp}"],
        no_setup,
        r"--out must be a file path, got '.*', which is a directory",
    ),
    (
        "evaluate a truncated model.pt",
        "evaluate",
        EVALUATE,
        truncate(MODEL_FILE),
        r"model.pt is not a readable torch file",
    ),
    (
        "evaluate a foreign model.pt",
        "evaluate",
        EVALUATE,
        foreign(MODEL_FILE),
        r"model.pt has format None; this library reads 'icl_lib/1'",
    ),
    (
        "evaluate a model.pt of text",
        "evaluate",
        EVALUATE,
        text(MODEL_FILE, "not weights\n" * 20),
        r"model.pt is not a readable torch file",
    ),
    (
        "evaluate a model.pt with a flipped byte",
        "evaluate",
        EVALUATE,
        flip_a_weight_byte(MODEL_FILE),
        r"model.pt is not the file its meta.json records \(SHA-256 .*\): it was "
        r"changed or damaged",
    ),
    (
        "evaluate a corrupt meta.json",
        "evaluate",
        EVALUATE,
        lambda run, tmp: (run / META_FILE).write_text("{"),
        r"meta.json is not valid JSON",
    ),
    (
        "evaluate a tampered meta.json",
        "evaluate",
        EVALUATE,
        edit_meta(n_dims=7),
        r"meta.json disagrees with the model it describes: .*'n_dims': 7.* in "
        r"meta.json, .*'n_dims': 3.* in the weights",
    ),
    (
        "evaluate --device cuda without CUDA",
        "evaluate",
        EVALUATE + ["--device", "cuda"],
        no_setup,
        r"device = 'cuda' but CUDA is not available here",
    ),
    (
        "evaluate --out the run's model.pt",
        "evaluate",
        EVALUATE_INTO + ["{run}/model.pt"],
        no_setup,
        r"--out must be a new file or a result file of icl_lib.evaluate, got "
        r"'.*model.pt', which is another file: it was left as it is; choose another "
        r"--out",
    ),
    (
        "evaluate --out the run's meta.json --overwrite",
        "evaluate",
        EVALUATE_INTO + ["{run}/meta.json", "--overwrite"],
        no_setup,
        r"--out must be a new file or a result file of icl_lib.evaluate, got "
        r"'.*meta.json', which is another",
    ),
    (
        "evaluate --out a FIFO",
        "evaluate",
        EVALUATE_INTO + ["{tmp}/fifo.json", "--overwrite"],
        lambda run, tmp: os.mkfifo(tmp / "fifo.json"),
        r"--out must be a new file or a result file .*, which is another",
    ),
    (
        "evaluate --out an existing result",
        "evaluate",
        EVALUATE,
        a_result,
        r"--out '.*r.json' already holds a result: pass --overwrite to replace it, or "
        r"choose another --out",
    ),
    (
        "evaluate --task-option name=...",
        "evaluate",
        EVALUATE + ["--task-option", "name=sparse_linear"],
        no_setup,
        r"--task-option must not set the name \(give it with --task\), got "
        r"'name=sparse_linear'",
    ),
    (
        "evaluate --shift-option name=...",
        "evaluate",
        EVALUATE + ["--shift", "scaled_inputs", "--shift-option", "name=noisy_outputs"],
        no_setup,
        r"--shift-option must not set the name \(give it with --shift\), got "
        r"'name=noisy_outputs'",
    ),
    (
        "evaluate --estimator-option lasso.name=ridge",
        "evaluate",
        EVALUATE + ["--estimators", "lasso", "--estimator-option", "lasso.name=ridge"],
        no_setup,
        r"estimator_options\['lasso'\] \(--estimator-option lasso.KEY=VALUE\) must not "
        r"set the name, got name = 'ridge'",
    ),
    (
        "evaluate --shift-option without --shift",
        "evaluate",
        EVALUATE + ["--shift-option", "scale=2"],
        no_setup,
        r"--shift-option needs --shift \(the shift it configures\), got \['scale=2'\]",
    ),
    (
        "evaluate --seed 2**70",
        "evaluate",
        EVALUATE + ["--seed", str(2**70)],
        no_setup,
        r"--seed must be an integer between -2\*\*63 and 2\*\*64 - 1 \(a 64-bit "
        r"seed\), got 1180591620717411303424",
    ),
    (
        "setup_cell --root without chapters",
        "setup_cell",
        ["--root", "{tmp}"],
        no_setup,
        r"--root must be the book's repository \(with notebooks/NN_\*.ipynb\), got "
        r"'.*'",
    ),
    (
        "setup_cell --root with a config without repository.url",
        "setup_cell",
        ["--root", "{tmp}"],
        lambda run, tmp: (
            (tmp / "notebooks").mkdir(),
            (tmp / "notebooks" / "01_x.ipynb").write_text("{}"),
            (tmp / "_config.yml").write_text("title: x\n"),
        ),
        r"_config.yml: repository.url must be the repository's URL \(a non-empty "
        r"string\), got None",
    ),
    (
        "student_edition --out a run directory",
        "student_edition",
        ["--out", "{run}"],
        no_setup,
        r"--out must be a new or empty folder, or one this command wrote \(with its "
        r".student_edition\), got '.*run', which holds other files: nothing was "
        r"deleted; choose another --out",
    ),
    (
        "student_edition --out a run's model.pt",
        "student_edition",
        ["--out", "{run}/model.pt"],
        no_setup,
        r"--out must be a new folder or one this command wrote, got '.*model.pt', "
        r"which is a file or a link",
    ),
    (
        "setup_cell without pyproject.toml",
        "setup_cell",
        ["--root", "{tmp}"],
        book_root(pyproject=None),
        r"pyproject.toml cannot be read as TOML \(No such file or directory\)",
    ),
    (
        "setup_cell with a pyproject.toml of bad TOML",
        "setup_cell",
        ["--root", "{tmp}"],
        book_root(pyproject="x = "),
        r"pyproject.toml cannot be read as TOML \(Invalid",
    ),
    (
        "setup_cell with dependencies that are not a list",
        "setup_cell",
        ["--root", "{tmp}"],
        book_root(pyproject='[project]\ndependencies = "torch"\n'),
        r"pyproject.toml: project.dependencies must be a list of requirement strings, "
        r"got 'torch'",
    ),
    (
        "setup_cell with a chapter that is a folder",
        "setup_cell",
        ["--root", "{tmp}"],
        book_root(chapter=None),
        r"01_x.ipynb cannot be read as a notebook \(IsADirectoryError: Is a "
        r"directory\)",
    ),
    (
        "markup of a missing file",
        "markup",
        ["{tmp}/missing.ipynb"],
        no_setup,
        r"missing.ipynb: cannot be read as a notebook \(FileNotFoundError: No such "
        r"file or directory\)",
    ),
    (
        "markup of a folder",
        "markup",
        ["{tmp}"],
        no_setup,
        r"error: .*: cannot be read as a notebook \(IsADirectoryError: Is a "
        r"directory\)",
    ),
    (
        "markup of bad JSON",
        "markup",
        ["{tmp}/bad.ipynb"],
        lambda run, tmp: (tmp / "bad.ipynb").write_text("{"),
        r"bad.ipynb: cannot be read as a notebook \(NotJSONError: Notebook does not "
        r"appear to be JSON",
    ),
    (
        "markup of JSON that is not a notebook",
        "markup",
        ["{tmp}/list.ipynb"],
        lambda run, tmp: (tmp / "list.ipynb").write_text("[1, 2]"),
        r"list.ipynb: cannot be read as a notebook",
    ),
    (
        "markup of broken markup",
        "markup",
        ["{tmp}/broken.ipynb"],
        broken_markup,
        r"broken.ipynb: cell 0 \(id 'x'\): solution-end without solution-start",
    ),
]


@pytest.mark.parametrize(
    "command, argv, setup, message",
    [
        pytest.param(
            *row[1:],
            id=row[0],
            marks=[pytest.mark.skipif(CUDA, reason="CUDA is available")]
            if "without CUDA" in row[0]
            else [],
        )
        for row in CLI_ERRORS
    ],
)
def test_a_bad_command_line_fails_with_one_line(
    command, argv, setup, message, run, tmp_path, capsys, monkeypatch
):
    (tmp_path / "a_file").write_text("")
    for name, value in getattr(setup, "env", {}).items():  # torchrun's variables
        monkeypatch.setenv(name, value)
    setup(run, tmp_path)
    before = digest(run)
    argv = [
        a.format(tiny=TINY, run=run, tmp=tmp_path, file=tmp_path / "a_file")
        for a in argv
    ]
    main = {
        "train": train_module.main,
        "evaluate": evaluate.main,
        "setup_cell": setup_cell.main,
        "student_edition": student_edition.main,
        "markup": coursework_markup.main,
        "sweep": sweep.main,
    }[command]
    code, out, err = call_cli(main, argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert digest(run) == before, "a refused command changed the run directory"
    if command == "train" and "diverge" in message:
        records = (tmp_path / "diverged" / METRICS_FILE).read_text()
        assert "NaN" not in records and "Infinity" not in records


def test_argument_syntax_errors_print_the_usage_line_then_one_error(capsys):
    code, _, err = call_cli(train_module.main, [str(TINY), "--steps", "many"], capsys)
    assert (
        code == 2
        and err.startswith("usage: ")
        and "argument --steps: invalid int value: 'many'" in err
    )


# ------------------------------------------ the table of library calls


def nan_prompt() -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = (
        torch.randn(2, 4, 3, generator=make_generator(0)),
        torch.randn(2, 4, generator=make_generator(1)),
    )
    ys[0, 1] = math.nan
    return xs, ys


def one_d_prompt() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 4, 1, generator=make_generator(0)), torch.randn(
        2, 4, generator=make_generator(1)
    )


def model_file_of_another_shape(run: Path) -> Path:
    """model.pt whose config says n_dims = 4 while its weights are for 3."""
    stored = torch.load(run / MODEL_FILE, weights_only=True)
    stored["model_config"]["n_dims"] = 4
    torch.save(stored, run / "other.pt")
    return run / "other.pt"


def _figure():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    return fig


def a_curve() -> evaluation.ErrorCurve:
    return evaluation.ErrorCurve(
        mean=np.array([1.0, 0.5]),
        low=np.array([0.9, 0.4]),
        high=np.array([1.1, 0.6]),
        n_prompts=7,
    )


def dual_form_metrics_of(**changes: object) -> dict:
    """:func:`finetuning.dual_form_metrics` of a 1-layer GPT (n_dims 2, n_points 3) on
    one validation and one test prompt of 2 demonstrations, with ``changes`` to its
    arguments."""
    model = models.make_model(
        {
            "name": "gpt",
            "n_layers": 1,
            "width": 8,
            "n_heads": 2,
            "token_format": "paired",
        },
        2,
        3,
        seed=0,
    )
    labels = torch.tensor([[1.0, -1.0, 1.0]])
    arguments = {
        "val_xs": torch.zeros(1, 3, 2),
        "val_ys": labels,
        "test_xs": torch.zeros(1, 3, 2),
        "test_ys": labels,
        "rates": [0.1],
        **changes,
    }
    return finetuning.dual_form_metrics(model, "tiny", **arguments)


# (id, call(run, tmp), expected ValueError message)
LIBRARY_ERRORS = [
    (
        "make_generator(2**70)",
        lambda run, tmp: make_generator(2**70),
        r"seed must be an integer between -2\*\*63 and 2\*\*64 - 1 \(a 64-bit seed\), "
        r"got 1180591620717411303424",
    ),
    (
        "write_result onto a run's model.pt",
        lambda run, tmp: evaluate.write_result(
            run / MODEL_FILE,
            {"transformer": a_curve()},
            run={},
            task={},
            provenance={},
            overwrite=True,
        ),
        r"path must be a new file or a result file of icl_lib.evaluate, got "
        r"'.*model.pt', which is another file",
    ),
    (
        "write_result onto a result",
        lambda run, tmp: (
            a_result(run, tmp),
            evaluate.write_result(
                tmp / "r.json",
                {"transformer": a_curve()},
                run={},
                task={},
                provenance={},
            ),
        ),
        r"path '.*r.json' already holds a result: pass overwrite=True to replace it",
    ),
    (
        "load_model on an empty model.pt",
        lambda run, tmp: (empty(MODEL_FILE)(run, tmp), checkpoints.load_model(run)),
        r"model.pt is not a readable torch file \(EOFError\)",
    ),
    (
        "load_model on a foreign model.pt",
        lambda run, tmp: (foreign(MODEL_FILE)(run, tmp), checkpoints.load_model(run)),
        r"model.pt has format None",
    ),
    (
        "load_model on a model.pt of text",
        lambda run, tmp: (text(MODEL_FILE)(run, tmp), checkpoints.load_model(run)),
        r"model.pt is not a readable torch file",
    ),
    (
        "load_model on a FIFO model.pt",
        lambda run, tmp: (fifo(MODEL_FILE)(run, tmp), checkpoints.load_model(run)),
        r"model.pt is not a regular file",
    ),
    (
        "load_model on a model.pt with a flipped byte",
        lambda run, tmp: (
            flip_a_weight_byte(MODEL_FILE)(run, tmp),
            checkpoints.load_model(run),
        ),
        r"model.pt is not the file its meta.json records",
    ),
    (
        "TrainConfig(threads=2**40)",
        lambda run, tmp: TrainConfig(threads=2**40),
        r"threads must be a positive integer <= 4096, got 1099511627776",
    ),
    (
        "load_model on a model.pt of another shape",
        lambda run, tmp: checkpoints.load_model(model_file_of_another_shape(run)),
        r"other.pt: its weights do not fit its model config .* \(Error\(s\) in loading "
        r"state_dict for GPT: .*size mismatch",
    ),
    (
        "load_model device='bogus'",
        lambda run, tmp: checkpoints.load_model(run, device="bogus"),
        r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'bogus'",
    ),
    (
        "load_model(None)",
        lambda run, tmp: checkpoints.load_model(None),
        r"name_or_path must be a checkpoint name or a path \(str or Path\), got None",
    ),
    (
        "read_metrics of a bare name that is no run",
        lambda run, tmp: checkpoints.read_metrics("no_such_run"),
        r"no checkpoint 'no_such_run': not a directory, and not a name under",
    ),
    (
        "read_metrics of a run without metrics.jsonl",
        lambda run, tmp: ((run / METRICS_FILE).unlink(), checkpoints.read_metrics(run)),
        r"metrics.jsonl does not exist \(the run has logged nothing yet\)",
    ),
    (
        "read_metrics of a corrupt metrics.jsonl",
        lambda run, tmp: (
            (run / METRICS_FILE).write_text("{\n"),
            checkpoints.read_metrics(run),
        ),
        r"metrics.jsonl is not valid JSON lines",
    ),
    (
        "read_metrics of a record with step true",
        lambda run, tmp: (
            metrics_lines('{"step": true}')(run, tmp),
            checkpoints.read_metrics(run),
        ),
        r"metrics.jsonl line 1 is not a metrics record \(a JSON object with an integer "
        r"'step' >= 0\)",
    ),
    (
        "dense_label_scale of a table without a name",
        lambda run, tmp: tasks.dense_label_scale({"scale": 2}),
        r"spec must be a task table with a 'name', got \{'scale': 2\}",
    ),
    (
        "load_meta on a corrupt meta.json",
        lambda run, tmp: (
            (run / META_FILE).write_text("not json"),
            checkpoints.load_meta(run),
        ),
        r"meta.json is not valid JSON",
    ),
    (
        "gaussian_xs(generator=None)",
        lambda run, tmp: samplers.gaussian_xs(2, 3, 4, None),
        r"generator must be a torch.Generator",
    ),
    (
        "gaussian_xs(dtype=torch.int64)",
        lambda run, tmp: samplers.gaussian_xs(
            2, 3, 4, make_generator(0), dtype=torch.int64
        ),
        r"dtype must be a floating torch dtype \(torch.float32 or torch.float64\), got "
        r"torch.int64",
    ),
    (
        "gaussian_xs(dtype='float32')",
        lambda run, tmp: samplers.gaussian_xs(
            2, 3, 4, make_generator(0), dtype="float32"
        ),
        r"dtype must be a floating torch dtype \(torch.float32 or torch.float64\), got "
        r"'float32'",
    ),
    (
        "gaussian_xs cov with a nan",
        lambda run, tmp: samplers.gaussian_xs(
            2,
            3,
            2,
            make_generator(0),
            cov=torch.tensor([[1.0, math.nan], [math.nan, 1.0]]),
        ),
        r"cov must hold finite numbers",
    ),
    (
        "exp_diagonal_cov(generator=None)",
        lambda run, tmp: samplers.exp_diagonal_cov(2, 3, None),
        r"generator must be a torch.Generator",
    ),
    (
        "exp_diagonal_cov(dtype=torch.int64)",
        lambda run, tmp: samplers.exp_diagonal_cov(
            2, 3, make_generator(0), torch.int64
        ),
        r"dtype must be a floating torch dtype",
    ),
    (
        "cov_sqrt of a 1-d tensor",
        lambda run, tmp: samplers.cov_sqrt(torch.ones(3)),
        r"cov must be a tensor of shape \(d, d\) or \(batch, d, d\), got \(3,\)",
    ),
    (
        "cov_sqrt of a nan",
        lambda run, tmp: samplers.cov_sqrt(torch.full((2, 2), math.nan)),
        r"cov must hold finite numbers",
    ),
    (
        "error_curve with no points",
        lambda run, tmp: evaluation.error_curve(
            torch.zeros(3, 0), torch.zeros(3, 0), 1.0
        ),
        r"preds and ys must hold at least one point per prompt \(n_points >= 1\), got "
        r"shape \(3, 0\)",
    ),
    (
        "lasso with d = 0",
        lambda run, tmp: baselines.lasso(
            torch.zeros(2, 3, 0), torch.zeros(2, 3), alpha=0.1
        ),
        r"xs must have at least one input dimension \(d >= 1\), got shape \(2, 3, 0\)",
    ),
    (
        "load_meta on a deeply nested meta.json",
        lambda run, tmp: (
            (run / META_FILE).write_text("[" * 100_000 + "]" * 100_000),
            checkpoints.load_meta(run),
        ),
        r"meta.json is not valid JSON \(maximum recursion depth",
    ),
    (
        "read_metrics on a deeply nested metrics.jsonl",
        lambda run, tmp: (
            (run / METRICS_FILE).write_text("[" * 100_000 + "]" * 100_000 + "\n"),
            checkpoints.read_metrics(run),
        ),
        r"metrics.jsonl is not valid JSON lines \(line 1: maximum recursion depth",
    ),
    (
        "DenseLinear().sample(xs, None)",
        lambda run, tmp: tasks.DenseLinear().sample(torch.zeros(1, 2, 3), None),
        r"generator must be a torch.Generator",
    ),
    (
        "Mixture(components=(1,))",
        lambda run, tmp: tasks.Mixture(components=(1,), weights=(1.0,)),
        r"components\[0\] must be a function class \(with sample and "
        r"zero_predictor_error",
    ),
    (
        "bootstrap_mean of a matrix",
        lambda run, tmp: evaluation.bootstrap_mean(torch.ones(3, 2)),
        "values",
    ),
    (
        "bootstrap_mean of an array",
        lambda run, tmp: evaluation.bootstrap_mean(np.ones(3)),
        "values",
    ),
    (
        "bootstrap_mean of nothing",
        lambda run, tmp: evaluation.bootstrap_mean(torch.ones(0)),
        "values",
    ),
    (
        "bootstrap_ratio of unequal shapes",
        lambda run, tmp: evaluation.bootstrap_ratio(torch.ones(3), torch.ones(4)),
        r"numerator and denominator must be tensors of one shape \(batch,\), batch >= "
        r"1, got \[\(3,\), \(4,\)\]",
    ),
    (
        "standard_error of one value",
        lambda run, tmp: evaluation.standard_error(torch.ones(1)),
        r"values must have shape \(n,\) with n >= 2 \(ddof = 1\), got \(1,\)",
    ),
    (
        "standard_error of a list",
        lambda run, tmp: evaluation.standard_error([1.0, 2.0]),
        r"values must be a 1-d torch tensor or numpy array of numbers, got list",
    ),
    (
        "standard_error ddof=-1",
        lambda run, tmp: evaluation.standard_error(np.ones(3), ddof=-1),
        r"ddof must be a non-negative integer \(>= 0\), got -1",
    ),
    (
        "mean_interval of an empty array",
        lambda run, tmp: evaluation.mean_interval(np.zeros(0), ddof=0),
        r"values must have shape \(n,\) with n >= 1 \(ddof = 0\), got \(0,\)",
    ),
    (
        "mean_interval of a matrix",
        lambda run, tmp: evaluation.mean_interval(torch.ones(3, 2)),
        r"values must have shape \(n,\) with n >= 2 \(ddof = 1\), got \(3, 2\)",
    ),
    (
        "mean_interval of strings",
        lambda run, tmp: evaluation.mean_interval(np.array(["1", "2"])),
        r"values must be a 1-d torch tensor or numpy array of numbers, got ndarray of "
        r"dtype <U1",
    ),
    (
        "mean_interval on nan",
        lambda run, tmp: evaluation.mean_interval(torch.tensor([1.0, math.nan, 2.0])),
        r"values must hold finite numbers, got 1 nan or inf entries",
    ),
    (
        "mean_interval level=1",
        lambda run, tmp: evaluation.mean_interval(np.ones(3), level=1),
        r"level must be a number in \(0, 1\), got 1",
    ),
    (
        "mean_interval level=95",
        lambda run, tmp: evaluation.mean_interval(np.ones(3), level=95),
        r"level must be a number in \(0, 1\), got 95",
    ),
    (
        "mean_interval method='z'",
        lambda run, tmp: evaluation.mean_interval(np.ones(3), method="z"),
        r"method must be one of 'normal', 't'; got 'z'",
    ),
    (
        "mean_interval method='t' of one value",
        lambda run, tmp: evaluation.mean_interval(np.ones(1), method="t", ddof=0),
        r"values must have shape \(n,\) with n >= 2 \(ddof = 1\), got \(1,\)",
    ),
    (
        "paired_interval of unequal shapes",
        lambda run, tmp: evaluation.paired_interval(torch.ones(3), torch.ones(4)),
        r"a and b must be two torch tensors or two numpy arrays of one shape \(n,\), "
        r"got Tensor \(3,\) and Tensor \(4,\)",
    ),
    (
        "paired_interval of a tensor and an array",
        lambda run, tmp: evaluation.paired_interval(torch.ones(3), np.ones(3)),
        r"a and b must be two torch tensors or two numpy arrays of one shape \(n,\), "
        r"got Tensor \(3,\) and ndarray",
    ),
    (
        "paired_interval on inf",
        lambda run, tmp: evaluation.paired_interval(
            np.array([1.0, np.inf]), np.ones(2)
        ),
        r"values must hold finite numbers, got 1 nan or inf entries",
    ),
    (
        "t_quantile p=0",
        lambda run, tmp: evaluation.t_quantile(0.0, 3),
        r"p must be a number in \(0, 1\), got 0.0",
    ),
    (
        "t_quantile df=0",
        lambda run, tmp: evaluation.t_quantile(0.9, 0),
        r"df must be a positive integer \(>= 1\), got 0",
    ),
    (
        "normal_quantile p=1",
        lambda run, tmp: evaluation.normal_quantile(1.0),
        r"p must be a number in \(0, 1\), got 1.0",
    ),
    (
        "Mixture per='row'",
        lambda run, tmp: tasks.Mixture(
            components=("linear",), weights=(1.0,), per="row"
        ),
        r"per must be one of 'prompt', 'batch'; got 'row'",
    ),
    (
        "per on a task that is not a mixture",
        lambda run, tmp: tasks.make_task("linear", per="batch"),
        r"unknown option\(s\) \['per'\] for task 'linear'; accepted: \['scale'\]",
    ),
    (
        "make_task noise_std='0.5'",
        lambda run, tmp: tasks.make_task("noisy_linear", noise_std="0.5"),
        r"noise_std must be a number >= 0, got '0.5'",
    ),
    (
        "TrainConfig task noise_std='0.5'",
        lambda run, tmp: TrainConfig(task={"name": "noisy_linear", "noise_std": "0.5"}),
        r"task: noise_std must be a number >= 0, got '0.5'",
    ),
    (
        "make_task finite_pool_linear draw='fresh'",
        lambda run, tmp: tasks.make_task("finite_pool_linear", draw="fresh"),
        r"draw must be one of 'pool', 'gaussian'; got 'fresh'",
    ),
    (
        "make_task convex without second",
        lambda run, tmp: tasks.make_task("convex", first="linear"),
        r"task 'convex' needs the option\(s\) \['second'\]; accepted: \['first', "
        r"'second', 'alpha'\]",
    ),
    (
        "make_model with a preset and another name",
        lambda run, tmp: models.make_model({"preset": "paper", "name": "lsa"}, 3, 5),
        r"model.name must be 'gpt' with a preset \(or left out\), got 'lsa'",
    ),
    (
        "make_model lsa n_points=1",
        lambda run, tmp: models.make_model({"name": "lsa"}, 3, 1),
        r"model.n_points must be >= 2 for 'lsa' \(N >= 1 examples and a query\), got 1",
    ),
    (
        "TrainConfig model = 'gpt'",
        lambda run, tmp: TrainConfig(model="gpt"),
        r"model must be a table with a 'name'",
    ),
    (
        "TrainConfig with a model preset (from_dict writes it out)",
        lambda run, tmp: TrainConfig(model={"preset": "laptop"}),
        r"model must be a table with a 'name' and no 'preset', got .* \(a preset is "
        r"written out by TrainConfig.from_dict",
    ),
    (
        "TrainConfig betas as a list",
        lambda run, tmp: TrainConfig(betas=[0.9, 0.99]),
        r"betas must be a tuple \(beta1, beta2\), got \[0.9, 0.99\] "
        r"\(TrainConfig.from_dict and replace accept a list\)",
    ),
    (
        "TrainConfig curriculum by name",
        lambda run, tmp: TrainConfig(curriculum="garg"),
        r"curriculum must be None or a Curriculum, got 'garg' \(TrainConfig.from_dict "
        r"and replace accept \['garg'\]",
    ),
    (
        "TrainConfig.replace with an unknown curriculum",
        lambda run, tmp: TrainConfig().replace(curriculum="fast"),
        r"curriculum must be one of 'garg'; got 'fast'",
    ),
    (
        "make_shift scaled_outputs(scale=0)",
        lambda run, tmp: shifts.make_shift("scaled_outputs", scale=0),
        r"scale must be a finite number > 0, got 0",
    ),
    (
        "evaluate_model shift of an unknown option",
        lambda run, tmp: evaluate.evaluate_model(
            None,
            "linear",
            n_dims=3,
            n_points=4,
            n_prompts=4,
            seed=0,
            shift={"name": "noisy_labels", "std": 0.5},
        ),
        r"unknown option\(s\) \['std'\] for shift 'noisy_labels'; accepted: "
        r"\['noise_std'\]",
    ),
    (
        "TrainConfig task pool_size=0",
        lambda run, tmp: TrainConfig(
            task={"name": "finite_pool_linear", "pool_size": 0}
        ),
        r"task: pool_size must be a positive integer \(>= 1\), got 0",
    ),
    (
        "FinitePoolLinear.pool(d=0)",
        lambda run, tmp: tasks.FinitePoolLinear().pool(0),
        r"d must be a positive integer \(>= 1\), got 0",
    ),
    (
        "dmmse pool of another d",
        lambda run, tmp: baselines.dmmse(
            *nan_prompt()[:1], torch.zeros(2, 4), torch.zeros(4, 2), 0.5
        ),
        r"pool must be a tensor of shape \(M, d\) = \(M, 3\) with M >= 1 tasks, got "
        r"\(4, 2\)",
    ),
    (
        "dmmse noise_std=0",
        lambda run, tmp: baselines.dmmse(
            torch.zeros(2, 4, 3), torch.zeros(2, 4), torch.zeros(5, 3), 0.0
        ),
        r"noise_std must be a finite number > 0, got 0.0",
    ),
    (
        "bayes_convex_sinusoid in d = 3",
        lambda run, tmp: baselines.bayes_convex_sinusoid(*nan_prompt(), 0.5, 0.05),
        r"xs must have d = 1 \(in d = 1 the sinusoid's direction is a sign, folded "
        r"into the phase\), got d = 3",
    ),
    (
        "bayes_convex_sinusoid alpha=1.5",
        lambda run, tmp: baselines.bayes_convex_sinusoid(*one_d_prompt(), 1.5, 0.05),
        r"alpha must lie in \[0, 1\], got 1.5",
    ),
    (
        "bayes_convex_sinusoid n_freq=0",
        lambda run, tmp: baselines.bayes_convex_sinusoid(
            *one_d_prompt(), 0.5, 0.05, n_freq=0
        ),
        r"n_freq must be a positive integer \(>= 1\), got 0",
    ),
    (
        "bayes_linear_sinusoid_mixture freq_max < freq_min",
        lambda run, tmp: baselines.bayes_linear_sinusoid_mixture(
            *one_d_prompt(), 0.5, 0.05, freq_min=2.0, freq_max=1.0
        ),
        r"freq_max must be >= freq_min = 2.0, got 1.0",
    ),
    (
        "bayes_linear_sinusoid_mixture noise_std=0",
        lambda run, tmp: baselines.bayes_linear_sinusoid_mixture(
            *one_d_prompt(), 0.5, 0.0
        ),
        r"noise_std must be a finite number > 0, got 0.0",
    ),
    (
        "bayes_linear_sinusoid_mixture p_linear=-0.1",
        lambda run, tmp: baselines.bayes_linear_sinusoid_mixture(
            *one_d_prompt(), -0.1, 0.05
        ),
        r"p_linear must lie in \[0, 1\], got -0.1",
    ),
    (
        "dmmse on nan",
        lambda run, tmp: baselines.dmmse(*nan_prompt(), torch.zeros(5, 3), 0.5),
        r"ys must hold finite numbers",
    ),
    (
        "least_squares on nan",
        lambda run, tmp: baselines.least_squares(*nan_prompt()),
        r"ys must hold finite numbers, got 1 nan or inf entries",
    ),
    (
        "lasso on nan",
        lambda run, tmp: baselines.lasso(*nan_prompt(), alpha=0.1),
        r"ys must hold finite numbers",
    ),
    (
        "ridge on nan",
        lambda run, tmp: baselines.ridge(*nan_prompt(), penalty=0.1),
        r"ys must hold finite numbers",
    ),
    (
        "knn on nan",
        lambda run, tmp: baselines.knn(*nan_prompt()),
        r"ys must hold finite numbers",
    ),
    (
        "averaging on nan",
        lambda run, tmp: baselines.averaging(*nan_prompt()),
        r"ys must hold finite numbers",
    ),
    (
        "relu_net_gd on nan",
        lambda run, tmp: baselines.relu_net_gd(*nan_prompt(), steps=1),
        r"ys must hold finite numbers",
    ),
    (
        "error_curve on an empty batch",
        lambda run, tmp: evaluation.error_curve(
            torch.zeros(0, 3), torch.zeros(0, 3), 1.0
        ),
        r"preds and ys must hold at least one prompt \(batch >= 1\), got an empty "
        r"batch",
    ),
    (
        "identity_minimum_loss(-3)",
        lambda run, tmp: theory.identity_minimum_loss(-3),
        r"d must be a positive integer \(>= 1\), got -3",
    ),
    (
        "lsa_loss query_cov of another d",
        lambda run, tmp: theory.lsa_loss(
            torch.eye(2), torch.eye(2), 3, query_cov=torch.eye(3)
        ),
        r"query_cov must have the shape of lam, \(2, 2\), got \(3, 3\)",
    ),
    (
        "lsa_loss query_cov not PSD",
        lambda run, tmp: theory.lsa_loss(
            torch.eye(2), torch.eye(2), 3, query_cov=-torch.eye(2)
        ),
        r"query_cov must be positive semi-definite",
    ),
    (
        "relu_net_moments second_layer of another width",
        lambda run, tmp: tasks.relu_net_moments(
            torch.zeros(2, 3, 4), torch.zeros(2, 5)
        ),
        r"second_layer must be a tensor of shape \(batch, hidden\) = \(2, 4\), got "
        r"\(2, 5\)",
    ),
    (
        "relu_net_moments on nan",
        lambda run, tmp: tasks.relu_net_moments(
            torch.full((1, 2, 2), math.nan), torch.zeros(1, 2)
        ),
        r"first_layer must hold finite numbers",
    ),
    (
        "evaluate_model knn n_neighbors=0",
        lambda run, tmp: evaluate.evaluate_model(
            None,
            "linear",
            n_dims=3,
            n_points=4,
            n_prompts=4,
            seed=0,
            estimators=("knn",),
            estimator_options={"knn": {"n_neighbors": 0}},
        ),
        r"estimator 'knn': n_neighbors must be a positive integer",
    ),
    (
        "evaluate_model unknown estimator option",
        lambda run, tmp: evaluate.evaluate_model(
            None,
            "linear",
            n_dims=3,
            n_points=4,
            n_prompts=4,
            seed=0,
            estimators=("lasso",),
            estimator_options={"lasso": {"alpah": 0.1}},
        ),
        r"unknown option\(s\) \['alpah'\] for estimator 'lasso'; accepted: "
        r"\['alpha'\]",
    ),
    (
        "train(out_dir=a file)",
        lambda run, tmp: train(load_config(TINY), run / MODEL_FILE, progress=False),
        r"out_dir must be a directory, got '.*model.pt', which is a file",
    ),
    (
        "gdpp_transformer with fewer gammas than rates",
        lambda run, tmp: dual_form.gdpp_transformer(3, [0.5, 0.5], [0.1]),
        r"learning_rates and gammas must have one entry per layer, got 2 and 1",
    ),
    (
        "gdpp_steps_prediction(gammas=0.1)",
        lambda run, tmp: dual_form.gdpp_steps_prediction(
            torch.zeros(1, 3, 2), torch.zeros(1, 3), [0.5], 0.1
        ),
        r"gammas must be a non-empty sequence of numbers, got 0.1",
    ),
    (
        "gdpp_layer_weights(gamma=nan)",
        lambda run, tmp: dual_form.gdpp_layer_weights(3, 0.5, float("nan")),
        r"gamma must be a finite number",
    ),
    (
        "finetune_key_value(layer_causal='yes')",
        lambda run, tmp: finetuning.finetune_key_value(
            models.make_model(
                {
                    "name": "gpt",
                    "n_layers": 1,
                    "width": 8,
                    "n_heads": 2,
                    "token_format": "paired",
                },
                2,
                3,
                seed=0,
            ),
            torch.zeros(1, 3, 2),
            torch.zeros(1, 3),
            0.1,
            layer_causal="yes",
        ),
        r"layer_causal must be True or False, got 'yes'",
    ),
    (
        "training_token_attention of mismatched widths",
        lambda run, tmp: finetuning.training_token_attention(
            torch.zeros(2, 3, 4), torch.zeros(2, 3, 5, 6)
        ),
        r"query must be \(batch, n_layers, width\) and training_queries",
    ),
    (
        "context_attention(n_context > positions)",
        lambda run, tmp: finetuning.context_attention(torch.zeros(1, 2, 2, 5), 6),
        r"n_context must be at most the number of positions \(5\), got 6",
    ),
    (
        "example_level of 5 tokens in pairs",
        lambda run, tmp: finetuning.example_level(torch.zeros(2, 5), 2),
        r"attention's last axis must be a multiple of tokens_per_example = 2, got \(2, "
        r"5\)",
    ),
    (
        "set_alt with empty text",
        lambda run, tmp: plotting.set_alt(_figure(), "  "),
        r"alt must be a non-empty string saying what the figure shows, got '  '",
    ),
    (
        "show(alt=3)",
        lambda run, tmp: plotting.show(_figure(), alt=3),
        r"alt must be a non-empty string saying what the figure shows, got 3",
    ),
    (
        "figure_description of an axes",
        lambda run, tmp: plotting.figure_description(_figure().axes[0]),
        r"fig must be a matplotlib Figure, got Axes",
    ),
    (
        "estimator_color of an unknown estimator",
        lambda run, tmp: plotting.estimator_color("magic"),
        r"estimator must be an id of the style table \[.*'least_squares'.*\] or one of "
        r"its labels, got 'magic'",
    ),
    (
        "sim_aou of mismatched shapes",
        lambda run, tmp: finetuning.sim_aou(
            torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 3)
        ),
        r"h_zsl, h_icl and h_other must be tensors of one shape",
    ),
    (
        "compare(generator=7)",
        lambda run, tmp: finetuning.compare(
            models.make_model(
                {
                    "name": "gpt",
                    "n_layers": 1,
                    "width": 8,
                    "n_heads": 2,
                    "token_format": "paired",
                },
                2,
                3,
                seed=0,
            ),
            torch.zeros(1, 3, 2),
            torch.zeros(1, 3),
            0.1,
            7,
        ),
        r"generator must be a torch.Generator .*, got 7",
    ),
    (
        "relaxed_linear_attention w_v of another d_in",
        lambda run, tmp: dual_form.relaxed_linear_attention(
            torch.zeros(3, 4), torch.zeros(3, 5), torch.zeros(2, 4), torch.zeros(1, 3)
        ),
        r"w_v must have shape \(d_v, d_in\) with d_in = 4, got \(3, 5\)",
    ),
    (
        "gd_transformer preconditioner of another d",
        lambda run, tmp: dual_form.gd_transformer(
            3, [0.1], preconditioner=torch.eye(2)
        ),
        r"preconditioner must have shape \(d, d\) = \(3, 3\), got \(2, 2\)",
    ),
    (
        "in_context_fit ys of another k",
        lambda run, tmp: fits.in_context_fit(
            lambda xs, ys: ys, torch.zeros(3, 1), torch.zeros(2), torch.zeros(2, 1)
        ),
        r"in_context_fit takes xs: \(k, d\), ys: \(k,\) and queries: \(m, d\) \(one k, "
        r"one d\), got xs \(3, 1\), ys \(2,\), queries \(2, 1\)",
    ),
    (
        "plot_in_context_fits without panels",
        lambda run, tmp: plotting.plot_in_context_fits(
            {}, 12, torch.zeros(5, 1), make_generator(0)
        ),
        r"pictures must name at least one panel, got none",
    ),
    (
        "plot_in_context_fits grid of one dimension",
        lambda run, tmp: plotting.plot_in_context_fits(
            {"a": (tasks.make_task("linear"), {})},
            12,
            torch.zeros(5),
            make_generator(0),
        ),
        r"grid must be a tensor of shape \(m, d\), got \(5,\)",
    ),
    (
        "evaluation.label of an unknown estimator",
        lambda run, tmp: evaluation.label("nonsense", {"lasso": "lasso (α = 0.1)"}),
        r"estimator must be an id of the style table \[.*\] or one of its labels, "
        r"got 'nonsense'",
    ),
    (
        "gaussian_xs cov of another d",
        lambda run, tmp: samplers.gaussian_xs(
            4, 3, 2, make_generator(0), cov=torch.eye(3)
        ),
        r"cov must be a tensor of shape \(d, d\) = \(2, 2\) or \(batch, d, d\) = \(4, "
        r"2, 2\), got \(3, 3\)",
    ),
    (
        "dual_form_metrics(rates=[])",
        lambda run, tmp: dual_form_metrics_of(rates=[]),
        r"rates must be a non-empty sequence of learning rates \(numbers >= 0\), got "
        r"\[\]",
    ),
    (
        "dual_form_metrics(rates=[0.1, -1])",
        lambda run, tmp: dual_form_metrics_of(rates=[0.1, -1]),
        r"rates\[1\] must be a finite number >= 0, got -1",
    ),
    (
        "dual_form_metrics test_ys of another k",
        lambda run, tmp: dual_form_metrics_of(test_ys=torch.ones(1, 2)),
        r"test_ys must be a tensor of shape \(batch, k \+ 1\) = \(1, 3\) matching "
        r"test_xs, got \(1, 2\)",
    ),
    (
        "dual_form_metrics val_xs of one demonstration",
        lambda run, tmp: dual_form_metrics_of(val_xs=torch.zeros(1, 2, 2)),
        r"val_xs must be a tensor of shape \(batch, k \+ 1, d\) with 2 <= k <= "
        r"n_points - 1 = 2 and 1 <= d <= n_dims = 2, got \(1, 2, 2\)",
    ),
    (
        "dual_form_metrics val_ys of zeros",
        lambda run, tmp: dual_form_metrics_of(val_ys=torch.zeros(1, 3)),
        r"val_ys must hold labels -1 and \+1 only, got 3 other values",
    ),
    (
        "dual_form_metrics(uniform_seed=-1.5)",
        lambda run, tmp: dual_form_metrics_of(uniform_seed=-1.5),
        r"uniform_seed must be an integer, got -1.5",
    ),
    (
        "rec2ftp_excess(n_bootstrap=0)",
        lambda run, tmp: finetuning.rec2ftp_excess(
            torch.zeros(3, dtype=torch.bool),
            torch.ones(3, dtype=torch.bool),
            torch.ones(3, dtype=torch.bool),
            n_bootstrap=0,
        ),
        r"n_bootstrap must be a positive integer \(>= 1\), got 0",
    ),
    (
        "rec2ftp_excess of 0/1 integers",
        lambda run, tmp: finetuning.rec2ftp_excess(
            torch.zeros(3, dtype=torch.bool), torch.ones(3), torch.ones(3)
        ),
        r"icl_correct must be a 1-d bool tensor \(right = True\)",
    ),
    (
        "gd_prediction with a preconditioner of the wrong shape",
        lambda run, tmp: theory.gd_prediction(
            torch.zeros(2, 4, 3), torch.zeros(2, 4), np.eye(2)
        ),
        r"preconditioner must have shape \(3, 3\) \(d of xs\), got \(2, 2\)",
    ),
    (
        "gd_prediction of a prompt without examples",
        lambda run, tmp: theory.gd_prediction(
            torch.zeros(2, 1, 3), torch.zeros(2, 1), np.eye(3)
        ),
        r"xs must hold at least one example before the query \(n_points >= 2\), "
        r"got n_points = 1",
    ),
    (
        "linearised_flow_rates(n=0)",
        lambda run, tmp: theory.linearised_flow_rates(np.eye(2), 0),
        r"n must be a positive integer \(>= 1\), got 0",
    ),
    (
        "wishart_second_moments with fewer examples than dimensions",
        lambda run, tmp: theory.wishart_second_moments(
            2, 10, 3, np.random.default_rng(0)
        ),
        r"m must be at least d = 3 \(S is then invertible\), got 2",
    ),
    (
        "wishart_second_moments with a torch generator",
        lambda run, tmp: theory.wishart_second_moments(5, 10, 3, make_generator(0)),
        r"rng must be a numpy Generator \(np.random.default_rng\(seed\)\), got ",
    ),
    (
        "off_block_size of a ReducedLSA",
        lambda run, tmp: theory.off_block_size(models.ReducedLSA(2)),
        r"model must be an icl_lib.models.LinearSelfAttention \(the full LSA\), got "
        r"ReducedLSA",
    ),
    (
        "axis_orthogonal_query of one prompt",
        lambda run, tmp: shifts.axis_orthogonal_query(torch.zeros(4, 3)),
        r"xs must be a tensor of shape \(batch, n_points, d\), got \(4, 3\)",
    ),
    (
        "least_squares_at_query with labels of another length",
        lambda run, tmp: shifts.least_squares_at_query(
            torch.zeros(2, 4, 3), torch.zeros(2, 5)
        ),
        r"ys must be a tensor of shape \(batch, n_points\) = \(2, 4\) matching xs",
    ),
    (
        "regression_slope of mismatched shapes",
        lambda run, tmp: evaluation.regression_slope(torch.zeros(3), torch.ones(4)),
        r"preds and truth must be two torch tensors or two numpy arrays of one shape "
        r"\(batch,\), got Tensor \(3,\) and Tensor \(4,\)",
    ),
    (
        "normalised_error of a tensor and an array",
        lambda run, tmp: evaluation.normalised_error(torch.zeros(3), np.ones(3)),
        r"preds and truth must be two torch tensors or two numpy arrays of one shape "
        r"\(batch,\), got Tensor \(3,\) and ndarray \(3,\)",
    ),
    (
        "normalised_error of an empty truth",
        lambda run, tmp: evaluation.normalised_error(torch.zeros(0), torch.zeros(0)),
        r"preds must have shape \(n,\) with n >= 1 \(ddof = 0\), got \(0,\)",
    ),
    (
        "without_causal_mask of a model that is no GPT",
        lambda run, tmp: models.without_causal_mask(torch.nn.Linear(2, 1)),
        r"model must be an icl_lib.models.GPT, got Linear",
    ),
    (
        "label_leak of something not callable",
        lambda run, tmp: evaluate.label_leak("gpt"),
        r"model must be callable as model\(xs, ys\) -> predictions, got str",
    ),
    (
        "label_leak(n_points=0)",
        lambda run, tmp: evaluate.label_leak(lambda xs, ys: ys, n_points=0),
        r"n_points must be a positive integer \(>= 1\), got 0",
    ),
    (
        "label_leak(seed=1.5)",
        lambda run, tmp: evaluate.label_leak(lambda xs, ys: ys, seed=1.5),
        r"seed must be an integer, got 1.5",
    ),
]


@pytest.mark.parametrize(
    "call, message", [pytest.param(*row[1:], id=row[0]) for row in LIBRARY_ERRORS]
)
def test_a_bad_call_raises_a_value_error_naming_the_argument(
    call, message, run, tmp_path
):
    with pytest.raises(ValueError, match=message):
        call(run, tmp_path)


@pytest.mark.parametrize("name", ["lsa", "reduced_lsa", "linear_transformer"])
def test_lsa_models_take_float64_prompts(name):
    model = models.make_model({"name": name}, 3, 5)
    xs, ys = (
        torch.randn(2, 5, 3, dtype=torch.float64),
        torch.randn(2, 5, dtype=torch.float64),
    )
    expected = model(xs.float(), ys.float())
    # cast to the weights' dtype, then the same
    torch.testing.assert_close(model(xs, ys), expected, rtol=0, atol=0)


def test_sparse_zero_predictor_error_counts_the_active_coordinates_only():
    """With d = 3 < k = 5 coordinates active (a curriculum's early prompts) E[f(x)^2] is
    3, not 5."""
    assert tasks.SparseLinear(k=5).zero_predictor_error(3) == 3.0


# ------------------------------------------ nothing a command did not create is deleted


@pytest.mark.parametrize("folder", ["checkpoints", "notebooks", "book", "results", "."])
def test_student_edition_refuses_the_repositorys_folders(folder, capsys, monkeypatch):
    """``--out checkpoints`` once deleted every committed run. Deleting is disarmed
    here, so that a regression fails this test instead of deleting the sources."""

    def disarmed(path, *args, **kwargs):
        raise AssertionError(f"student_edition tried to delete {path}")

    monkeypatch.setattr(student_edition.shutil, "rmtree", disarmed)
    code, _, err = call_cli(student_edition.main, ["--out", str(REPO / folder)], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith(
        "error: --out must be a new"
    ), err


def fake_sources(tmp: Path) -> Path:
    """The smallest tree ``write_student_edition`` reads: no chapter, one page, the two
    book files."""
    root = tmp / "src"
    (root / "notebooks").mkdir(parents=True)
    (root / "book").mkdir()
    (root / "book" / "page.md").write_text("# A page\n")
    (root / "_config.yml").write_text("title: x\n")
    (root / "_toc.yml").write_text("format: jb-book\n")
    return root


def test_student_edition_rewrites_only_what_it_wrote(tmp_path):
    root = fake_sources(tmp_path)
    with pytest.raises(
        ValueError,
        match=(
            r"--out must be a new folder outside the sources, got .*, inside "
            r"notebooks/"
        ),
    ):
        student_edition.write_student_edition(root / "notebooks" / "student", root=root)
    out = tmp_path / "student"
    out.mkdir()  # an empty folder is taken as it is
    student_edition.write_student_edition(out, root=root)
    (out / "book" / "page.md").write_text("stale")
    # its own output (the marker): emptied and rewritten
    student_edition.write_student_edition(out, root=root)
    assert (out / "book" / "page.md").read_text() == "# A page\n"
    # an output written before the marker existed is still its own
    (out / student_edition.MARKER).unlink()
    student_edition.write_student_edition(out, root=root)
    (out / "notes.txt").write_text("mine")
    (out / student_edition.MARKER).unlink()
    with pytest.raises(
        ValueError, match=r"which holds other files: nothing was deleted"
    ):
        student_edition.write_student_edition(out, root=root)
    assert (out / "notes.txt").read_text() == "mine"


def test_evaluate_replaces_a_result_only_when_asked(run, tmp_path, capsys):
    a_result(run, tmp_path)
    argv = [a.format(run=run, tmp=tmp_path) for a in EVALUATE] + ["--overwrite"]
    code, _, err = call_cli(evaluate.main, argv, capsys)
    assert code == 0, err
    assert evaluate.read_result(tmp_path / "r.json")[1]["provenance"]["n_prompts"] == 16


# ------------------------------------------ runs are never lost


def test_a_second_train_into_a_locked_run_directory_is_refused(run, capsys):
    """Two processes on one --out (one with --fresh) used to interleave their files: the
    run directory's lock, held here by another process, refuses the second with one line
    and leaves the directory alone."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, "
            "fcntl.LOCK_EX); f.write('4242'); f.flush(); print('held', flush=True); "
            "time.sleep(120)",
            str(run / checkpoints.LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = digest(run)
        for extra in (["--fresh"], []):
            code, _, err = call_cli(
                train_module.main,
                [str(TINY), "--out", str(run), "--no-progress", *extra],
                capsys,
            )
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert re.fullmatch(
                rf"error: {re.escape(str(run))} is in use by another training run "
                r"\(process 4242\): wait for it to end, or choose another --out "
                r"\(out_dir\)",
                err.strip(),
            ), err
            assert digest(run) == before
    finally:
        holder.kill()
        holder.wait()
    code, _, err = call_cli(
        train_module.main, [str(TINY), "--out", str(run), "--no-progress"], capsys
    )
    assert code == 0 and "already holds this finished run" in err, err
    assert not (
        run / checkpoints.LOCK_FILE
    ).exists(), "the lock file is removed when the run ends"


@pytest.mark.parametrize("folder", ["", checkpoints.IN_PROGRESS])
def test_train_refuses_the_folder_that_holds_the_runs(
    folder, tmp_path, capsys, monkeypatch
):
    # the repository's stays untouched
    monkeypatch.setattr(checkpoints, "checkpoints_root", lambda: tmp_path)
    (tmp_path / checkpoints.IN_PROGRESS).mkdir()
    code, _, err = call_cli(
        train_module.main,
        [str(TINY), "--out", str(tmp_path / folder), "--no-progress"],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(
        r"error: --out must be a run directory such as checkpoints/<name>, got '.*', "
        r"the folder that holds the runs",
        err,
    ), err
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoints.IN_PROGRESS]
    with pytest.raises(
        ValueError, match=r"out_dir must be a run directory such as checkpoints/<name>"
    ):
        train(load_config(TINY), tmp_path / folder, progress=False)


def test_a_torn_last_metrics_line_is_dropped_and_the_run_resumed(finished, tmp_path):
    out = tmp_path / "run"
    train(load_config(TINY), out, progress=False, stop_at=3)
    text = (out / METRICS_FILE).read_text()
    # a kill in the middle of the step-3 record
    (out / METRICS_FILE).write_text(text[:-9])
    assert [r["step"] for r in checkpoints.read_metrics(out)] == [2]
    result = train(load_config(TINY), out, progress=False)
    assert result.step == 6 and checkpoints.load_meta(out)["status"] == "finished"
    expected = [
        json.loads(line) for line in (finished / METRICS_FILE).read_text().splitlines()
    ]
    kept = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    # the torn step-3 record is gone; the run is kept
    assert [r["step"] for r in kept] == [2, 4, 6]
    assert [r["train_loss"] for r in kept] == [
        r["train_loss"] for r in expected if r["step"] != 3
    ]


def test_meta_json_records_the_sha256_of_the_files_it_vouches_for(finished):
    recorded = checkpoints.load_meta(finished)["sha256"]
    assert recorded == {
        name: hashlib.sha256((finished / name).read_bytes()).hexdigest()
        for name in (CHECKPOINT_FILE, MODEL_FILE)
    }
    committed = "garg_dense_linear_laptop"  # written before the record: loads as before
    assert "sha256" not in checkpoints.load_meta(committed)
    assert isinstance(checkpoints.load_model(committed), torch.nn.Module)


def test_a_checkpoint_newer_than_meta_json_resumes(tmp_path):
    """A kill between writing checkpoint.pt and meta.json leaves meta.json with the
    earlier checkpoint's SHA-256: the newer checkpoint is not refused as damaged."""
    out = tmp_path / "run"
    train(load_config(TINY), out, progress=False, stop_at=3)
    meta = (out / META_FILE).read_text()
    train(load_config(TINY), out, progress=False, stop_at=5)
    (out / META_FILE).write_text(meta)
    assert train(load_config(TINY), out, progress=False).step == 6


def test_a_finished_run_is_reported_and_left_unchanged(run, capsys):
    """With its checkpoint, and without it (the layout of the committed runs), with or
    without --stop-at."""
    for layout in ("with checkpoint", "committed layout"):
        if layout == "committed layout":
            (run / CHECKPOINT_FILE).unlink()
        before = digest(run)
        for extra in ([], ["--stop-at", "2"]):
            code, out, err = call_cli(
                train_module.main,
                [str(TINY), "--out", str(run), "--no-progress", *extra],
                capsys,
            )
            assert code == 0, err
            assert (
                "already holds this finished run (6 steps): nothing to do" in err
            ), layout
            assert (
                json.loads(out)["step"] == 6 and json.loads(out)["status"] == "finished"
            )
            assert (
                digest(run) == before
            ), f"{layout} {extra}: the finished run was changed"
        assert checkpoints.load_meta(run)["status"] == "finished"


def test_fresh_is_the_only_way_to_overwrite_a_finished_run(run, tmp_path, capsys):
    other = tiny_toml(tmp_path, {"lr = 1e-3": "lr = 2e-3"})
    (run / CHECKPOINT_FILE).unlink()
    before = digest(run)
    assert (
        call_cli(
            train_module.main, [str(other), "--out", str(run), "--no-progress"], capsys
        )[0]
        == 2
    )
    assert digest(run) == before
    code, _, err = call_cli(
        train_module.main,
        [str(other), "--out", str(run), "--no-progress", "--fresh"],
        capsys,
    )
    assert code == 0, err
    assert checkpoints.load_meta(run)["config"]["lr"] == 2e-3


@pytest.mark.parametrize("killed_after", ["the last checkpoint.pt", "model.pt"])
def test_a_rerun_after_a_kill_at_the_end_finishes_the_run(killed_after, finished, run):
    """The files on disk as a kill -9 leaves them: checkpoint.pt at the last step, then
    model.pt, then meta.json."""
    meta = json.loads((run / META_FILE).read_text())
    (run / META_FILE).write_text(
        json.dumps({**meta, "status": "running", "steps_done": 3})
    )
    if killed_after == "the last checkpoint.pt":
        (run / MODEL_FILE).unlink()
    result = train(load_config(TINY), run, progress=False)
    assert result.step == 6 and not result.already_finished
    assert (
        checkpoints.load_meta(run)["status"] == "finished"
        and checkpoints.load_meta(run)["steps_done"] == 6
    )
    expected = torch.load(finished / MODEL_FILE, weights_only=True)["state_dict"]
    stored = torch.load(run / MODEL_FILE, weights_only=True)["state_dict"]
    assert all(torch.equal(expected[k], stored[k]) for k in expected)
    assert (run / METRICS_FILE).read_text() == (finished / METRICS_FILE).read_text()


def test_temporary_files_left_by_a_kill_are_removed(tmp_path):
    out = tmp_path / "run"
    train(load_config(TINY), out, progress=False, stop_at=3)
    for name in (".checkpoint.pt.abc123.tmp", ".model.pt.x.tmp", ".meta.json.y.tmp"):
        (out / name).write_bytes(b"partial")
    train(load_config(TINY), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        CHECKPOINT_FILE,
        META_FILE,
        METRICS_FILE,
        MODEL_FILE,
    ]


def test_stop_at_reports_the_step_it_stopped_at(tmp_path, capsys):
    # metrics at even steps only
    config = tiny_toml(tmp_path, {"eval_every = 3": "eval_every = 0"})
    code, out, err = call_cli(
        train_module.main,
        [
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "60",
            "--stop-at",
            "57",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["step"], summary["status"], summary["metrics_step"]) == (
        57,
        "stopped",
        56,
    )


def test_divergence_keeps_the_last_good_checkpoint_and_writes_no_nan(tmp_path):
    out = tmp_path / "run"

    # the metrics of step 6 are not finite, as a diverging loss makes them
    def diverge(step, model):
        return {"probe": math.nan} if step == 6 else {}

    with pytest.raises(
        FloatingPointError,
        match=r"probe not finite at logged step 6 .* the last good checkpoint, "
        r"step 3, stays in",
    ):
        train(load_config(TINY), out, progress=False, hooks=[diverge])
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["step"] == 3
    assert not (out / MODEL_FILE).exists()
    meta = checkpoints.load_meta(out)
    assert meta["status"] == "diverged" and meta["steps_done"] == 3
    text = (out / METRICS_FILE).read_text()
    assert (
        "NaN" not in text
        and max(json.loads(line)["step"] for line in text.splitlines()) == 4
    )


def test_sigint_exits_130_with_how_to_resume_and_no_traceback(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "icl_lib.train",
        str(TINY),
        "--out",
        str(out),
        "--steps",
        "1000000",
        "--no-progress",
    ]
    # A job started in the background by a non-interactive shell (as CI may run the
    # suite) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler: give the command the default disposition back.
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while (
            not (out / META_FILE).exists()
            and time.monotonic() < deadline
            and process.poll() is None
        ):
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: interrupted; ")
    assert err.strip().endswith("run the same command to resume")
    assert checkpoints.load_meta(out)["status"] == "interrupted"


def test_sigint_while_starting_is_one_line(tmp_path):
    """A Ctrl-C while the command still imports torch (seconds): exit 130 and one line,
    no traceback."""
    # "ready" is printed as soon as the command has installed its start-up handler,
    # before it imports torch: the signal then arrives inside the imports however slow
    # the machine (a fixed sleep raced a loaded CI machine).
    start = (
        "import runpy, sys; from icl_lib import interrupts; quiet_start = "
        "interrupts.quiet_start; interrupts.quiet_start = lambda prog: "
        "(quiet_start(prog), print('ready', flush=True)); sys.argv = ['icl_lib.train', "
        "*sys.argv[1:]]; runpy.run_module('icl_lib.train', run_name='__main__', "
        "alter_sys=True)"
    )
    command = [
        sys.executable,
        "-c",
        start,
        str(TINY),
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: interrupted"), err


def test_a_second_sigint_while_marking_leaves_meta_json_interrupted(
    tmp_path, monkeypatch
):
    """Two quick Ctrl-Cs: the second arrives while the interrupted run marks its
    meta.json; it must not stop that."""
    out = tmp_path / "run"
    load_meta = checkpoints.load_meta
    sent: list[str] = []

    # at the last step's evaluation, when meta.json says "running" (step 3's checkpoint)
    def first(step, model):
        if step == 6:
            sent.append("first")
            os.kill(os.getpid(), signal.SIGINT)

    def second(path):  # as the interrupted run's mark() reads meta.json
        if sent == ["first"]:
            sent.append("second")
            os.kill(os.getpid(), signal.SIGINT)
        return load_meta(path)

    monkeypatch.setattr(checkpoints, "load_meta", second)
    # also where the suite runs with it ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(load_config(TINY), out, progress=False, hooks=[first])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent == ["first", "second"]
    meta = load_meta(out)
    assert meta["status"] == "interrupted" and meta["steps_done"] == 3
