"""Replaying a committed run: its recorded command re-run up to its first logged step,
and how exactly it must match.

Float32 training is bit-identical only for the same kernels: the same CPU model, the
same instruction set of torch's vectorised kernels
(``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY`` can lower),
the same BLAS build and torch version, and the run's thread count (which its command
pins). Where this machine has the kernels a run was recorded with
(:func:`kernels_match`) a replay must equal the record; elsewhere it must agree to
:func:`replay_rtol`. ``tests/test_reproduce_checkpoints.py`` replays every committed
run; ``tools/record_replay_kernels.py`` stamps the runs recorded before ``meta.json``
held their kernels.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from icl_lib import checkpoints
from icl_lib.devices import cpu_kernels

# What a metric record holds that no float32 kernel computes (the schedule's and the
# curriculum's), and what it does.
EXACT_KEYS = ("lr", "n_dims", "n_points")
FLOAT_KEYS = ("train_loss", "train_normalized_error")
# For a run recorded before meta.json held its kernels: the kernels on which its first
# logged step was later replayed bit for bit, with the step, commit and date of that
# replay.
REPLAYED_ON = "replayed_bit_for_bit_on"


def kernels_here() -> dict[str, str]:
    """The kernels of this machine that decide bit-exactness:
    :func:`icl_lib.devices.cpu_kernels` and torch's version."""
    return {**cpu_kernels(), "torch_version": torch.__version__}


def kernels_match(meta: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether this machine has the kernels ``meta``'s run was recorded (or bit-exactly
    replayed) with; if not, why. A run recorded over several processes (torchrun) is
    replayed in one: its sums ran in another order."""
    if meta.get("world_size", 1) > 1:
        return (
            False,
            f"recorded over {meta['world_size']} processes (torchrun), replayed in one",
        )
    recorded = meta.get(REPLAYED_ON, meta)
    here = kernels_here()
    missing = sorted(key for key in here if key not in recorded)
    if missing:
        return False, f"the run does not record {', '.join(missing)}"
    differing = [
        f"{key} {recorded[key]!r}, here {here[key]!r}"
        for key in here
        if recorded[key] != here[key]
    ]
    return not differing, "; ".join(differing)


def replay_rtol(steps: int) -> float:
    """The relative tolerance of a replay on other kernels after ``steps`` steps:
    ``steps * 2**-23``.

    Other kernels sum in another order, which changes a float32 reduction by a few units
    of roundoff (u = 2^-24) relative. Over the start of training that a replay covers (a
    hundred to a few hundred steps, at a learning rate still warming up) these
    differences add up step by step rather than grow, so two roundoffs per step bound
    them; a change of the data, the model or the schedule moves the loss by orders of
    magnitude more.
    """
    return steps * 2.0**-23


def rerun_argv(command: str, out_dir: str | Path, steps: int) -> list[str]:
    """The recorded training command's arguments (``python -m icl_lib.train ...``, or
    ``torchrun ... -m icl_lib.train ...`` replayed in one process) with ``--out``
    replaced and ``--stop-at steps`` added."""
    words = shlex.split(command)
    start = 3 if words[:3] == ["python", "-m", "icl_lib.train"] else None
    if (
        words[:1] == ["torchrun"]
        and "icl_lib.train" in words
        and words[words.index("icl_lib.train") - 1] == "-m"
    ):
        start = words.index("icl_lib.train") + 1
    if start is None or "--out" not in words:
        raise ValueError(f"not a training command with --out: {command!r}")
    argv = words[start:]
    argv[argv.index("--out") + 1] = str(out_dir)
    return [*argv, "--stop-at", str(steps), "--no-progress", "--device", "cpu"]


def replay_first_log(
    name: str, out_dir: str | Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The committed run ``name``'s first logged training record, and the same record of
    its replay into ``out_dir``.

    Run it from the repository root: the recorded commands name their configs relative
    to it.
    """
    from icl_lib import (
        train,
    )  # the loop imports this package's modules: import it only when replaying

    committed = next(
        r
        for r in checkpoints.read_metrics(checkpoints.checkpoints_root() / name)
        if "train_loss" in r
    )
    steps = committed["step"]
    if (
        train.main(rerun_argv(checkpoints.load_meta(name)["command"], out_dir, steps))
        != 0
    ):
        raise RuntimeError(f"the replay of {name} failed")
    rerun = next(r for r in checkpoints.read_metrics(out_dir) if r["step"] == steps)
    return committed, rerun
