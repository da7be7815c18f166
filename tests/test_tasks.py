"""Function classes: labels recomputed from the returned params in numpy, Monte Carlo
E[y^2], argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icl_lib import tasks
from icl_lib.devices import make_generator
from icl_lib.samplers import gaussian_xs
from icl_lib.tasks import (
    TASKS,
    ConvexCombination,
    DenseLinear,
    FinitePoolLinear,
    Mixture,
    NoisyLinear,
    ReluNet,
    Sinusoid,
    SparseLinear,
    TaskSample,
    make_task,
    relu_net_moments,
)


def xs_for(batch: int, n_points: int, d: int, seed: int = 0) -> torch.Tensor:
    return gaussian_xs(batch, n_points, d, make_generator(seed), dtype=torch.float64)


# Independent numpy evaluations of each class from its params
# --------------------------------------


def np_linear(xs: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.stack([xs[b] @ w[b] for b in range(xs.shape[0])])


def np_relu_net(xs: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    hidden = first.shape[-1]
    out = np.zeros(xs.shape[:2])
    for b in range(xs.shape[0]):
        out[b] = math.sqrt(2.0 / hidden) * (
            np.maximum(xs[b] @ first[b], 0.0) @ second[b]
        )
    return out


def np_sinusoid(xs, direction, frequency, phase, amplitude):
    out = np.zeros(xs.shape[:2])
    for b in range(xs.shape[0]):
        out[b] = amplitude * np.sin(frequency[b] * (xs[b] @ direction[b]) + phase[b])
    return out


def params_np(sample: TaskSample, prefix: str = "") -> dict[str, np.ndarray]:
    return {
        k[len(prefix) :]: v.numpy()
        for k, v in sample.params.items()
        if k.startswith(prefix)
    }


# ----------------------------------------------- labels from params


def test_dense_linear_labels_are_inner_products():
    xs = xs_for(6, 9, 4)
    sample = DenseLinear().sample(xs, make_generator(1))
    assert sample.ys.shape == (6, 9) and sample.params["w"].shape == (6, 4)
    np.testing.assert_allclose(
        sample.ys.numpy(), np_linear(xs.numpy(), sample.params["w"].numpy()), atol=1e-12
    )
    assert np.all(sample.params["w"].numpy() != 0)


def test_dense_linear_scale_multiplies_the_same_draws():
    xs = xs_for(6, 9, 4)
    plain, scaled = (
        DenseLinear().sample(xs, make_generator(1)),
        DenseLinear(scale=0.5).sample(xs, make_generator(1)),
    )
    np.testing.assert_array_equal(
        scaled.params["w"].numpy(), 0.5 * plain.params["w"].numpy()
    )
    assert torch.equal(
        DenseLinear(scale=1.0).sample(xs, make_generator(1)).ys, plain.ys
    )
    with pytest.raises(ValueError, match="scale"):
        DenseLinear(scale=0.0)


@pytest.mark.parametrize("k, d", [(1, 5), (3, 5), (5, 5), (2, 20)])
def test_sparse_linear_has_exactly_k_nonzeros_on_the_recorded_support(k, d):
    xs = xs_for(50, 6, d)
    sample = SparseLinear(k=k).sample(xs, make_generator(2))
    w, support = sample.params["w"].numpy(), sample.params["support"].numpy()
    assert support.dtype == np.bool_ and support.shape == (50, d)
    assert np.all(support.sum(axis=1) == k)
    assert np.array_equal(w != 0, support)
    np.testing.assert_allclose(sample.ys.numpy(), np_linear(xs.numpy(), w), atol=1e-12)


def test_sparse_linear_support_is_uniform_over_coordinates():
    d, k, batch = 6, 2, 6000
    sample = SparseLinear(k=k).sample(xs_for(batch, 1, d), make_generator(3))
    frequency = sample.params["support"].double().mean(0).numpy()
    # each coordinate is in the support with probability k/d; sd about 0.006
    np.testing.assert_allclose(frequency, k / d, atol=0.025)


def test_sparse_linear_with_active_dims_draws_the_same_uniforms_and_keeps_the_support_among_them():
    d, k, batch, active = 8, 2, 4000, 3
    xs = xs_for(batch, 4, d)
    free = SparseLinear(k=k).sample(xs, make_generator(5))
    full = SparseLinear(k=k).sample(xs, make_generator(5), active_dims=torch.tensor(d))
    # all active: the same draw
    assert torch.equal(free.params["support"], full.params["support"])
    masked = SparseLinear(k=k).sample(
        xs, make_generator(5), active_dims=torch.tensor(active)
    )
    support = masked.params["support"].numpy()
    assert np.all(support.sum(1) == k) and not support[:, active:].any()
    # uniform over the k-subsets of the active coordinates: each is in with probability
    # k / active (sd ~ 0.007)
    np.testing.assert_allclose(support[:, :active].mean(0), k / active, atol=0.03)
    # fewer active coordinates than k: all of them are in the support
    few = (
        SparseLinear(k=k)
        .sample(xs, make_generator(5), active_dims=1)
        .params["support"]
        .numpy()
    )
    assert np.all(few[:, 0]) and np.all(few.sum(1) == k)
    assert (
        SparseLinear(k=k).zero_predictor_error(1) == 1.0
        and SparseLinear(k=k).zero_predictor_error(d) == k
    )


def test_noisy_linear_noise_is_the_residual_with_the_given_std():
    xs = xs_for(400, 50, 3)
    sample = NoisyLinear(noise_std=0.3).sample(xs, make_generator(4))
    residual = sample.ys.numpy() - np_linear(xs.numpy(), sample.params["w"].numpy())
    assert abs(residual.std() / 0.3 - 1) < 0.02
    assert abs(residual.mean()) < 0.01
    noiseless = NoisyLinear(noise_std=0.0).sample(xs, make_generator(4))
    np.testing.assert_allclose(
        noiseless.ys.numpy(),
        np_linear(xs.numpy(), noiseless.params["w"].numpy()),
        atol=1e-12,
    )


def test_relu_net_labels_recomputed_from_params():
    xs = xs_for(5, 7, 3)
    net = ReluNet(hidden=16)
    sample = net.sample(xs, make_generator(5))
    p = params_np(sample)
    assert p["first_layer"].shape == (5, 3, 16) and p["second_layer"].shape == (5, 16)
    np.testing.assert_allclose(
        sample.ys.numpy(),
        np_relu_net(xs.numpy(), p["first_layer"], p["second_layer"]),
        atol=1e-12,
    )


def test_relu_net_moments_match_numpy_monte_carlo():
    # Monte Carlo in numpy over 400k fresh inputs per function: E[f^2], E[f x] and the
    # best linear fit's error.
    net = ReluNet(hidden=7)
    sample = net.sample(xs_for(3, 2, 4), make_generator(8))
    second_moment, beta = relu_net_moments(
        sample.params["first_layer"], sample.params["second_layer"]
    )
    p = params_np(sample)
    fresh = np.random.default_rng(9).standard_normal((3, 400_000, 4))
    labels = np_relu_net(fresh, p["first_layer"], p["second_layer"])
    for b in range(3):
        f2 = labels[b] ** 2
        assert abs(second_moment[b].item() - f2.mean()) < 4 * f2.std() / math.sqrt(
            f2.size
        )
        products = labels[b][:, None] * fresh[b]
        np.testing.assert_array_less(
            np.abs(beta[b].numpy() - products.mean(0)),
            4 * products.std(0) / math.sqrt(f2.size),
        )
        # least squares on the fresh inputs (no intercept) recovers beta, since E[x
        # x^T] = I
        fitted, *_ = np.linalg.lstsq(fresh[b], labels[b], rcond=None)
        np.testing.assert_allclose(fitted, beta[b].numpy(), atol=0.02)
    assert second_moment.dtype == torch.float64 and beta.shape == (3, 4)


def test_relu_net_moments_closed_forms_for_one_and_two_units():
    # one unit: f = sqrt(2) a relu(<v, x>), so E f^2 = a^2 |v|^2 and E[f x] = a v /
    # sqrt(2) (1, d = 2, hidden = 1), |v| = 5
    v = torch.tensor([[[3.0], [4.0]]], dtype=torch.float64)
    second_moment, beta = relu_net_moments(
        v, torch.tensor([[2.0]], dtype=torch.float64)
    )
    assert second_moment.item() == pytest.approx(100.0, rel=1e-12)
    np.testing.assert_allclose(
        beta[0].numpy(), [6 / math.sqrt(2), 8 / math.sqrt(2)], rtol=1e-12
    )
    # two opposite units: relu(g) relu(-g) = 0 and relu(g) + relu(-g) = |g|, E g^2 = 1,
    # so E f^2 = (2/2)(1/2 + 1/2) (1, d = 1, hidden = 2)
    opposite = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
    second_moment, beta = relu_net_moments(
        opposite, torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    )
    assert second_moment.item() == pytest.approx(1.0, rel=1e-12)  # E|g|^2 = 1
    assert beta.item() == pytest.approx(0.0, abs=1e-15)  # |g| is even: no linear part
    # two orthogonal units are independent: E[relu(g1) relu(g2)] = (E relu(g))^2 = 1 /
    # (2 pi)
    orthogonal = torch.eye(2, dtype=torch.float64)[None]
    second_moment, _ = relu_net_moments(
        orthogonal, torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    )
    assert second_moment.item() == pytest.approx(
        1.0 * (0.5 + 0.5 + 2 / (2 * math.pi)), rel=1e-12
    )
    # a zero unit contributes nothing (and no nan)
    zero = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    second_moment, beta = relu_net_moments(
        zero, torch.tensor([[5.0, 1.0]], dtype=torch.float64)
    )
    assert (
        second_moment.item() == pytest.approx(0.5, rel=1e-12)
        and torch.isfinite(beta).all()
    )


def test_relu_net_moments_average_to_the_zero_predictor_error():
    # over random weights E[f^2] = d (ReluNet.zero_predictor_error) and E|beta|^2 = d /
    # 2
    d = 5
    sample = ReluNet(hidden=50).sample(xs_for(4000, 1, d), make_generator(10))
    second_moment, beta = relu_net_moments(
        sample.params["first_layer"], sample.params["second_layer"]
    )
    f2, b2 = second_moment.numpy(), (beta**2).sum(1).numpy()
    assert abs(f2.mean() - d) < 4 * f2.std() / math.sqrt(f2.size)
    assert abs(b2.mean() - d / 2) < 4 * b2.std() / math.sqrt(b2.size)


def test_relu_net_moments_reject_bad_shapes():
    with pytest.raises(
        ValueError, match=r"^first_layer must be a tensor of shape \(batch, d, hidden\)"
    ):
        relu_net_moments(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(
        ValueError,
        match=r"^second_layer must be a tensor of shape \(batch, hidden\) = \(2, 4\)",
    ):
        relu_net_moments(torch.zeros(2, 3, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"^first_layer must hold finite numbers"):
        relu_net_moments(torch.full((1, 2, 2), float("nan")), torch.zeros(1, 2))


def test_sinusoid_labels_recomputed_from_params():
    xs = xs_for(40, 7, 3)
    task = Sinusoid(freq_min=0.5, freq_max=2.0, amplitude=1.7)
    sample = task.sample(xs, make_generator(6))
    p = params_np(sample)
    np.testing.assert_allclose(np.linalg.norm(p["direction"], axis=1), 1.0, atol=1e-12)
    assert np.all((0.5 <= p["frequency"]) & (p["frequency"] <= 2.0))
    assert np.all((0 <= p["phase"]) & (p["phase"] < 2 * np.pi))
    np.testing.assert_allclose(
        sample.ys.numpy(),
        np_sinusoid(xs.numpy(), p["direction"], p["frequency"], p["phase"], 1.7),
        atol=1e-12,
    )


def test_mixture_picks_components_with_the_given_frequencies_and_their_labels():
    d, batch = 4, 4000
    xs = xs_for(batch, 5, d)
    task = Mixture(
        components=(DenseLinear(), SparseLinear(k=2), Sinusoid()),
        weights=(0.2, 0.5, 0.3),
    )
    sample = task.sample(xs, make_generator(7))
    component = sample.params["component"].numpy()
    assert set(np.unique(component)) == {0, 1, 2}
    for i, weight in enumerate(task.weights):
        standard_error = math.sqrt(weight * (1 - weight) / batch)
        assert abs((component == i).mean() - weight) < 4 * standard_error
    x = xs.numpy()
    expected = [
        np_linear(x, sample.params["0.w"].numpy()),
        np_linear(x, sample.params["1.w"].numpy()),
        np_sinusoid(
            x,
            *(
                sample.params[f"2.{k}"].numpy()
                for k in ("direction", "frequency", "phase")
            ),
            1.0,
        ),
    ]
    for b in range(batch):
        np.testing.assert_allclose(
            sample.ys[b].numpy(), expected[component[b]][b], atol=1e-12
        )
    # the sparse component's support is exposed under its prefix
    assert np.all(sample.params["1.support"].numpy().sum(1) == 2)


def test_mixture_with_a_zero_weight_never_picks_that_component():
    task = Mixture(components=(DenseLinear(), SparseLinear(k=1)), weights=(0.0, 1.0))
    sample = task.sample(xs_for(300, 3, 3), make_generator(8))
    assert np.all(sample.params["component"].numpy() == 1)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_convex_combination_is_alpha_f1_plus_one_minus_alpha_f2(alpha):
    xs = xs_for(30, 6, 3)
    task = ConvexCombination(DenseLinear(), Sinusoid(amplitude=2.0), alpha=alpha)
    sample = task.sample(xs, make_generator(9))
    x = xs.numpy()
    f1 = np_linear(x, sample.params["first.w"].numpy())
    f2 = np_sinusoid(
        x,
        *(
            sample.params[f"second.{k}"].numpy()
            for k in ("direction", "frequency", "phase")
        ),
        2.0,
    )
    np.testing.assert_allclose(
        sample.ys.numpy(), alpha * f1 + (1 - alpha) * f2, atol=1e-12
    )
    if alpha == 1.0:
        np.testing.assert_allclose(sample.ys.numpy(), f1, atol=1e-12)
    if alpha == 0.0:
        np.testing.assert_allclose(sample.ys.numpy(), f2, atol=1e-12)


# ----------------------------------------------- zero predictor error by Monte Carlo


MONTE_CARLO_CASES = [
    (DenseLinear(), 20_000, 5, 5.0),
    (SparseLinear(k=3), 20_000, 5, 3.0),
    (DenseLinear(scale=0.5), 20_000, 8, 0.25 * 8),
    (ReluNet(hidden=100), 8_000, 5, 5.0),
    (Sinusoid(freq_min=0.5, freq_max=2.0, amplitude=1.5), 20_000, 5, 1.5**2 / 2),
    (
        Mixture(components=(DenseLinear(), SparseLinear(k=2)), weights=(0.25, 0.75)),
        20_000,
        5,
        0.25 * 5 + 0.75 * 2,
    ),
    (
        ConvexCombination(DenseLinear(), Sinusoid(), alpha=0.3),
        20_000,
        5,
        0.09 * 5 + 0.49 * 0.5,
    ),
]


@pytest.mark.parametrize(
    "task, batch, d, closed_form",
    MONTE_CARLO_CASES,
    ids=lambda v: getattr(v, "name", None),
)
def test_zero_predictor_error_matches_monte_carlo(task, batch, d, closed_form):
    assert task.zero_predictor_error(d) == pytest.approx(closed_form, rel=1e-12)
    xs = gaussian_xs(batch, 8, d, make_generator(10))
    ys = task.sample(xs, make_generator(11)).ys.double()
    # prompts are independent; points within one share the function
    per_prompt = (ys**2).mean(1)
    estimate = per_prompt.mean().item()
    standard_error = per_prompt.std().item() / math.sqrt(batch)
    assert standard_error < 0.01 * closed_form  # the tolerance below is meaningful
    assert abs(estimate / task.zero_predictor_error(d) - 1) < 0.03


def test_noisy_linear_zero_predictor_error_counts_the_signal_only():
    d, noise_std, batch = 5, 0.8, 20_000
    task = NoisyLinear(noise_std=noise_std)
    assert task.zero_predictor_error(d) == d
    xs = gaussian_xs(batch, 8, d, make_generator(12))
    ys = task.sample(xs, make_generator(13)).ys.double()
    # predicting 0 scores 1 + noise_std^2 / d after normalisation
    assert (
        abs(
            (ys**2).mean().item() / task.zero_predictor_error(d)
            - (1 + noise_std**2 / d)
        )
        < 0.03
    )


@pytest.mark.parametrize(
    "task", [DenseLinear(), SparseLinear(), ReluNet(), Sinusoid(), NoisyLinear()]
)
def test_zero_predictor_error_rejects_bad_d(task):
    with pytest.raises(ValueError, match=r"^d must be a positive integer"):
        task.zero_predictor_error(0)


# ----------------------------------------------- determinism and dtype


@pytest.mark.parametrize(
    "name, options",
    [
        ("linear", {}),
        ("sparse_linear", {"k": 2}),
        ("noisy_linear", {"noise_std": 0.1}),
        ("relu_net", {"hidden": 8}),
        ("finite_pool_linear", {"pool_size": 64}),
        ("finite_pool_linear", {"pool_size": 64, "draw": "gaussian"}),
        ("sinusoid", {}),
        (
            "mixture",
            {
                "components": [{"name": "linear"}, {"name": "sinusoid"}],
                "weights": [0.5, 0.5],
            },
        ),
        (
            "convex",
            {"first": {"name": "linear"}, "second": {"name": "relu_net", "hidden": 4}},
        ),
    ],
)
def test_same_seed_same_function_different_seed_different(name, options):
    task = make_task(name, **options)
    xs = gaussian_xs(16, 5, 3, make_generator(0))
    a, b, c = (task.sample(xs, make_generator(seed)) for seed in (21, 21, 22))
    assert torch.equal(a.ys, b.ys)
    assert a.params.keys() == b.params.keys()
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert not torch.allclose(a.ys, c.ys)
    assert a.ys.dtype == xs.dtype and a.ys.device.type == "cpu"


# ----------------------------------------------- make_task


def test_registry_names_every_class():
    assert set(TASKS) == {
        "linear",
        "sparse_linear",
        "noisy_linear",
        "finite_pool_linear",
        "relu_net",
        "sinusoid",
        "mixture",
        "convex",
        "linear_classification",
    }
    assert TASKS["sparse_linear"] is SparseLinear


def test_make_task_builds_classes_and_nested_components():
    assert make_task("sparse_linear", k=4) == SparseLinear(k=4)
    mixture = make_task(
        "mixture",
        components=[{"name": "linear"}, {"name": "sparse_linear", "k": 2}],
        weights=[0.5, 0.5],
    )
    assert mixture == Mixture(
        components=(DenseLinear(), SparseLinear(k=2)), weights=(0.5, 0.5)
    )
    convex = make_task(
        "convex",
        first=DenseLinear(),
        second={"name": "sinusoid", "amplitude": 2.0},
        alpha=0.25,
    )
    assert convex == ConvexCombination(
        DenseLinear(), Sinusoid(amplitude=2.0), alpha=0.25
    )


def test_make_task_rejects_unknown_name():
    with pytest.raises(
        ValueError, match=r"name must be one of 'linear', .*'convex'.*; got 'quadratic'"
    ):
        make_task("quadratic")


def test_make_task_rejects_unknown_option():
    with pytest.raises(
        ValueError,
        match=(
            r"unknown option\(s\) \['kk'\] for task 'sparse_linear'; accepted: \['k'\]"
        ),
    ):
        make_task("sparse_linear", kk=3)
    with pytest.raises(
        ValueError,
        match=(
            r"unknown option\(s\) \['noise_std'\] for task 'linear'; accepted: "
            r"\['scale'\]"
        ),
    ):
        make_task("linear", noise_std=0.1)


def test_components_are_function_classes_or_specs():
    assert make_task("mixture", components=["linear"], weights=[1.0]) == Mixture(
        (DenseLinear(),), (1.0,)
    )
    assert Mixture(
        components=[{"name": "sparse_linear", "k": 2}], weights=[1]
    ) == Mixture((SparseLinear(k=2),), (1,))
    with pytest.raises(
        ValueError,
        match=r"^components\[0\] must be a table with a 'name' \(one of \['linear', ",
    ):
        make_task("mixture", components=[{"k": 2}], weights=[1.0])
    with pytest.raises(
        ValueError,
        match=(
            r"^components\[1\] must be a function class \(with sample and "
            r"zero_predictor_error"
        ),
    ):
        make_task("mixture", components=["linear", 3], weights=[0.5, 0.5])
    with pytest.raises(
        ValueError,
        match=r"^components\[0\]\.name must be one of 'linear', .*; got 'cubic'",
    ):
        make_task("mixture", components=[{"name": "cubic"}], weights=[1.0])
    with pytest.raises(
        ValueError, match=r"^unknown option\(s\) \['kk'\] for second 'sparse_linear'"
    ):
        make_task("convex", first="linear", second={"name": "sparse_linear", "kk": 1})
    with pytest.raises(
        ValueError,
        match=r"^task 'convex' needs the option\(s\) \['second'\]; accepted: "
        r"\['first', 'second', 'alpha'\]",
    ):
        make_task("convex", first={"name": "linear"})


# ----------------------------------------------- bad input


@pytest.mark.parametrize(
    "task",
    [
        DenseLinear(),
        SparseLinear(k=1),
        NoisyLinear(),
        FinitePoolLinear(),
        ReluNet(hidden=2),
        Sinusoid(),
        Mixture((DenseLinear(),), (1.0,)),
        ConvexCombination(DenseLinear(), Sinusoid()),
    ],
)
def test_sample_rejects_wrongly_shaped_xs(task):
    with pytest.raises(
        ValueError,
        match=r"xs must be a tensor of shape \(batch, n_points, d\), got \(4, 3\)",
    ):
        task.sample(torch.zeros(4, 3), make_generator(0))


def test_sparse_linear_rejects_k_above_d():
    with pytest.raises(ValueError, match=r"k must be at most d = 3 .*got k = 4"):
        SparseLinear(k=4).sample(xs_for(2, 3, 3), make_generator(0))


@pytest.mark.parametrize(
    "factory, name",
    [
        (lambda: SparseLinear(k=0), "k"),
        (lambda: SparseLinear(k=-2), "k"),
        (lambda: ReluNet(hidden=0), "hidden"),
        (lambda: ReluNet(hidden=-5), "hidden"),
    ],
)
def test_sizes_must_be_positive(factory, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer"):
        factory()


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("inf"), float("nan")])
def test_convex_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"^alpha must .*\[0, 1\]"):
        ConvexCombination(DenseLinear(), Sinusoid(), alpha=alpha)


def test_mixture_weights_checked():
    with pytest.raises(ValueError, match=r"weights must sum to 1"):
        Mixture(components=(DenseLinear(), Sinusoid()), weights=(0.5, 0.6))
    with pytest.raises(
        ValueError, match=r"weights must have one entry per component \(2\), got 3"
    ):
        Mixture(components=(DenseLinear(), Sinusoid()), weights=(0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match=r"weights\[0\] must be a finite number >= 0"):
        Mixture(components=(DenseLinear(), Sinusoid()), weights=(-0.5, 1.5))
    with pytest.raises(
        ValueError, match=r"components must hold at least one function class"
    ):
        Mixture(components=(), weights=())


@pytest.mark.parametrize("noise_std", [-0.1, -1])
def test_negative_noise_std(noise_std):
    with pytest.raises(ValueError, match=r"^noise_std must be a finite number >= 0"):
        NoisyLinear(noise_std=noise_std)
    with pytest.raises(ValueError, match=r"^noise_std must be a finite number >= 0"):
        make_task("noisy_linear", noise_std=noise_std)


def test_sinusoid_options_checked():
    with pytest.raises(ValueError, match=r"freq_max must be >= freq_min"):
        Sinusoid(freq_min=2.0, freq_max=1.0)
    with pytest.raises(ValueError, match=r"^amplitude must be a finite number > 0"):
        Sinusoid(amplitude=0.0)
    with pytest.raises(ValueError, match=r"^freq_min must be a finite number >= 0"):
        Sinusoid(freq_min=-1.0)


def test_linear_classification_labels_are_signs_of_a_linear_function():
    from icl_lib.tasks import LinearClassification

    g = make_generator(0)
    xs = torch.randn(64, 9, 4, generator=g)
    sample = make_task("linear_classification").sample(xs, make_generator(1))
    scores = torch.einsum("bnd,bd->bn", xs, sample.params["w"])
    assert set(sample.ys.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(sample.ys, torch.where(scores >= 0, 1.0, -1.0))
    assert LinearClassification().zero_predictor_error(4) == 1.0
    assert 0.4 < (sample.ys > 0).float().mean().item() < 0.6


# ----------------------------------------------- finite pool of tasks (Raventos et al.)


def test_finite_pool_prompts_use_rows_of_the_pool_uniformly_with_gaussian_noise():
    task = FinitePoolLinear(pool_size=5, pool_seed=11, noise_std=0.3)
    xs = xs_for(40_000, 6, 3, seed=1)
    sample = task.sample(xs, make_generator(2))
    pool, index, w = (
        task.pool(3).numpy(),
        sample.params["index"].numpy(),
        sample.params["w"].numpy(),
    )
    # each prompt's task is the pool row it names
    np.testing.assert_array_equal(w, pool[index])
    counts = np.bincount(index, minlength=5) / len(index)
    assert (
        np.abs(counts - 0.2).max() < 0.01
    ), f"the pool should be drawn uniformly, got frequencies {counts}"
    residual = sample.ys.numpy() - np_linear(xs.numpy(), w)
    assert abs(residual.std() / 0.3 - 1) < 0.01 and abs(residual.mean()) < 0.003


def test_finite_pool_is_drawn_from_the_standard_gaussian_by_its_own_seed():
    """The pool depends on (pool_size, pool_seed, d) only: not on the training
    generator, the device, the dtype or the cache; another seed gives another pool; its
    rows are N(0, I_d) (Monte Carlo over 20000 rows)."""
    task = FinitePoolLinear(pool_size=20_000, pool_seed=4)
    pool = task.pool(5).numpy()
    assert abs(pool.mean()) < 0.01 and np.abs(np.cov(pool.T) - np.eye(5)).max() < 0.03
    assert not np.allclose(
        FinitePoolLinear(pool_size=20_000, pool_seed=5).pool(5), pool
    )
    small = FinitePoolLinear(pool_size=8, pool_seed=4)
    before = small.pool(3)
    from icl_lib import tasks as tasks_module

    tasks_module._cached_pool.cache_clear()
    torch.testing.assert_close(small.pool(3), before, rtol=0, atol=0)
    torch.testing.assert_close(
        small.pool(3, dtype=torch.float32), before.float(), rtol=0, atol=0
    )
    # the same prompts' tasks whichever generator state built the pool first
    xs = xs_for(16, 4, 3)
    first = small.sample(xs, make_generator(9))
    tasks_module._cached_pool.cache_clear()
    again = small.sample(xs, make_generator(9))
    assert torch.equal(first.ys, again.ys) and torch.equal(
        first.params["index"], again.params["index"]
    )
    copy = small.pool(3)
    copy += 1.0  # a copy: changing it leaves the task's pool alone
    torch.testing.assert_close(small.pool(3), before, rtol=0, atol=0)


def test_finite_pool_gaussian_draws_are_noisy_linear_bit_for_bit():
    xs = xs_for(32, 7, 4)
    fresh = FinitePoolLinear(pool_size=3, noise_std=0.4, draw="gaussian").sample(
        xs, make_generator(6)
    )
    noisy = NoisyLinear(noise_std=0.4).sample(xs, make_generator(6))
    assert torch.equal(fresh.ys, noisy.ys) and torch.equal(
        fresh.params["w"], noisy.params["w"]
    )
    assert "index" not in fresh.params
    # the Gaussian's E|w|^2 = d, for every draw
    assert FinitePoolLinear().zero_predictor_error(8) == 8.0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pool_size": 0}, r"^pool_size must be a positive integer"),
        ({"pool_size": 2**24 + 1}, r"^pool_size must be at most 2\^24"),
        ({"pool_seed": -1}, r"^pool_seed must be a non-negative integer"),
        ({"noise_std": -0.5}, r"^noise_std must be a finite number >= 0"),
        ({"draw": "fresh"}, r"^draw must be one of 'pool', 'gaussian'; got 'fresh'"),
    ],
)
def test_finite_pool_options_checked(options, message):
    with pytest.raises(ValueError, match=message):
        make_task("finite_pool_linear", **options)


@pytest.mark.parametrize(
    "spec, scale",
    [
        ({"name": "linear"}, 1.0),
        ({"name": "linear", "scale": 0.5}, 0.5),
        ({"name": "sparse_linear", "k": 2}, 1.0),
        (
            {
                "name": "mixture",
                "components": [
                    {"name": "linear", "scale": 0.25},
                    {"name": "sparse_linear", "k": 2},
                ],
                "weights": [0.5, 0.5],
            },
            0.25,
        ),
        (
            {
                "name": "mixture",
                "components": [{"name": "sparse_linear", "k": 2}],
                "weights": [1.0],
            },
            1.0,
        ),
    ],
)
def test_dense_label_scale_reads_the_dense_class_of_a_task_spec(spec, scale):
    assert tasks.dense_label_scale(spec) == scale
    # the scale is the one the task draws its labels at: E[f^2] = scale^2 d
    if spec["name"] == "linear":
        assert tasks.make_task(**spec).zero_predictor_error(8) == pytest.approx(
            scale**2 * 8
        )


def test_a_convex_combination_passes_the_curriculum_to_a_sparse_part():
    """Under a curriculum a sparse part keeps its support among the active coordinates,
    as it does on its own and in a Mixture: the combination's first part is SparseLinear
    drawn with the same generator state."""
    d, active = 6, 3
    xs = gaussian_xs(50, 5, d, make_generator(6))
    combo = ConvexCombination(first=SparseLinear(k=2), second=DenseLinear(), alpha=0.5)
    assert (
        combo.takes_active_dims
        and not ConvexCombination(
            first=DenseLinear(), second=DenseLinear()
        ).takes_active_dims
    )
    drawn = combo.sample(xs, make_generator(7), active_dims=active)
    alone = SparseLinear(k=2).sample(xs, make_generator(7), active_dims=active)
    assert torch.equal(drawn.params["first.support"], alone.params["support"])
    assert not drawn.params["first.support"][:, active:].any()


def test_a_mixture_drawn_per_batch_gives_every_prompt_of_a_batch_one_class_with_the_given_frequencies():
    """per="batch": one class per batch (Panwar et al.'s TwoTaskMixer); over many
    batches the classes come with the weights' frequencies, as the per-prompt draw's do
    over prompts."""
    task = Mixture(
        components=(DenseLinear(), SparseLinear(k=2), Sinusoid()),
        weights=(0.2, 0.5, 0.3),
        per="batch",
    )
    generator = make_generator(11)
    n_batches = 3000
    counts = np.zeros(3)
    for _ in range(n_batches):
        component = task.sample(xs_for(4, 3, 4), generator).params["component"].numpy()
        assert np.all(component == component[0])
        counts[component[0]] += 1
    for i, weight in enumerate(task.weights):
        assert abs(counts[i] / n_batches - weight) < 4 * math.sqrt(
            weight * (1 - weight) / n_batches
        )


def test_a_mixture_drawn_per_prompt_is_the_default_and_draws_as_before():
    xs = xs_for(64, 5, 4)
    default = Mixture(components=(DenseLinear(), SparseLinear(k=2)), weights=(0.5, 0.5))
    assert default.per == "prompt"
    explicit = Mixture(
        components=(DenseLinear(), SparseLinear(k=2)), weights=(0.5, 0.5), per="prompt"
    )
    a, b = default.sample(xs, make_generator(3)), explicit.sample(xs, make_generator(3))
    assert torch.equal(a.ys, b.ys) and torch.equal(
        a.params["component"], b.params["component"]
    )
    # the per-prompt class draw is one float64 uniform per prompt against the cumulative
    # weights
    uniform = torch.rand(64, generator=make_generator(3), dtype=torch.float64)
    assert torch.equal(a.params["component"], (uniform >= 0.5).long())
