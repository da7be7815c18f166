"""One run over two processes (``torchrun``, gloo on the CPU): the run one process
trains at the same batch, to float rounding; a stopped run resumes as if it had not
stopped, with the same or another world size; only rank 0 writes.

Three torchrun launches of a 300-step tiny GPT (about a minute of CPU in all, most of it
starting processes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from icl_lib.checkpoints import (
    CHECKPOINT_FILE,
    META_FILE,
    METRICS_FILE,
    MODEL_FILE,
    load_model,
    repository_root,
)
from icl_lib.train import load_config, train

REPO = repository_root()
TIMING_KEYS = {"steps_per_s", "wall_s"}
STEPS, STOP = 300, 150
CONFIG = f"""
n_dims = 3
n_points = 5
batch_size = 16
steps = {STEPS}
lr = 3e-3
warmup_steps = 20
log_every = 10
eval_every = 100
eval_batch = 64
checkpoint_every = 100
device = "cpu"
threads = 1

[model]
name = "gpt"
n_layers = 1
width = 16
n_heads = 2
token_format = "paired"

[task]
name = "linear"
"""


def torchrun(config: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m icl_lib.train config --out out
    ...`` (a free port of its own)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "icl_lib.train",
        str(config),
        "--out",
        str(out),
        "--no-progress",
        *args,
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def without_timing(history: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The runs, trained once: over two processes whole, stopped at STOP (kept) and
    resumed; in one process."""
    tmp = tmp_path_factory.mktemp("distributed")
    config = tmp / "tiny.toml"
    config.write_text(CONFIG)
    whole = torchrun(config, tmp / "two")
    torchrun(config, tmp / "stopped", "--stop-at", str(STOP))
    shutil.copytree(tmp / "stopped", tmp / "stopped_then_one")
    torchrun(config, tmp / "stopped")
    one = train(load_config(config), tmp / "one", progress=False)
    return {"tmp": tmp, "config": config, "whole": whole, "one": one}


def assert_close_runs(a: list[dict], b: list[dict], rtol: float) -> None:
    """The same records (steps, keys, learning rates) with losses equal to ``rtol``."""
    assert [r["step"] for r in a] == [r["step"] for r in b] and [
        r.keys() for r in a
    ] == [r.keys() for r in b]
    for x, y in zip(a, b):
        assert x["lr"] == y["lr"]
        for key in (
            "train_loss",
            "train_normalized_error",
            "eval_loss",
            "eval_normalized_error",
        ):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=rtol), (x["step"], key)


def test_two_processes_train_the_run_one_process_trains_at_the_same_batch(runs):
    two, one = runs["tmp"] / "two", runs["tmp"] / "one"
    assert len(records(two)) == STEPS // 10
    # 1.3e-7 on the machine that wrote this test
    assert_close_runs(records(one), records(two), rtol=1e-4)
    weights_two = load_model(two).state_dict()
    weights_one = runs["one"].model.state_dict()
    for (
        name,
        tensor,
        # AdamW divides by sqrt(v): a gradient near 0 turns rounding into a step
    ) in weights_one.items():
        torch.testing.assert_close(weights_two[name], tensor, rtol=1e-3, atol=1e-3)
    meta = json.loads((two / META_FILE).read_text())
    assert (
        meta["world_size"] == 2
        and meta["backend"] == "gloo"
        and meta["status"] == "finished"
    )
    assert meta["command"].startswith("torchrun --nproc_per_node=2 -m icl_lib.train ")
    # one process: meta.json as before
    assert "world_size" not in json.loads((one / META_FILE).read_text())


def test_only_rank_0_writes_the_run_directory_and_reports(runs):
    two = runs["tmp"] / "two"
    assert sorted(p.name for p in two.iterdir()) == sorted(
        [CHECKPOINT_FILE, META_FILE, METRICS_FILE, MODEL_FILE]
    )
    steps = [r["step"] for r in records(two)]
    assert steps == sorted(set(steps))  # each record once: one process appended
    summaries = [
        line for line in runs["whole"].stdout.splitlines() if line.startswith("{")
    ]
    assert len(summaries) == 1 and json.loads(summaries[0])["step"] == STEPS


def test_a_stopped_run_resumes_over_two_processes_as_if_it_had_not_stopped(runs):
    two, stopped = runs["tmp"] / "two", runs["tmp"] / "stopped"
    assert without_timing(records(stopped)) == without_timing(records(two))
    reference = torch.load(two / CHECKPOINT_FILE, weights_only=True)
    resumed = torch.load(stopped / CHECKPOINT_FILE, weights_only=True)
    for key in ("model", "optimizer", "generator", "rng_cpu", "totals"):
        flat_a, flat_b = (
            torch.utils._pytree.tree_flatten(reference[key])[0],
            torch.utils._pytree.tree_flatten(resumed[key])[0],
        )
        assert all(
            torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            for a, b in zip(flat_a, flat_b)
        ), key


def test_a_run_stopped_over_two_processes_resumes_in_one(runs):
    out = runs["tmp"] / "stopped_then_one"
    assert json.loads((out / META_FILE).read_text())["steps_done"] == STOP
    # world size is not part of the run
    result = train(load_config(runs["config"]), out, progress=False)
    assert result.step == STEPS
    assert (
        without_timing(records(out))[: STOP // 10]
        == without_timing(records(runs["tmp"] / "two"))[: STOP // 10]
    )
    assert_close_runs(records(runs["tmp"] / "one"), records(out), rtol=1e-4)


def test_a_torchrun_command_replays_in_one_process():
    from icl_lib.replay import rerun_argv

    command = (
        "torchrun --nproc_per_node=2 -m icl_lib.train configs/x.toml --out "
        "checkpoints/x"
    )
    assert rerun_argv(command, "tmp/x", 10) == [
        "configs/x.toml",
        "--out",
        "tmp/x",
        "--stop-at",
        "10",
        "--no-progress",
        "--device",
        "cpu",
    ]
