"""Models: LSA against its closed form in numpy, the reduced form, the GD construction,
GPT causality and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_lib.baselines import gd_one_step
from icl_lib.devices import make_generator
from icl_lib import checkpoints
from icl_lib.models import (
    GPT,
    MODEL_PRESETS,
    MODELS,
    GPTConfig,
    LinearSelfAttention,
    LinearTransformer,
    ReducedLSA,
    count_parameters,
    default_theta,
    make_model,
    model_spec,
    zfb_init,
)
from icl_lib.prompts import lsa_embedding


def random_prompt(
    batch: int, n_points: int, d: int, seed: int = 0, dtype=torch.float64
):
    g = make_generator(seed)
    return torch.randn(batch, n_points, d, generator=g, dtype=dtype), torch.randn(
        batch, n_points, generator=g, dtype=dtype
    )


def tiny_gpt(
    token_format: str, n_dims: int = 3, n_points: int = 6, seed: int = 0
) -> GPT:
    spec = {
        "name": "gpt",
        "n_layers": 2,
        "width": 16,
        "n_heads": 2,
        "token_format": token_format,
    }
    return make_model(spec, n_dims, n_points, seed=seed).double()


# ------------------------------------------------------ Zhang-Frei-Bartlett LSA


def np_block_prediction(
    xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray, u: float, U: np.ndarray
) -> np.ndarray:
    """u (1/N) sum_i y_i x_i^T U x_q, prompt by prompt and example by example."""
    batch, n, _ = xs.shape
    out = np.zeros(batch)
    for b in range(batch):
        out[b] = u * sum(ys[b, i] * xs[b, i] @ U @ x_query[b] for i in range(n)) / n
    return out


def test_lsa_with_block_weights_predicts_the_closed_form():
    d, n = 3, 7
    xs, ys = random_prompt(4, n, d, seed=1)
    x_query = torch.randn(4, d, generator=make_generator(2), dtype=torch.float64)
    rng = np.random.default_rng(0)
    u, U = 0.7, rng.standard_normal((d, d))
    w_kq = np.zeros((d + 1, d + 1))
    w_kq[:d, :d] = U
    w_pv = np.zeros((d + 1, d + 1))
    w_pv[d, d] = u
    model = LinearSelfAttention.from_weights(torch.tensor(w_kq), torch.tensor(w_pv))
    pred = model.predict(lsa_embedding(xs, ys, x_query))
    np.testing.assert_allclose(
        pred.detach().numpy(),
        np_block_prediction(xs.numpy(), ys.numpy(), x_query.numpy(), u, U),
        rtol=1e-12,
        atol=1e-12,
    )


def test_lsa_transform_is_the_definition_and_predict_reads_its_corner():
    d, n = 2, 5
    xs, ys = random_prompt(3, n, d, seed=3)
    x_query = torch.randn(3, d, generator=make_generator(4), dtype=torch.float64)
    g = make_generator(5)
    w_kq, w_pv = (
        torch.randn(d + 1, d + 1, generator=g, dtype=torch.float64),
        torch.randn(d + 1, d + 1, generator=g, dtype=torch.float64),
    )
    model = LinearSelfAttention.from_weights(w_kq, w_pv)
    embedding = lsa_embedding(xs, ys, x_query)
    E, Wkq, Wpv = embedding.numpy(), w_kq.numpy(), w_pv.numpy()
    expected = np.stack(
        [E[b] + Wpv @ E[b] @ (E[b].T @ Wkq @ E[b]) / n for b in range(3)]
    )
    out = model.transform(embedding).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        model.predict(embedding).detach().numpy(),
        expected[:, d, n],
        rtol=1e-12,
        atol=1e-12,
    )
    # forward on a prompt reads the last point as the query and never its label
    prompt_xs = torch.cat((xs, x_query[:, None]), dim=1)
    for last_label in (0.0, 123.0):
        prompt_ys = torch.cat(
            (ys, torch.full((3, 1), last_label, dtype=torch.float64)), dim=1
        )
        np.testing.assert_allclose(
            model(prompt_xs, prompt_ys)[:, 0].detach().numpy(),
            expected[:, d, n],
            rtol=1e-12,
        )


def test_reduced_lsa_equals_full_lsa_with_block_weights():
    d, n = 4, 9
    xs, ys = random_prompt(5, n + 1, d, seed=6)
    reduced = ReducedLSA(d).double()
    with torch.no_grad():
        reduced.u.fill_(-1.3)
        reduced.U.copy_(
            torch.randn(d, d, generator=make_generator(7), dtype=torch.float64)
        )
    w_kq, w_pv = reduced.full_weights()
    assert (
        torch.equal(w_kq[:d, :d], reduced.U)
        and torch.all(w_kq[d] == 0)
        and torch.all(w_kq[:, d] == 0)
    )
    assert w_pv[d, d] == reduced.u and torch.count_nonzero(w_pv) == 1
    full = LinearSelfAttention.from_weights(w_kq, w_pv)
    torch.testing.assert_close(reduced(xs, ys), full(xs, ys), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reduced.product, reduced.u * reduced.U)
    # The full model's product reads the same A = u U off its block weights.
    torch.testing.assert_close(
        full.product,
        torch.full((), -1.3, dtype=torch.float64) * reduced.U,
        rtol=0,
        atol=0,
    )


def test_zfb_initialisation_and_its_checks():
    d, sigma = 3, 0.25
    theta = torch.randn(d, 2, generator=make_generator(8), dtype=torch.float64)
    # ||theta theta^T||_F = 1
    theta = theta / torch.linalg.matrix_norm(theta @ theta.T) ** 0.5
    w_kq, w_pv = zfb_init(d, sigma, theta, dtype=torch.float64)
    expected_kq = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    expected_kq[:d, :d] = sigma * theta @ theta.T
    torch.testing.assert_close(w_kq, expected_kq)
    assert w_pv[d, d] == sigma and torch.count_nonzero(w_pv) == 1
    # the default theta has ||theta theta^T||_F = 1, and the reduced model starts at
    # u = sigma, U = sigma theta theta^T
    assert (
        abs(torch.linalg.matrix_norm(default_theta(5) @ default_theta(5).T).item() - 1)
        < 1e-12
    )
    reduced = ReducedLSA(d, sigma=sigma, theta=theta)
    assert reduced.u.item() == pytest.approx(sigma)
    torch.testing.assert_close(
        reduced.U.double(), sigma * theta @ theta.T, rtol=1e-6, atol=1e-7
    )
    full = LinearSelfAttention(d, sigma=sigma, theta=theta)
    torch.testing.assert_close(full.w_kq, w_kq.float())
    with pytest.raises(ValueError, match="theta"):
        zfb_init(d, sigma, 2 * theta)
    with pytest.raises(ValueError, match="theta"):
        zfb_init(d, sigma, torch.eye(d + 1))
    with pytest.raises(ValueError, match="sigma"):
        zfb_init(d, 0.0)


# ------------------------------------------------------ von Oswald's linear transformer


def np_gd_predictions(
    xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray, eta: float, n_steps: int
) -> np.ndarray:
    """n_steps of GD from w = 0 on (1/2N) sum_i (<w, x_i> - y_i)^2; the prediction <w,
    x_q>."""
    batch, n, d = xs.shape
    out = np.zeros(batch)
    for b in range(batch):
        w = np.zeros(d)
        for _ in range(n_steps):
            w = w - eta * xs[b].T @ (xs[b] @ w - ys[b]) / n
        out[b] = w @ x_query[b]
    return out


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_linear_transformer_with_the_gd_construction_is_gradient_descent(n_layers):
    d, n, eta = 3, 8, 0.4
    xs, ys = random_prompt(4, n + 1, d, seed=9)
    model = LinearTransformer(d, n_layers).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.P.zero_()
            layer.P[d, d] = -eta
            layer.Q.zero_()
            layer.Q[:d, :d] = torch.eye(d)
    pred = model(xs, ys)[:, 0].detach().numpy()
    expected = np_gd_predictions(
        xs[:, :n].numpy(), ys[:, :n].numpy(), xs[:, n].numpy(), eta, n_layers
    )
    np.testing.assert_allclose(pred, expected, rtol=1e-10, atol=1e-12)
    if n_layers == 1:  # and the library's one-step GD baseline agrees
        np.testing.assert_allclose(
            pred, gd_one_step(xs, ys, eta)[:, n].numpy(), rtol=1e-10
        )


def test_linear_transformer_context_excludes_the_query():
    d, n = 2, 5
    xs, ys = random_prompt(2, n + 1, d, seed=10)
    model = LinearTransformer(d, 2, init_std=0.3).double()
    tokens = lsa_embedding(xs[:, :n], ys[:, :n], xs[:, n]).transpose(1, 2)
    out = model.transform(tokens, n)
    # recompute layer by layer with numpy: sums over the n context rows only
    z = tokens.numpy().copy()
    for layer in model.layers:
        P, Q = layer.P.detach().numpy(), layer.Q.detach().numpy()
        z = np.stack(
            [
                z[b]
                + (P @ sum(np.outer(z[b, i], z[b, i]) for i in range(n)) @ Q @ z[b].T).T
                / n
                for b in range(2)
            ]
        )
    np.testing.assert_allclose(out.detach().numpy(), z, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------ GPT


@pytest.mark.parametrize("token_format", ["interleaved", "paired", "compact"])
def test_gpt_is_causal_changing_later_tokens_never_changes_earlier_predictions(
    token_format,
):
    n_points, d = 6, 3
    model = tiny_gpt(token_format, d, n_points).eval()
    xs, ys = random_prompt(2, n_points, d, seed=11)
    with torch.no_grad():
        base = model(xs, ys)
        assert base.shape == (2, n_points)
        for i in range(n_points):
            # y_j for j >= i and x_j for j > i come after the token of x_i
            later_ys = ys.clone()
            later_ys[:, i:] += 5.0
            later_xs = xs.clone()
            later_xs[:, i + 1 :] -= 3.0
            changed = model(later_xs, later_ys)
            torch.testing.assert_close(
                changed[:, : i + 1], base[:, : i + 1], rtol=0, atol=0
            )
            # ...while the prediction at x_i does depend on x_i and on y_{i-1} (the
            # model is not trivially constant)
            moved_x = xs.clone()
            moved_x[:, i] += 1.0
            assert not torch.allclose(model(moved_x, ys)[:, i], base[:, i])
            if i > 0:
                moved_y = ys.clone()
                moved_y[:, i - 1] += 1.0
                assert not torch.allclose(model(xs, moved_y)[:, i], base[:, i])


def test_gpt_pads_missing_dimensions_and_accepts_shorter_prompts():
    model = tiny_gpt("interleaved", n_dims=4, n_points=6).eval()
    xs, ys = random_prompt(2, 4, 2, seed=12)
    padded = torch.cat((xs, torch.zeros(2, 4, 2, dtype=xs.dtype)), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(model(xs, ys), model(padded, ys), rtol=0, atol=0)
        full_xs, full_ys = random_prompt(2, 6, 4, seed=13)
        torch.testing.assert_close(
            model(full_xs[:, :4], full_ys[:, :4]),
            model(full_xs, full_ys)[:, :4],
            rtol=0,
            atol=0,
        )
    with pytest.raises(ValueError, match="n_points"):
        model(*random_prompt(1, 7, 4))
    with pytest.raises(ValueError, match="n_dims"):
        model(*random_prompt(1, 3, 5))


def test_the_presets_are_the_book_sizes():
    """Garg et al.'s GPT-2 (12 layers, width 256, 8 heads, their interleaved tokens) has
    about 9.5M parameters at d = 20; the laptop GPT about 150k at d = 5; a preset's keys
    can be overridden."""
    paper = make_model({"preset": "paper"}, 20, 41)
    assert 9.4e6 < count_parameters(paper) < 9.6e6
    assert count_parameters(
        make_model({"name": "gpt", "n_layers": 12, "width": 256, "n_heads": 8}, 20, 41)
    ) == count_parameters(paper)
    assert paper.config.token_format == "interleaved"
    laptop = make_model({"preset": "laptop"}, 5, 11)
    assert 1.4e5 < count_parameters(laptop) < 1.6e5
    assert (
        laptop.config.n_layers,
        laptop.config.width,
        laptop.config.n_heads,
        laptop.config.token_format,
    ) == (3, 64, 2, "paired")
    assert model_spec({"preset": "laptop", "token_format": "interleaved"}) == {
        "name": "gpt",
        "n_layers": 3,
        "width": 64,
        "n_heads": 2,
        "token_format": "interleaved",
    }
    assert (
        model_spec({"name": "gpt", "preset": "laptop_deep"})
        == MODEL_PRESETS["laptop_deep"]
    )
    assert model_spec({"name": "lsa"}) == {"name": "lsa"}


def test_configs_with_a_preset_resolve_to_the_tables_their_committed_runs_stored():
    """A run stores its model table written out: the preset key must give back what the
    committed runs recorded (so that their recorded commands replay and resume), and the
    default TrainConfig is the laptop preset."""
    from icl_lib.train import TrainConfig, load_config

    assert TrainConfig().model == MODEL_PRESETS["laptop"]
    compared = 0
    for path in sorted((checkpoints.repository_root() / "configs").glob("*.toml")):
        meta = checkpoints.checkpoints_root() / path.stem / checkpoints.META_FILE
        if "preset" in path.read_text() and meta.is_file():
            stored = checkpoints.load_meta(meta.parent)["config"]["model"]
            assert list(load_config(path).model.items()) == list(
                stored.items()
            ), path.name
            compared += 1
    assert compared >= 20


@pytest.mark.parametrize(
    "spec",
    [
        {
            "name": "gpt",
            "n_layers": 2,
            "width": 16,
            "n_heads": 4,
            "token_format": "interleaved",
        },
        {
            "name": "gpt",
            "n_layers": 2,
            "width": 16,
            "n_heads": 4,
            "token_format": "paired",
        },
        {
            "name": "gpt",
            "n_layers": 2,
            "width": 16,
            "n_heads": 4,
            "token_format": "compact",
        },
        {"name": "lsa"},
        {"name": "reduced_lsa"},
        {"name": "linear_transformer", "n_layers": 3, "init_std": 0.2},
    ],
    ids=lambda spec: f"{spec['name']}-{spec.get('token_format', '')}",
)
def test_every_parameter_gets_a_gradient(spec):
    model = make_model(spec, 3, 6, seed=0)
    # the ZFB initialisation has zero gradient on blocks that stay zero; use random
    # weights
    if spec["name"] == "lsa":
        g = make_generator(14)
        model = LinearSelfAttention.from_weights(
            torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
        )
    xs, ys = random_prompt(4, 6, 3, seed=15, dtype=torch.float32)
    preds = model(xs, ys)
    ((preds - ys[:, ys.shape[1] - preds.shape[1] :]) ** 2).mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_a_single_batch_can_be_overfitted():
    model = make_model(
        {
            "name": "gpt",
            "n_layers": 2,
            "width": 32,
            "n_heads": 2,
            "token_format": "paired",
        },
        2,
        5,
        seed=0,
    )
    xs, ys = random_prompt(8, 5, 2, seed=16, dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(300):
        optimizer.zero_grad()
        loss = ((model(xs, ys) - ys) ** 2).mean()
        first = loss.item() if first is None else first
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.01 * first, f"loss {loss.item():.4g} from {first:.4g}"


def test_make_model_is_seeded_and_leaves_the_global_random_state_alone():
    spec = {"name": "gpt", "n_layers": 1, "width": 8, "n_heads": 2}
    before = torch.get_rng_state()
    a, b = make_model(spec, 2, 3, seed=1), make_model(spec, 2, 3, seed=1)
    c = make_model(spec, 2, 3, seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    for (name, pa), pb, pc in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values()
    ):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.read_in.weight, c.read_in.weight)
    assert set(MODELS) == {"gpt", "lsa", "reduced_lsa", "linear_transformer"}


def test_the_registry_maps_names_to_constructors_and_the_gpts_options_are_its_configs():
    import inspect

    from icl_lib.models import gpt, predicts_every_position

    def options(kind):
        return [
            (name, p.default) for name, p in inspect.signature(kind).parameters.items()
        ]

    assert options(gpt) == options(GPTConfig)  # same names, order and defaults
    assert [name for name in MODELS if predicts_every_position(name)] == ["gpt"]
    for name in MODELS:
        built = make_model({"name": name}, 2, 3, seed=0)
        assert isinstance(
            built, torch.nn.Module
        ) and built.predicts_every_position == predicts_every_position(name)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"width": 30, "n_heads": 4}, "width"),
        ({"n_layers": -1}, "n_layers"),
        ({"n_heads": 0}, "n_heads"),
        ({"token_format": "pairs"}, "token_format"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_gpt_config_errors_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        GPTConfig(**{"n_dims": 3, "n_points": 5, **changes})
    with pytest.raises(ValueError, match=f"model.{field}"):
        make_model({"name": "gpt", **changes}, 3, 5)


def test_make_model_rejects_unknown_names_and_options():
    with pytest.raises(
        ValueError,
        match=(
            r"model\.name must be one of 'gpt', 'lsa', 'reduced_lsa', "
            r"'linear_transformer'"
        ),
    ):
        make_model({"name": "bert"}, 3, 5)
    with pytest.raises(
        ValueError,
        match=(
            r"unknown option\(s\) \['depth'\] for model 'gpt'; accepted: "
            r"\['n_layers', "
        ),
    ):
        make_model({"name": "gpt", "depth": 3}, 3, 5)
    with pytest.raises(
        ValueError,
        match=r"unknown option\(s\) \['n_points'\] for model 'lsa'; accepted: "
        r"\['sigma', 'theta'\]",
    ):
        make_model({"name": "lsa", "n_points": 5}, 3, 5)
    with pytest.raises(
        ValueError,
        match=(
            r"model\.preset must be one of 'laptop', 'laptop_deep', 'paper'; got "
            r"'huge'"
        ),
    ):
        make_model({"preset": "huge"}, 3, 5)
    with pytest.raises(
        ValueError,
        match=r"model\.name must be 'gpt' with a preset \(or left out\), got 'lsa'",
    ):
        make_model({"preset": "laptop", "name": "lsa"}, 3, 5)
    with pytest.raises(
        ValueError, match=r"model\.init_std must be a finite number >= 0"
    ):
        make_model({"name": "linear_transformer", "init_std": -0.1}, 3, 5)
    with pytest.raises(ValueError, match="model.sigma"):
        make_model({"name": "lsa", "sigma": -1.0}, 3, 5)
    with pytest.raises(ValueError, match="n_points"):
        make_model({"name": "lsa"}, 3, 1)
    with pytest.raises(ValueError, match="n_dims"):
        make_model({"name": "gpt"}, -3, 5)


# ------------------------------------------------------ momentum attention (chapter 3)


def test_momentum_term_recursion_equals_the_explicit_sum():
    from icl_lib.models import momentum_term

    values = torch.randn(2, 3, 7, 4, generator=make_generator(0), dtype=torch.float64)
    eta = 0.7
    explicit = torch.zeros_like(values)
    for t in range(7):
        for i in range(t):
            explicit[..., t, :] += eta ** (t - i) * values[..., i, :]
    torch.testing.assert_close(
        momentum_term(values, eta), explicit, rtol=1e-12, atol=1e-12
    )
    assert momentum_term(values, eta)[..., 0, :].abs().max() == 0


def test_momentum_gpt_is_softmax_gpt_plus_the_momentum_term_and_stays_causal():
    xs, ys = random_prompt(3, 6, 4, dtype=torch.float32)
    spec = {
        "name": "gpt",
        "n_layers": 1,
        "width": 16,
        "n_heads": 2,
        "token_format": "paired",
    }
    plain = make_model(spec, 4, 6, seed=0).eval()
    default = make_model({**spec, "attention": "softmax"}, 4, 6, seed=0).eval()
    momentum = make_model(
        {**spec, "attention": "momentum", "momentum": 0.5}, 4, 6, seed=0
    ).eval()
    assert torch.equal(
        plain(xs, ys), default(xs, ys)
    ), "the default must stay the plain model, bit for bit"
    assert not torch.allclose(plain(xs, ys), momentum(xs, ys))
    changed = ys.clone()
    changed[:, 3:] += 1.0
    torch.testing.assert_close(momentum(xs, ys)[:, :4], momentum(xs, changed)[:, :4])


def test_momentum_config_is_checked():
    with pytest.raises(
        ValueError, match="attention must be one of 'softmax', 'momentum'"
    ):
        GPTConfig(n_dims=2, n_points=3, attention="linear")
    with pytest.raises(ValueError, match=r"momentum must lie in \(0, 1\)"):
        GPTConfig(n_dims=2, n_points=3, attention="momentum", momentum=0.0)
    with pytest.raises(
        ValueError, match="momentum must be 0 when attention = 'softmax'"
    ):
        GPTConfig(n_dims=2, n_points=3, momentum=0.5)
