"""The committed chapter-4 checkpoints reproduce from the command recorded in their meta.json.

Each test re-runs the recorded command for its first 50 steps (``--stop-at 50``) into a temporary directory and
compares the training metrics logged at step 50 with the committed ``metrics.jsonl``: on a CPU with the run's thread
count the loop is bit-identical, so the numbers must be equal, not merely close."""

from __future__ import annotations

import shlex

import pytest

from icl_lib import checkpoints, train

RUNS = ("garg_dense_linear_laptop", "garg_sparse_linear_laptop", "garg_relu_net_laptop",
        "garg_dense_linear_laptop_interleaved_curriculum")
STEPS = 50


def rerun_argv(command: str, out_dir: str) -> list[str]:
    """The recorded command's arguments with ``--out`` replaced and ``--stop-at`` added."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "icl_lib.train"], f"not a training command: {command}"
    argv = words[3:]
    index = argv.index("--out")
    argv[index + 1] = out_dir
    return [*argv, "--stop-at", str(STEPS), "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("name", RUNS)
def test_the_first_steps_of_a_committed_run_reproduce_bit_for_bit(name, tmp_path, monkeypatch):
    directory = checkpoints.checkpoints_root() / name
    if not directory.is_dir():
        pytest.skip(f"{name} is not committed")
    meta = checkpoints.load_meta(name)
    assert meta["device"] == "cpu", "only CPU runs are bit-identical on this machine"
    monkeypatch.chdir(checkpoints.repository_root())  # the command names its config relative to the repository
    assert train.main(rerun_argv(meta["command"], str(tmp_path / name))) == 0
    committed = next(r for r in checkpoints.read_metrics(directory) if r["step"] == STEPS)
    rerun = next(r for r in checkpoints.read_metrics(tmp_path / name) if r["step"] == STEPS)
    for key in ("train_loss", "train_normalized_error", "lr", "n_dims", "n_points"):
        assert rerun[key] == committed[key], f"{name}: {key} at step {STEPS} is {rerun[key]}, committed {committed[key]}"
