"""Every committed checkpoint reproduces from the command recorded in its meta.json.

Each test re-runs a run's recorded command up to the first step its ``metrics.jsonl`` logs (``--stop-at``) into a
temporary directory and compares the training metrics logged there with the committed ones: on a CPU with the run's
thread count the loop is bit-identical, so the numbers must be equal, not merely close. Runs that differ from another
committed run only by ``--seed`` are covered by the seed-0 run."""

from __future__ import annotations

import re
import shlex

import pytest

from icl_lib import checkpoints, train

RUNS = sorted(meta.parent.name for meta in checkpoints.checkpoints_root().glob("*/meta.json")
              if not re.search(r"_seed[1-9]\d*$", meta.parent.name))


def rerun_argv(command: str, out_dir: str, steps: int) -> list[str]:
    """The recorded command's arguments with ``--out`` replaced and ``--stop-at`` added."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "icl_lib.train"], f"not a training command: {command}"
    argv = words[3:]
    index = argv.index("--out")
    argv[index + 1] = out_dir
    return [*argv, "--stop-at", str(steps), "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("name", RUNS)
def test_the_first_steps_of_a_committed_run_reproduce_bit_for_bit(name, tmp_path, monkeypatch):
    directory = checkpoints.checkpoints_root() / name
    meta = checkpoints.load_meta(name)
    assert meta["device"] == "cpu", "only CPU runs are bit-identical on this machine"
    monkeypatch.chdir(checkpoints.repository_root())  # the command names its config relative to the repository
    committed = next(r for r in checkpoints.read_metrics(directory) if "train_loss" in r)
    steps = committed["step"]
    assert train.main(rerun_argv(meta["command"], str(tmp_path / name), steps)) == 0
    rerun = next(r for r in checkpoints.read_metrics(tmp_path / name) if r["step"] == steps)
    for key in ("train_loss", "train_normalized_error", "lr", "n_dims", "n_points"):
        assert rerun[key] == committed[key], f"{name}: {key} at step {steps} is {rerun[key]}, committed {committed[key]}"
