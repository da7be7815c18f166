"""The training loop: schedule, curriculum, determinism, resume bit for bit, config
errors, the command line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from icl_lib import checkpoints, runs
from icl_lib.checkpoints import (
    CHECKPOINT_FILE,
    META_FILE,
    METRICS_FILE,
    MODEL_FILE,
    load_model,
    repository_root,
)
from icl_lib.devices import make_generator
from icl_lib.models import make_model
from icl_lib.tasks import DenseLinear, SparseLinear, TaskSample
from icl_lib.samplers import gaussian_xs
from icl_lib.train import (
    Curriculum,
    Step,
    TrainConfig,
    derive_seed,
    held_out_metrics,
    learning_rate,
    load_config,
    masked_mse,
    sample_batch,
    train,
)

REPO = repository_root()
TIMING_KEYS = {"steps_per_s", "wall_s"}


def tiny_config(**changes) -> TrainConfig:
    """A GPT small enough that a step takes about a millisecond on one thread."""
    base = dict(
        model={
            "name": "gpt",
            "n_layers": 1,
            "width": 16,
            "n_heads": 2,
            "token_format": "paired",
        },
        task={"name": "linear"},
        n_dims=3,
        n_points=5,
        batch_size=16,
        steps=6,
        lr=1e-3,
        warmup_steps=2,
        log_every=2,
        eval_every=3,
        eval_batch=32,
        checkpoint_every=3,
        device="cpu",
        threads=1,
    )
    return TrainConfig.from_dict({**base, **changes})


def without_timing(history: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history
    ]


def assert_same_state(a: dict, b: dict, path: str = "") -> None:
    """Bitwise equality of nested state dicts (tensors compared with torch.equal)."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


# ------------------------------------------------------------- schedule and curriculum


def test_learning_rate_warms_up_then_decays_by_cosine_or_stays_constant():
    config = tiny_config(steps=110, warmup_steps=10, lr=1.0, lr_floor=0.1)
    assert [learning_rate(config, s) for s in range(3)] == pytest.approx(
        [0.1, 0.2, 0.3]
    )
    assert learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 10) == pytest.approx(1.0)
    # halfway through the decay
    assert learning_rate(config, 60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert learning_rate(config, 109) == pytest.approx(0.1, abs=1e-3)
    rates = [learning_rate(config, s) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    constant = config.replace(lr_schedule="constant")
    assert learning_rate(constant, 50) == learning_rate(constant, 109) == 1.0


def test_wsd_schedule_is_constant_then_falls_linearly_over_the_last_fraction():
    config = tiny_config(
        steps=100,
        warmup_steps=10,
        lr=1.0,
        lr_floor=0.0,
        lr_schedule="wsd",
        decay_fraction=0.2,
    )
    assert learning_rate(config, 0) == pytest.approx(0.1)
    # 20 steps left: not yet decaying
    assert [learning_rate(config, s) for s in (10, 50, 80)] == [1.0, 1.0, 1.0]
    # the last 20 steps fall linearly: 19/20, 18/20, ..., 1/20 (step s leaves 100 - s
    # steps)
    assert [learning_rate(config, s) for s in range(81, 100)] == pytest.approx(
        [(100 - s) / 20 for s in range(81, 100)]
    )
    floored = config.replace(lr_floor=0.5)
    assert learning_rate(floored, 99) == pytest.approx(0.5 + 0.5 / 20)
    with pytest.raises(ValueError, match="decay_fraction"):
        config.replace(decay_fraction=1.5)


def test_garg_curriculum_preset():
    garg = Curriculum.garg()
    assert garg.at(0) == garg.at(1999) == (5, 11)
    assert garg.at(2000) == (6, 13)
    assert garg.at(2000 * 15) == (20, 41)
    assert garg.at(10**7) == (20, 41)
    config = TrainConfig.from_dict(
        dict(
            model={"name": "gpt", "n_layers": 1, "width": 8, "n_heads": 2},
            n_dims=20,
            n_points=41,
            curriculum="garg",
        )
    )
    assert config.curriculum == garg


class RecordingTask:
    """Dense linear regression that keeps the inputs it was asked to label."""

    def __init__(self) -> None:
        self.inner, self.seen = DenseLinear(), []

    def sample(self, xs, generator):
        self.seen.append(xs.detach().clone())
        return self.inner.sample(xs, generator)

    def zero_predictor_error(self, d):
        return self.inner.zero_predictor_error(d)


def test_curriculum_zeroes_the_inactive_coordinates():
    task = RecordingTask()
    curriculum = {
        "dims_start": 2,
        "dims_end": 4,
        "dims_interval": 2,
        "points_start": 3,
        "points_end": 5,
        "points_interval": 2,
    }
    config = tiny_config(
        n_dims=4, n_points=5, steps=6, curriculum=curriculum, eval_every=0
    )
    result = train(config, task=task, progress=False)
    training_batches = [xs for xs in task.seen if xs.shape[0] == config.batch_size]
    assert len(training_batches) == 6
    for step, xs in enumerate(training_batches):
        dims, _ = config.curriculum.at(step)
        assert xs.shape == (16, 5, 4)  # static shapes: always n_points x n_dims
        assert torch.all(
            xs[..., dims:] == 0
        ), f"step {step}: coordinates beyond {dims} not zeroed"
        assert torch.all(xs[..., :dims] != 0)
    # the logged normalised error divides by the zero-predictor error at the active
    # dimension
    for record in (r for r in result.history if "train_loss" in r):
        assert record["train_normalized_error"] == pytest.approx(
            record["train_loss"] / record["n_dims"], rel=1e-5
        )
    final = result.history[-1]
    assert (
        len(final["eval_error_by_position"])
        == final["n_points"]
        == config.curriculum.at(5)[1]
    )


def test_loss_masking_equals_the_loss_on_the_shorter_prompt():
    model = (
        make_model(
            {"name": "gpt", "n_layers": 2, "width": 16, "n_heads": 2}, 3, 8, seed=0
        )
        .double()
        .eval()
    )
    g = make_generator(0)
    xs, ys = (
        torch.randn(4, 8, 3, generator=g, dtype=torch.float64),
        torch.randn(4, 8, generator=g, dtype=torch.float64),
    )
    with torch.no_grad():
        full = model(xs, ys)
        for points in (1, 3, 8):
            short = model(xs[:, :points], ys[:, :points])
            expected = ((short - ys[:, :points]) ** 2).mean()
            torch.testing.assert_close(
                masked_mse(full, ys, torch.tensor(points)),
                expected.float(),
                rtol=1e-6,
                atol=0,
            )
    # a query-only model's prediction (batch, 1) is compared with the last label
    assert masked_mse(torch.zeros(4, 1), ys).item() == pytest.approx(
        (ys[:, -1] ** 2).mean().item(), rel=1e-6
    )


# ------------------------------------------------------------- determinism and resume


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    a, b = train(tiny_config(), progress=False), train(tiny_config(), progress=False)
    assert_same_state(a.model.state_dict(), b.model.state_dict())
    assert without_timing(a.history) == without_timing(b.history)
    c = train(tiny_config(seed=1), progress=False)
    assert not torch.equal(a.model.read_in.weight, c.model.read_in.weight)


def test_a_model_object_or_task_object_trains_as_the_equivalent_specs_do():
    config = tiny_config(eval_every=2)
    from_specs = train(config, progress=False)
    model = make_model(
        config.model,
        config.n_dims,
        config.n_points,
        seed=derive_seed(config.seed, "init"),
    )
    from_objects = train(config, model=model, task=DenseLinear(), progress=False)
    assert from_objects.model is model  # trained in place
    assert_same_state(from_specs.model.state_dict(), model.state_dict())
    assert without_timing(from_objects.history) == without_timing(from_specs.history)


class Shifted:
    """A function class of one's own, as a chapter defines one: f(x) = <w, x> + 3, so E
    f(x)^2 = d + 9."""

    def sample(self, xs, generator):
        w = torch.randn(xs.shape[0], xs.shape[-1], generator=generator)
        return TaskSample(ys=torch.einsum("bnd,bd->bn", xs, w) + 3.0, params={"w": w})

    def zero_predictor_error(self, d):
        return d + 9.0


def test_train_learns_a_task_object_of_its_own_and_normalises_by_its_zero_predictor():
    config = tiny_config(
        steps=60,
        lr=1e-2,
        warmup_steps=0,
        lr_schedule="constant",
        log_every=1,
        eval_every=0,
    )
    history = train(config, task=Shifted(), progress=False).history
    assert all(
        r["train_normalized_error"] == pytest.approx(r["train_loss"] / 12.0, rel=1e-5)
        for r in history
    )
    first, final = (
        np.mean([r["train_loss"] for r in history[:5]]),
        np.mean([r["train_loss"] for r in history[-5:]]),
    )
    assert (
        final < 0.5 * first
    ), f"the loss should fall (it learns the offset 3): {first:.2f} -> {final:.2f}"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            {"model": "gpt"},
            r"model must be a torch.nn.Module or None \(build config.model\), got str",
        ),
        (
            {"task": DenseLinear},
            r"task must be None \(build config.task\) or an object with the methods "
            r"sample\(xs, generator\) and zero_predictor_error\(d\), got the class "
            r"DenseLinear",
        ),
        ({"task": object()}, r"task must be None .* got object"),
        (
            {"task": DenseLinear(), "out_dir": "OUT"},
            r"out_dir must be None when train\(\) is given a model or task",
        ),
        (
            {"model": "MODEL", "config": tiny_config(init_from="some_run")},
            r"init_from must be None when train\(\) is " r"given a model object",
        ),
        (
            {
                "model": "LSA",
                "config": tiny_config(
                    curriculum={
                        "dims_start": 2,
                        "dims_end": 3,
                        "points_start": 3,
                        "points_end": 5,
                    }
                ),
            },
            r"curriculum: a curriculum over points needs a model that predicts at "
            r"every position",
        ),
    ],
)
def test_train_refuses_objects_it_cannot_use(tmp_path, arguments, message):
    arguments = dict(arguments)
    config = arguments.pop("config", tiny_config())
    if arguments.get("out_dir") == "OUT":
        arguments["out_dir"] = tmp_path / "run"
    if arguments.get("model") == "MODEL":
        arguments["model"] = make_model(
            config.model, config.n_dims, config.n_points, seed=0
        )
    if arguments.get("model") == "LSA":
        arguments["model"] = make_model(
            {"name": "lsa"}, config.n_dims, config.n_points, seed=0
        )
    with pytest.raises(ValueError, match=message):
        train(config, progress=False, **arguments)
    assert not (tmp_path / "run").exists()


def test_sample_batch_draws_gaussian_inputs_then_labels_and_zeroes_the_inactive_coordinates():
    xs, ys = sample_batch(DenseLinear(), 8, 5, 4, make_generator(3))
    # the reference: the same two draws, in the same order, by hand
    g = make_generator(3)
    expected_xs = gaussian_xs(8, 5, 4, g)
    torch.testing.assert_close(xs, expected_xs, rtol=0, atol=0)
    torch.testing.assert_close(
        ys, DenseLinear().sample(expected_xs, g).ys, rtol=0, atol=0
    )
    active, _ = sample_batch(
        DenseLinear(), 8, 5, 4, make_generator(3), active_dims=torch.tensor(2)
    )
    torch.testing.assert_close(active[..., :2], expected_xs[..., :2], rtol=0, atol=0)
    assert torch.all(active[..., 2:] == 0)
    # it takes active_dims: the support lies among the active coordinates
    task = SparseLinear(k=1)
    xs, ys = sample_batch(task, 64, 3, 4, make_generator(0), active_dims=2)
    g = make_generator(0)
    reference = task.sample(
        gaussian_xs(64, 3, 4, g) * torch.tensor([1.0, 1.0, 0.0, 0.0]), g, active_dims=2
    )
    torch.testing.assert_close(ys, reference.ys, rtol=0, atol=0)
    assert not reference.params["support"][:, 2:].any()


def test_held_out_metrics_are_the_error_on_the_prompts_sample_batch_draws():
    model = make_model(
        {"name": "gpt", "n_layers": 1, "width": 16, "n_heads": 2}, 3, 6, seed=0
    )
    metrics = held_out_metrics(
        model, DenseLinear(), 3, 6, 32, make_generator(5), active_points=4
    )
    g = make_generator(5)
    xs = gaussian_xs(32, 6, 3, g)
    ys = DenseLinear().sample(xs, g).ys
    with torch.no_grad():
        # (32, 4): the first 4 positions count
        errors = ((model.eval()(xs, ys) - ys) ** 2)[:, :4]
    assert metrics["eval_loss"] == pytest.approx(errors.mean().item(), rel=1e-6)
    assert metrics["eval_normalized_error"] == pytest.approx(
        errors.mean().item() / 3, rel=1e-6
    )
    np.testing.assert_allclose(
        metrics["eval_error_by_position"], (errors.mean(0) / 3).numpy(), rtol=1e-6
    )


def test_train_leaves_threads_and_global_random_state_as_they_were():
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    train(tiny_config(threads=1, steps=2), progress=False)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), state)


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path):
    config = tiny_config(steps=8, checkpoint_every=3, eval_every=1)
    whole = train(config, tmp_path / "whole", progress=False)

    # interrupted by stop_at (a planned stop, with a checkpoint at step 5), then resumed
    stopped = train(config, tmp_path / "stopped", progress=False, stop_at=5)
    assert stopped.step == 5
    assert (
        json.loads((tmp_path / "stopped" / META_FILE).read_text())["status"]
        == "stopped"
    )
    resumed = train(config, tmp_path / "stopped", progress=False)

    # interrupted by an exception at step 5: the checkpoint of step 3 remains, and
    # resuming replays steps 4 and 5
    def crash(step, model):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "crashed", progress=False, hooks=[crash])
    meta = json.loads((tmp_path / "crashed" / META_FILE).read_text())
    assert meta["status"] == "interrupted" and meta["steps_done"] == 3
    crashed = train(config, tmp_path / "crashed", progress=False)

    reference = torch.load(tmp_path / "whole" / CHECKPOINT_FILE, weights_only=True)
    for run, result in (("stopped", resumed), ("crashed", crashed)):
        assert result.step == 8
        assert_same_state(whole.model.state_dict(), result.model.state_dict())
        state = torch.load(tmp_path / run / CHECKPOINT_FILE, weights_only=True)
        for key in (
            "step",
            "model",
            "optimizer",
            "generator",
            "rng_cpu",
            "totals",
            "totals_steps",
        ):
            assert_same_state(reference[key], state[key], key)
        assert without_timing(result.history) == without_timing(whole.history)
        on_disk = [
            json.loads(line)
            for line in (tmp_path / run / METRICS_FILE).read_text().splitlines()
        ]
        # no duplicated records after resuming
        assert without_timing(on_disk) == without_timing(whole.history)

    # resuming a finished run does nothing more
    again = train(config, tmp_path / "whole", progress=False)
    assert again.step == 8 and without_timing(again.history) == without_timing(
        whole.history
    )


def test_resume_refuses_a_different_config_but_can_start_afresh(tmp_path):
    train(tiny_config(steps=2), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(tiny_config(steps=2, lr=2e-3), tmp_path / "run", progress=False)
    fresh = train(
        tiny_config(steps=2, lr=2e-3), tmp_path / "run", progress=False, resume=False
    )
    assert fresh.step == 2
    # where and how fast it runs may change
    train(
        tiny_config(steps=2, lr=2e-3, eval_every=1, log_every=1),
        tmp_path / "run",
        progress=False,
    )


def test_lsa_trains_towards_the_zfb_global_minimum():
    d, n = 2, 10
    config = TrainConfig(
        model={"name": "reduced_lsa", "sigma": 0.1},
        task={"name": "linear"},
        n_dims=d,
        n_points=n + 1,
        batch_size=512,
        steps=300,
        lr=0.02,
        warmup_steps=0,
        grad_clip=0.0,
        eval_every=0,
        device="cpu",
        threads=1,
    )
    model = train(config, progress=False).model
    # Gamma = (1 + 1/N) I + (d/N) I for Lambda = I
    gamma_inv = torch.eye(d) * n / (n + d + 1)
    error = torch.linalg.matrix_norm(
        model.product.detach() - gamma_inv
    ) / torch.linalg.matrix_norm(gamma_inv)
    assert error < 0.1, f"relative error of u U vs Gamma^-1: {error:.3f}"


# ------------------------------------------------------------- configs and their errors


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"task": {"name": "quadratic"}}, "task"),
        ({"task": {"name": "sparse_linear", "k": 9}}, "k"),
        ({"batch_size": -1}, "batch_size"),
        ({"n_points": 0}, "n_points"),
        ({"steps": 2.5}, "steps"),
        ({"lr": -1e-3}, "lr"),
        ({"model": {"name": "gpt", "width": 30, "n_heads": 4}}, "model.width"),
        ({"model": {"name": "gpt", "n_layers": -2}}, "model.n_layers"),
        ({"model": {"name": "gpt", "token_format": "pairs"}}, "model.token_format"),
        ({"model": {"name": "bert"}}, "model.name"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"device": "tpu"}, "device"),
        ({"curriculum": "fast"}, "curriculum"),
        (
            {
                "curriculum": {
                    "dims_start": 2,
                    "dims_end": 9,
                    "points_start": 3,
                    "points_end": 5,
                }
            },
            "curriculum.dims_end",
        ),
        (
            {
                "curriculum": {
                    "dims_start": 2,
                    "dims_end": 3,
                    "points_start": 0,
                    "points_end": 5,
                }
            },
            "curriculum.points_start",
        ),
        (
            {
                "model": {"name": "lsa"},
                "curriculum": {
                    "dims_start": 2,
                    "dims_end": 3,
                    "points_start": 3,
                    "points_end": 5,
                },
            },
            "curriculum",
        ),
        ({"betas": [0.9, 1.0]}, "betas"),
        ({"cuda_graph": "yes"}, "cuda_graph"),
    ],
)
def test_bad_config_values_fail_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        tiny_config(**changes)


def test_a_sparse_part_wider_than_the_prompts_is_refused_without_sampling():
    mixture = {
        "name": "mixture",
        "components": [{"name": "linear"}, {"name": "sparse_linear", "k": 4}],
        "weights": [0.5, 0.5],
    }
    with pytest.raises(
        ValueError,
        match=(
            r"task: k must be at most d = 3 \(k of d coordinates are non-zero\), got k "
            r"= 4"
        ),
    ):
        tiny_config(task=mixture)
    convex = {
        "name": "convex",
        "first": "linear",
        "second": {"name": "sparse_linear", "k": 4},
    }
    with pytest.raises(ValueError, match=r"task: k must be at most d = 3"):
        tiny_config(task=convex)
    assert tiny_config(
        task={
            **mixture,
            "components": [{"name": "linear"}, {"name": "sparse_linear", "k": 3}],
        }
    )


def test_the_cuda_graph_is_opt_in_and_its_module_imports_without_a_gpu():
    from icl_lib import cuda_graph

    # the eager step is what a run gets unless its config asks
    assert TrainConfig().cuda_graph is False
    assert callable(cuda_graph.CudaGraphStep)
    model = make_model(tiny_config().model, 3, 5, seed=0)
    step = Step(model, DenseLinear(), tiny_config(cuda_graph=True), torch.device("cpu"))
    assert step.graph is None  # the CPU ignores the option: it never captures


def test_unknown_config_fields_fail_and_to_dict_round_trips():
    with pytest.raises(ValueError, match="stepz"):
        TrainConfig.from_dict({"stepz": 3})
    config = tiny_config(
        curriculum={"dims_start": 2, "dims_end": 3, "points_start": 3, "points_end": 5}
    )
    data = config.to_dict()
    json.dumps(data)
    assert TrainConfig.from_dict(data) == config


def test_every_config_in_configs_is_valid_and_the_paper_config_is_the_papers():
    paths = sorted((REPO / "configs").glob("*.toml"))
    assert {
        "garg_dense_linear_laptop.toml",
        "garg_dense_linear_paper.toml",
        "lsa_zfb_laptop.toml",
    } <= {p.name for p in paths}
    configs = {p.stem: load_config(p) for p in paths}
    paper = configs["garg_dense_linear_paper"]
    assert (paper.model["n_layers"], paper.model["width"], paper.model["n_heads"]) == (
        12,
        256,
        8,
    )
    assert (paper.n_dims, paper.n_points, paper.batch_size, paper.steps) == (
        20,
        41,
        64,
        500_000,
    )
    assert (
        paper.curriculum == Curriculum.garg()
        and paper.model["token_format"] == "interleaved"
    )
    laptop = configs["garg_dense_linear_laptop"]
    assert (
        laptop.model["n_layers"],
        laptop.model["width"],
        laptop.model["n_heads"],
    ) == (3, 64, 2)
    assert (laptop.n_dims, laptop.n_points, laptop.batch_size, laptop.steps) == (
        5,
        11,
        256,
        1500,
    )
    assert (laptop.lr, laptop.warmup_steps, laptop.lr_schedule, laptop.grad_clip) == (
        3e-3,
        200,
        "cosine",
        1.0,
    )
    assert laptop.model["token_format"] == "paired"


# ------------------------------------------------------------- the command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "icl_lib.train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_line_trains_a_tiny_config_end_to_end(tmp_path):
    out = tmp_path / "run"
    done = run_cli(
        "configs/tiny_test.toml",
        "--steps",
        "4",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    for name in (CHECKPOINT_FILE, MODEL_FILE, META_FILE, METRICS_FILE):
        assert (out / name).is_file(), name
    meta = json.loads((out / META_FILE).read_text())
    assert meta["command"] == (
        f"python -m icl_lib.train configs/tiny_test.toml --steps 4 --out {out} "
        "--device cpu --no-progress"
    )
    assert (
        meta["status"] == "finished"
        and meta["steps_done"] == 4
        and meta["config"]["steps"] == 4
    )
    records = [
        json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()
    ]
    assert records[-1]["step"] == 4 and "eval_normalized_error" in records[-1]
    assert json.loads(done.stdout.strip().splitlines()[-1])["step"] == 4


@pytest.mark.parametrize(
    "args, field", [(("--steps", "-3"), "steps"), (("--device", "gpu"), "device")]
)
def test_the_command_line_rejects_bad_values_naming_the_field(tmp_path, args, field):
    done = run_cli("configs/tiny_test.toml", "--out", str(tmp_path / "run"), *args)
    assert done.returncode == 2
    assert field in done.stderr
    assert not (tmp_path / "run").exists()


def test_the_command_line_rejects_a_bad_value_in_the_config_file(tmp_path):
    text = (
        (REPO / "configs" / "tiny_test.toml")
        .read_text()
        .replace("n_heads = 2", "n_heads = 3")
    )
    (tmp_path / "bad.toml").write_text(text)
    done = run_cli(str(tmp_path / "bad.toml"), "--out", str(tmp_path / "run"))
    assert (
        done.returncode == 2
        and "model.width must be divisible by n_heads" in done.stderr
    )


def test_the_command_line_names_a_missing_config(tmp_path):
    done = run_cli(str(tmp_path / "nope.toml"))
    assert done.returncode == 2 and "nope.toml" in done.stderr


def test_a_sparse_task_under_a_curriculum_draws_its_support_among_the_active_coordinates():
    recorded = []

    class RecordingSparse(SparseLinear):
        def sample(self, xs, generator, active_dims=None):
            drawn = super().sample(xs, generator, active_dims=active_dims)
            recorded.append((xs.detach().clone(), drawn.params["support"].clone()))
            return drawn

    task = RecordingSparse(k=2)
    curriculum = {
        "dims_start": 3,
        "dims_end": 6,
        "dims_interval": 2,
        "points_start": 5,
        "points_end": 5,
    }
    config = tiny_config(
        n_dims=6, n_points=5, steps=6, curriculum=curriculum, eval_every=0
    )
    train(config, task=task, progress=False)
    batches = [
        (xs, support) for xs, support in recorded if xs.shape[0] == config.batch_size
    ]
    assert len(batches) == 6
    for step, (xs, support) in enumerate(batches):
        dims, _ = config.curriculum.at(step)
        support = support.numpy()
        assert (
            np.all(support.sum(1) == 2) and not support[:, dims:].any()
        ), f"step {step}: support outside {dims} dims"
        # coordinates that both vary and carry weight
        active_terms = (np.abs(xs.numpy()).sum(1) > 0) & support
        assert np.all(
            active_terms.sum(1) == 2
        ), f"step {step}: a prompt lost a term to a zeroed coordinate"


def test_a_warm_start_begins_from_the_named_runs_weights_and_records_their_digest(
    tmp_path,
):
    train(tiny_config(steps=4, eval_every=0), tmp_path / "first", progress=False)
    first = load_model(tmp_path / "first")
    # lr = 1e-12: an Adam step moves each weight by about lr, so the one step leaves the
    # warm start in place.
    warm = train(
        tiny_config(
            steps=1,
            warmup_steps=0,
            lr=1e-12,
            eval_every=0,
            init_from=str(tmp_path / "first"),
        ),
        tmp_path / "warm",
        progress=False,
    )
    fresh = train(
        tiny_config(steps=1, warmup_steps=0, lr=1e-12, eval_every=0), progress=False
    )
    for name, weight in first.state_dict().items():
        np.testing.assert_allclose(
            warm.model.state_dict()[name].numpy(),
            weight.numpy(),
            atol=1e-9,
            err_msg=name,
        )
    assert any(
        not torch.allclose(fresh.model.state_dict()[n], w)
        for n, w in first.state_dict().items()
    )
    meta = json.loads((tmp_path / "warm" / META_FILE).read_text())
    digest = hashlib.sha256((tmp_path / "first" / MODEL_FILE).read_bytes()).hexdigest()
    assert meta["init_from"] == {"run": str(tmp_path / "first"), "sha256": digest}
    assert meta["config"]["init_from"] == str(tmp_path / "first")


def test_a_warm_started_run_resumes_bit_for_bit_and_keeps_its_provenance(tmp_path):
    train(tiny_config(steps=4, eval_every=0), tmp_path / "first", progress=False)
    config = tiny_config(
        steps=6, checkpoint_every=2, eval_every=0, init_from=str(tmp_path / "first")
    )
    whole = train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "split", progress=False, stop_at=2)
    resumed = train(config, tmp_path / "split", progress=False)
    for name, weight in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], weight), name
    metas = [
        json.loads((tmp_path / run / META_FILE).read_text())
        for run in ("whole", "split")
    ]
    assert metas[0]["init_from"] == metas[1]["init_from"] and metas[1]["init_from"][
        "run"
    ] == str(tmp_path / "first")


def test_a_constant_rate_run_extended_on_resume_equals_the_extended_run_from_scratch(
    tmp_path,
):
    """A resume may change the schedule fields when every step taken keeps its learning
    rate: the run is then the one its new config trains from scratch, and meta.json
    records the change."""
    short = tiny_config(
        steps=8, lr_schedule="wsd", decay_fraction=0.25, checkpoint_every=2
    )  # decay from step 6
    # constant to step 10, so steps 0..5 keep their rates
    long = short.replace(steps=12, decay_fraction=0.125)
    whole = train(long, tmp_path / "whole", progress=False)
    train(short, tmp_path / "extended", progress=False, stop_at=6)
    extended = train(long, tmp_path / "extended", progress=False)
    assert_same_state(whole.model.state_dict(), extended.model.state_dict())
    assert without_timing(extended.history) == without_timing(whole.history)
    meta = json.loads((tmp_path / "extended" / META_FILE).read_text())
    assert meta["schedule_changes"] == [
        {"at_step": 6, "before": {"steps": 8, "decay_fraction": 0.25}}
    ]
    assert meta["steps"] == 12 and meta["status"] == "finished"


def test_a_run_resumed_on_another_machine_keeps_the_kernels_it_began_with(
    tmp_path, monkeypatch
):
    """meta.json's machine fields stay those of the machine that trained the first
    steps (a replay reruns those), and each change of machine is listed with its
    step."""
    config = tiny_config(steps=6, checkpoint_every=2, eval_every=0)
    train(config, tmp_path / "run", progress=False, stop_at=2)
    began = json.loads((tmp_path / "run" / META_FILE).read_text())
    real = checkpoints.provenance
    other = {"cpu_model": "Another CPU", "cpu_capability": "DEFAULT"}
    monkeypatch.setattr(checkpoints, "provenance", lambda d: {**real(d), **other})
    train(config, tmp_path / "run", progress=False, stop_at=4)
    monkeypatch.setattr(checkpoints, "provenance", real)
    whole = train(config, tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run" / META_FILE).read_text())
    assert meta["status"] == "finished" and whole.step == 6
    for key in runs.MACHINE_KEYS:
        assert meta.get(key) == began.get(key), key
    here = {key: began[key] for key in runs.MACHINE_KEYS if key in began}
    assert meta["resumed_on"] == [
        {"at_step": 2, **here, **other},
        {"at_step": 4, **here},
    ]


def test_a_resume_on_the_same_machine_adds_no_record():
    here = {"git_commit": "b", "device": "cpu", "cpu_model": "X", "blas": "mkl"}
    previous = {"git_commit": "a", "device": "cpu", "cpu_model": "X", "blas": "mkl"}
    assert runs.machine_record(here, previous, 10) == (here, [])
    assert runs.machine_record(here, None, None) == (here, [])
    # a run recorded before meta.json held its kernels does not gain this machine's
    old = {"git_commit": "a", "device": "cpu"}
    record, machines = runs.machine_record(here, old, 10)
    assert record == {"git_commit": "b", "device": "cpu"}
    assert machines == [
        {"at_step": 10, "device": "cpu", "cpu_model": "X", "blas": "mkl"}
    ]


def test_a_schedule_change_that_alters_a_step_taken_is_refused(tmp_path):
    config = tiny_config(
        steps=8, lr_schedule="wsd", decay_fraction=0.5, checkpoint_every=2
    )  # decay from step 4
    train(config, tmp_path / "run", progress=False, stop_at=6)
    with pytest.raises(
        ValueError, match="steps already taken keep their learning rates"
    ):
        # steps 4 and 5 were decaying
        train(config.replace(steps=20), tmp_path / "run", progress=False)
    # the rate itself is not a schedule field
    with pytest.raises(ValueError, match="lr: 0.001 -> 0.002"):
        train(config.replace(lr=2e-3), tmp_path / "run", progress=False)


def test_a_mixture_run_logs_each_class_error_on_prompts_that_draw_the_class_per_prompt(
    tmp_path,
):
    task = {
        "name": "mixture",
        "components": [{"name": "linear"}, {"name": "sparse_linear", "k": 1}],
        "weights": [0.5, 0.5],
        "per": "batch",
    }
    result = train(
        tiny_config(task=task, steps=3, eval_every=3, eval_batch=256), progress=False
    )
    record = result.history[-1]
    by_class = record["eval_error_by_class"]
    # (class, position)
    assert len(by_class) == 2 and all(len(errors) == 5 for errors in by_class)
    # per-prompt draws: both classes among the held-out prompts, whose overall error is
    # their weighted mean
    overall = record["eval_error_by_position"]
    assert all(
        min(by_class[0][k], by_class[1][k])
        <= overall[k]
        <= max(by_class[0][k], by_class[1][k])
        for k in range(5)
    )


def test_a_config_is_checked_without_building_its_model(monkeypatch):
    """__post_init__ checks each model kind's options with the checker its constructor
    shares: no weights are built (and no random numbers drawn), yet a bad option value
    is still refused, naming the field."""

    def refuse(*args, **kwargs):
        raise AssertionError("a config built a model")

    # every model's constructor calls it first
    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    state = torch.random.get_rng_state()
    for spec in (
        {"name": "gpt", "n_layers": 1, "width": 8, "n_heads": 2},
        {"name": "lsa", "sigma": 0.2},
        {"name": "reduced_lsa"},
        {"name": "linear_transformer", "n_layers": 2},
    ):
        tiny_config(model=spec)
    assert torch.equal(torch.random.get_rng_state(), state)
    for spec, field in (
        ({"name": "lsa", "sigma": 0.0}, "model.sigma"),
        ({"name": "linear_transformer", "n_layers": 0}, "model.n_layers"),
        ({"name": "gpt", "width": 9, "n_heads": 2}, "model.width"),
    ):
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            tiny_config(model=spec)


def test_loose_spellings_are_written_out_by_from_dict_and_replace_only():
    """A TOML table's loose forms (a preset, a curriculum's name, betas as a list) are
    parsed by from_dict and replace; the constructor takes typed fields, so a config is
    never rewritten after it is built."""
    from icl_lib import models

    loose = tiny_config(model={"preset": "laptop"}, betas=[0.9, 0.95])
    assert loose.model == models.MODEL_PRESETS["laptop"] and loose.betas == (0.9, 0.95)
    assert TrainConfig.from_dict(loose.to_dict()) == loose
    assert loose.replace(betas=[0.8, 0.9]).betas == (0.8, 0.9)
    with pytest.raises(ValueError, match="no 'preset'"):
        TrainConfig(model={"preset": "laptop"})
