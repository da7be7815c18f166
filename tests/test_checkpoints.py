"""Checkpoints: atomic writes, weights_only loading, run metadata, loading models by
name or path."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import pytest
import torch

from icl_lib import checkpoints, evaluate
from icl_lib.checkpoints import (
    CHECKPOINT_FILE,
    META_FILE,
    METRICS_FILE,
    MODEL_FILE,
    atomic_write,
    load_file,
    load_meta,
    load_model,
    save_atomic,
)
from icl_lib.devices import make_generator
from icl_lib.train import TrainConfig, train


def tiny_config(**changes) -> TrainConfig:
    base = dict(
        model={
            "name": "gpt",
            "n_layers": 1,
            "width": 16,
            "n_heads": 2,
            "token_format": "interleaved",
        },
        n_dims=3,
        n_points=5,
        batch_size=16,
        steps=4,
        warmup_steps=1,
        log_every=2,
        eval_every=2,
        eval_batch=32,
        checkpoint_every=2,
        device="cpu",
        threads=1,
    )
    return TrainConfig.from_dict({**base, **changes})


def prompts(seed: int = 0):
    g = make_generator(seed)
    return torch.randn(8, 5, 3, generator=g), torch.randn(8, 5, generator=g)


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_files(tmp_path):
    path = tmp_path / "state.pt"
    save_atomic({"x": torch.arange(3)}, path)

    def half_then_fail(file):
        file.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert torch.equal(load_file(path)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


class Custom:
    """Stands for any pickled object that is not plain data."""


def test_loading_is_weights_only(tmp_path):
    torch.save({"obj": Custom()}, tmp_path / "pickled.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_file(tmp_path / "pickled.pt")


def test_a_run_directory_records_what_produced_it(tmp_path):
    config = tiny_config(seed=3)
    result = train(
        config,
        tmp_path / "run",
        progress=False,
        command="python -m icl_lib.train configs/x.toml",
    )
    meta = load_meta(tmp_path / "run")
    assert meta["config"] == config.to_dict() and meta["seed"] == 3
    assert meta["command"] == "python -m icl_lib.train configs/x.toml"
    assert meta["git_commit"] == "unknown" or len(meta["git_commit"]) == 40
    assert meta["device"] == "cpu" and meta["torch_version"] == torch.__version__
    assert meta["steps_done"] == meta["steps"] == 4 and meta["status"] == "finished"
    assert meta["wall_time_s"] > 0 and meta["n_parameters"] > 0
    assert meta["final_metrics"]["step"] == 4
    assert (
        meta["final_metrics"]["eval_normalized_error"]
        == result.metrics["eval_normalized_error"]
    )
    assert list(meta) == [
        "name",
        "command",
        "config",
        "seed",
        "git_commit",
        "git_dirty",
        "device",
        "device_name",
        "torch_version",
        "python_version",
        "cpu_model",
        "cpu_capability",
        "blas",
        "blas_instructions",
        "threads",
        "n_parameters",
        "steps",
        "status",
        "steps_done",
        "wall_time_s",
        "final_metrics",
        "updated",
        "sha256",
    ]  # the keys of the committed runs' meta.json, and the files' SHA-256
    assert list(meta["sha256"]) == [CHECKPOINT_FILE, MODEL_FILE]
    # every file loads with weights_only=True
    for name in (CHECKPOINT_FILE, MODEL_FILE):
        torch.load(tmp_path / "run" / name, weights_only=True)


def test_training_and_evaluation_share_one_provenance(tmp_path):
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=checkpoints.repository_root(),
        capture_output=True,
        text=True,
    )
    expected = {
        "git_commit": done.stdout.strip() if done.returncode == 0 else "unknown",
        "device": "cpu",
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    provenance = checkpoints.provenance(torch.device("cpu"))
    assert list(provenance) == [
        "git_commit",
        "git_dirty",
        "device",
        "device_name",
        "torch_version",
        "python_version",
        "cpu_model",
        "cpu_capability",
        "blas",
        "blas_instructions",
    ]
    assert {key: provenance[key] for key in expected} == expected
    train(tiny_config(steps=2), tmp_path / "run", progress=False)
    assert (
        evaluate.main(
            [
                str(tmp_path / "run"),
                "--task",
                "linear",
                "--prompts",
                "8",
                "--estimators",
                "",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "result.json"),
            ]
        )
        == 0
    )
    meta = load_meta(tmp_path / "run")
    result = evaluate.read_result(tmp_path / "result.json")[1]["provenance"]
    for key, value in provenance.items():
        assert meta[key] == result[key] == value, key


def test_load_model_rebuilds_the_trained_model_by_path_and_by_name(
    tmp_path, monkeypatch
):
    result = train(tiny_config(), tmp_path / "store" / "tiny_run", progress=False)
    xs, ys = prompts()
    with torch.no_grad():
        expected = result.model(xs, ys)
        loaded = load_model(tmp_path / "store" / "tiny_run")
        assert not loaded.training
        torch.testing.assert_close(loaded(xs, ys), expected, rtol=0, atol=0)
        torch.testing.assert_close(
            load_model(tmp_path / "store" / "tiny_run" / MODEL_FILE)(xs, ys),
            expected,
            rtol=0,
            atol=0,
        )
        monkeypatch.setattr(checkpoints, "checkpoints_root", lambda: tmp_path / "store")
        torch.testing.assert_close(
            load_model("tiny_run")(xs, ys), expected, rtol=0, atol=0
        )
        assert load_meta("tiny_run")["status"] == "finished"
        by_name = checkpoints.read_metrics("tiny_run")
    by_path = checkpoints.read_metrics(tmp_path / "store" / "tiny_run")
    lines = (tmp_path / "store" / "tiny_run" / METRICS_FILE).read_text().splitlines()
    assert (
        by_name == by_path == [json.loads(line) for line in lines] and len(by_path) > 0
    )
    # the error lists what is available
    with pytest.raises(ValueError, match="tiny_run"):
        load_model("no_such_run")


def test_load_model_reads_the_training_checkpoint_of_an_unfinished_run(tmp_path):
    stopped = train(tiny_config(), tmp_path / "run", progress=False, stop_at=2)
    assert not (tmp_path / "run" / MODEL_FILE).exists()
    xs, ys = prompts(1)
    with torch.no_grad():
        torch.testing.assert_close(
            load_model(tmp_path / "run")(xs, ys), stopped.model(xs, ys), rtol=0, atol=0
        )


def test_committed_checkpoints_respect_the_size_limits_and_name_their_command():
    root = checkpoints.checkpoints_root()
    if not root.is_dir():
        pytest.skip("no committed checkpoints yet")
    total = 0
    for directory in (
        p for p in root.iterdir() if p.is_dir() and p.name != checkpoints.IN_PROGRESS
    ):
        sizes = {p.name: p.stat().st_size for p in directory.rglob("*") if p.is_file()}
        assert (
            sum(sizes.values()) <= 5 * 2**20
        ), f"{directory.name} is over 5 MB: {sizes}"
        total += sum(sizes.values())
        meta = json.loads((directory / META_FILE).read_text())
        assert meta["command"].startswith(
            "python -m icl_lib.train configs/"
        ), directory.name
        assert meta["status"] == "finished", directory.name
        assert (
            Path(checkpoints.repository_root()) / meta["command"].split()[3]
        ).is_file(), meta["command"]
    # 5 MB a run keeps a clone small; the total leaves room for chapter 6's twins and
    # second seeds (about 1.6 MB each) on top of the 40 runs committed before them
    assert total <= 56 * 2**20, f"committed runs: {total / 2**20:.1f} MiB"


def test_runs_in_progress_hold_a_resume_checkpoint_and_are_not_loadable_by_name():
    """A run that needs another session waits in checkpoints/in_progress/<name> with its
    checkpoint.pt."""
    waiting = checkpoints.checkpoints_root() / checkpoints.IN_PROGRESS
    for directory in (
        (p for p in waiting.iterdir() if p.is_dir()) if waiting.is_dir() else ()
    ):
        meta = json.loads((directory / META_FILE).read_text())
        assert (
            meta["status"] != "finished" and (directory / "checkpoint.pt").is_file()
        ), directory.name
        assert (
            sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
            <= 5 * 2**20
        ), directory.name
        assert meta["command"].startswith(
            "python -m icl_lib.train configs/"
        ), directory.name
        with pytest.raises(ValueError, match="no checkpoint"):
            checkpoints.resolve(directory.name)


def test_committed_dense_linear_model_learned_in_context():
    """The committed laptop model loads by name and predicts dense linear functions from
    examples."""
    if not (checkpoints.checkpoints_root() / "garg_dense_linear_laptop").is_dir():
        pytest.skip("checkpoints/garg_dense_linear_laptop is not committed")
    from icl_lib.devices import make_generator
    from icl_lib.samplers import gaussian_xs
    from icl_lib.tasks import DenseLinear

    model = load_model("garg_dense_linear_laptop")
    meta = checkpoints.load_meta("garg_dense_linear_laptop")
    d, n_points = meta["config"]["n_dims"], meta["config"]["n_points"]
    generator = make_generator(123)
    xs = gaussian_xs(512, n_points, d, generator)
    ys = DenseLinear().sample(xs, generator).ys
    with torch.no_grad():
        errors = ((model(xs, ys) - ys) ** 2).mean(0) / d
    assert (
        errors[0] > 0.8
    ), f"with no example the model cannot beat the zero predictor, got {errors[0]:.3f}"
    assert errors[2 * d] < 0.06, (
        "at k = 2d the trained model should be near least squares (0), got "
        f"{errors[2 * d]:.3f}"
    )
    recorded = meta["final_metrics"]["eval_error_by_position"][2 * d]
    assert (
        abs(float(errors[2 * d]) - recorded) < 0.02
    ), f"error at k = 2d {errors[2 * d]:.4f} vs recorded {recorded:.4f}"
