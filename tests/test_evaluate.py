"""icl_lib.evaluate: error curves of a model and baselines on the same prompts, result
files, the command line.

References are independent of the code under test: numpy least squares per prompt and
prefix, a model that predicts exactly (zero error) and one that predicts 0 (normalised
error 1 on average), hand-built files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from icl_lib import evaluate
from icl_lib.devices import make_generator
from icl_lib.evaluation import ErrorCurve
from icl_lib.samplers import gaussian_xs
from icl_lib.tasks import DenseLinear
from icl_lib.train import TrainConfig, train


class ZeroModel(nn.Module):
    """Predicts 0 at every position."""

    predicts_every_position = True

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(ys) + 0 * self.dummy


class CheatingModel(ZeroModel):
    """Reads the label of the query itself: a 'model' with zero error, as a leaking mask
    would give."""

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return ys.clone()


def test_curves_of_model_and_baselines_on_the_same_prompts_match_numpy_least_squares():
    d, n, batch, seed = 3, 6, 64, 5
    curves = evaluate.evaluate_model(
        ZeroModel(),
        "linear",
        n_dims=d,
        n_points=n,
        n_prompts=batch,
        seed=seed,
        estimators=("least_squares",),
    )
    assert list(curves) == ["transformer", "least_squares"]
    # Rebuild the prompts independently: the same generator calls as the documented
    # sampling.
    g = make_generator(seed)
    xs = gaussian_xs(batch, n, d, g)
    ys = DenseLinear().sample(xs, g).ys
    x64, y64 = xs.double().numpy(), ys.double().numpy()
    errors = np.zeros((batch, n))
    for b in range(batch):
        for k in range(1, n):
            w = np.linalg.lstsq(x64[b, :k], y64[b, :k], rcond=None)[0]
            errors[b, k] = (x64[b, k] @ w - y64[b, k]) ** 2
        errors[b, 0] = y64[b, 0] ** 2
    np.testing.assert_allclose(
        curves["least_squares"].mean, errors.mean(0) / d, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        curves["transformer"].mean, (y64**2).mean(0) / d, rtol=1e-5
    )
    assert curves["transformer"].n_prompts == batch
    assert np.all(curves["least_squares"].low <= curves["least_squares"].mean + 1e-12)


def test_zero_predictor_scores_about_one_and_a_cheater_zero_under_every_shift():
    from icl_lib.shifts import SHIFTS

    for name in SHIFTS:
        # normalised by scale^2 = 4
        shift = {"name": name, "scale": 2.0} if name.startswith("scaled") else name
        zero = evaluate.evaluate_model(
            ZeroModel(),
            "linear",
            n_dims=4,
            n_points=7,
            n_prompts=2000,
            seed=1,
            shift=shift,
            estimators=(),
        )["transformer"]
        cheat = evaluate.evaluate_model(
            CheatingModel(),
            "linear",
            n_dims=4,
            n_points=7,
            n_prompts=200,
            seed=1,
            shift=shift,
            estimators=(),
        )["transformer"]
        # noise_std = 1 on d = 4: 1 + 1 / 4
        expected = 1.25 if name == "noisy_labels" else 1.0
        assert (
            abs(zero.mean.mean() - expected) < 0.12
        ), f"{name}: zero predictor scored {zero.mean.mean():.3f}"
        if name != "noisy_labels":
            assert np.allclose(
                cheat.mean, 0, atol=1e-10
            ), f"{name}: a model that reads the query label is not exact"
        if name == "orthogonal_query":
            assert len(zero.mean) == 4, "the orthogonal query is only defined for k < d"


def test_oracle_and_lasso_on_a_sparse_task_and_estimator_options():
    curves = evaluate.evaluate_model(
        None,
        {"name": "sparse_linear", "k": 1},
        n_dims=6,
        n_points=8,
        n_prompts=200,
        seed=0,
        estimators=("least_squares", "oracle", "lasso"),
        estimator_options={"lasso": {"alpha": 1e-2}},
    )
    assert "transformer" not in curves
    # One example determines a 1-sparse function on its known support.
    assert np.allclose(curves["oracle"].mean[1:], 0, atol=1e-10)
    assert curves["lasso"].mean[3] < curves["least_squares"].mean[3]
    with pytest.raises(
        ValueError,
        match=r"estimator\.name must be one of 'least_squares', .*; got 'magic'",
    ):
        evaluate.evaluate_model(
            None,
            "linear",
            n_dims=2,
            n_points=3,
            n_prompts=4,
            seed=0,
            estimators=("magic",),
        )
    with pytest.raises(
        ValueError, match=r"estimator\.name must be one of .*; got 'magic'"
    ):  # options of an unused one
        evaluate.evaluate_model(
            None,
            "linear",
            n_dims=2,
            n_points=3,
            n_prompts=4,
            seed=0,
            estimators=(),
            estimator_options={"magic": {}},
        )
    with pytest.raises(ValueError, match="sparse"):
        evaluate.evaluate_model(
            None,
            "linear",
            n_dims=2,
            n_points=3,
            n_prompts=4,
            seed=0,
            estimators=("oracle",),
        )
    with pytest.raises(ValueError, match="shift"):
        evaluate.evaluate_model(
            None, "linear", n_dims=2, n_points=3, n_prompts=4, seed=0, shift="sideways"
        )
    with pytest.raises(
        ValueError, match=r"shift 'scaled_inputs' needs the option\(s\) \['scale'\]"
    ):
        evaluate.evaluate_model(
            None,
            "linear",
            n_dims=2,
            n_points=3,
            n_prompts=4,
            seed=0,
            shift={"name": "scaled_inputs"},
        )


def test_write_then_read_gives_back_the_curves_and_the_provenance(tmp_path):
    curve = ErrorCurve(
        mean=np.array([1.0, 0.5]),
        low=np.array([0.9, 0.4]),
        high=np.array([1.1, 0.6]),
        n_prompts=7,
    )
    path = evaluate.write_result(
        tmp_path / "r" / "x.json",
        {"transformer": curve},
        run={"name": "run"},
        task={"name": "linear"},
        provenance={"seed": 3, "command": "cmd"},
    )
    data = json.loads(path.read_text())
    assert data["curves"]["transformer"] == {
        "k": [0, 1],
        "mean": [1.0, 0.5],
        "lower": [0.9, 0.4],
        "upper": [1.1, 0.6],
        "n_prompts": 7,
    }
    assert (
        len(data["provenance"]["git_commit"]) in (7, 40)
        or data["provenance"]["git_commit"] == "unknown"
    )
    assert "date" in data["provenance"]
    curves, meta = evaluate.read_result(path)
    np.testing.assert_array_equal(curves["transformer"].high, [1.1, 0.6])
    assert (
        meta["run"] == {"name": "run"}
        and meta["task"] == {"name": "linear"}
        and meta["provenance"]["seed"] == 3
    )
    assert evaluate.available_results("*.json", root=tmp_path / "r") == [path]
    assert evaluate.available_results("*.json", root=tmp_path / "none") == []
    with pytest.raises(ValueError, match="does not exist"):
        evaluate.read_result(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="curves"):
        evaluate.write_result(tmp_path / "y.json", {}, run={}, task={}, provenance={})


def test_command_line_evaluates_a_run_directory(tmp_path, capsys):
    config = TrainConfig(
        model={
            "name": "gpt",
            "n_layers": 1,
            "width": 16,
            "n_heads": 2,
            "token_format": "paired",
        },
        n_dims=3,
        n_points=5,
        batch_size=16,
        steps=2,
        warmup_steps=1,
        log_every=1,
        eval_every=0,
        eval_batch=16,
        checkpoint_every=0,
        device="cpu",
        threads=1,
    )
    train(config, tmp_path / "run", progress=False)
    out = tmp_path / "results" / "tiny.json"
    code = evaluate.main(
        [
            str(tmp_path / "run"),
            "--task",
            "sparse_linear",
            "--task-option",
            "k=2",
            "--shift",
            "scaled_inputs",
            "--shift-option",
            "scale=2",
            "--prompts",
            "32",
            "--estimators",
            "least_squares,lasso",
            "--estimator-option",
            "lasso.alpha=0.01",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    curves, meta = evaluate.read_result(out)
    assert (
        list(curves) == ["transformer", "least_squares", "lasso"]
        and len(curves["lasso"].mean) == 5
    )
    assert meta["task"] == {"name": "sparse_linear", "k": 2}
    assert meta["provenance"]["shift"] == {"name": "scaled_inputs", "scale": 2}
    assert meta["provenance"]["estimator_options"] == {"lasso": {"alpha": 0.01}}
    assert meta["provenance"]["command"].startswith("python -m icl_lib.evaluate ")
    assert (
        meta["run"]["config"]["n_dims"] == 3 and meta["provenance"]["device"] == "cpu"
    )
    with pytest.raises(SystemExit):
        evaluate.main(
            [
                str(tmp_path / "run"),
                "--task",
                "linear",
                "--task-option",
                "oops",
                "--out",
                str(out),
            ]
        )
    assert "KEY=VALUE" in capsys.readouterr().err
