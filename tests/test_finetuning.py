"""ICL vs fine-tuning: the explicit forward pass against the model, fine-tuning against
torch.optim.SGD on a copy, and every metric against hand-computed cases and scipy."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.stats
import torch

from icl_lib import finetuning as ft
from icl_lib.devices import make_generator
from icl_lib.models import make_model
from icl_lib.tasks import LinearClassification

SPEC = {
    "name": "gpt",
    "n_layers": 2,
    "width": 16,
    "n_heads": 2,
    "token_format": "paired",
}


def prompts(batch=4, n_points=5, d=3, seed=0):
    g = make_generator(seed)
    xs = torch.randn(batch, n_points, d, generator=g)
    return xs, LinearClassification().sample(xs, g).ys


@pytest.mark.parametrize(
    "changes",
    [{}, {"attention": "momentum", "momentum": 0.6}, {"token_format": "interleaved"}],
)
def test_trace_equals_the_model(changes):
    model = make_model({**SPEC, **changes}, 3, 5, seed=0).eval()
    xs, ys = prompts()
    result = ft.trace(model, ft.icl_tokens(model, xs, ys))
    torch.testing.assert_close(result.predictions, model(xs, ys), rtol=1e-5, atol=1e-6)
    maps = result.attention_maps[0]
    torch.testing.assert_close(maps.sum(-1), torch.ones_like(maps[..., 0]))
    assert (maps.triu(1) == 0).all(), "attention must be causal"


def test_zero_shot_tokens_hide_every_label():
    model = make_model(SPEC, 3, 5, seed=0)
    xs, ys = prompts()
    assert (ft.zero_shot_tokens(model, xs, ys)[..., -1] == 0).all()
    assert (ft.icl_tokens(model, xs, ys)[:, 1::2, -1] == ys).all()


def test_finetuning_equals_sgd_on_a_copy_of_the_model():
    model = make_model(SPEC, 3, 5, seed=1).eval()
    xs, ys = prompts(batch=2, seed=2)
    rate = 0.05
    deltas = ft.finetune_key_value(model, xs, ys, rate)
    width = model.config.width
    # the reference: a copy of the model, SGD on its k, v rows only, one step per
    # demonstration
    for b in range(2):
        ref = copy.deepcopy(model)
        params = [blk.attn.qkv.weight for blk in ref.blocks] + [
            blk.attn.qkv.bias for blk in ref.blocks
        ]
        optimizer = torch.optim.SGD(params, lr=rate)
        for i in range(xs.shape[1] - 1):
            optimizer.zero_grad()
            loss = (
                ref(xs[b : b + 1], torch.zeros_like(ys[b : b + 1]))[0, i] - ys[b, i]
            ) ** 2
            loss.backward()
            for p in params:
                p.grad[:width] = 0  # the query rows stay fixed
            optimizer.step()
        for layer, (blk, blk0) in enumerate(zip(ref.blocks, model.blocks)):
            change = (blk.attn.qkv.weight - blk0.attn.qkv.weight).detach()
            assert change[:width].abs().max() == 0
            torch.testing.assert_close(
                deltas[layer].weight[b], change[width:], rtol=1e-4, atol=1e-6
            )
            torch.testing.assert_close(
                deltas[layer].bias[b],
                (blk.attn.qkv.bias - blk0.attn.qkv.bias)[width:].detach(),
                rtol=1e-4,
                atol=1e-6,
            )


def test_zero_learning_rate_is_zero_shot_and_random_control_has_the_same_norms():
    model = make_model(SPEC, 3, 5, seed=0).eval()
    xs, ys = prompts()
    c = ft.compare(model, xs, ys, 0.0, make_generator(0))
    torch.testing.assert_close(c.ft, c.zsl)
    deltas = ft.finetune_key_value(model, xs, ys, 0.1)
    random = ft.random_deltas_like(deltas, make_generator(3))
    for a, b in zip(deltas, random):
        torch.testing.assert_close(a.weight.norm(dim=(1, 2)), b.weight.norm(dim=(1, 2)))
        torch.testing.assert_close(a.bias.norm(dim=1), b.bias.norm(dim=1))


def test_rec2ftp_by_hand():
    t, f = True, False
    zsl = torch.tensor([f, f, f, f, t, t])
    ftc = torch.tensor([t, t, t, f, t, f])
    icl = torch.tensor([t, f, t, t, f, f])
    # FT right and ZSL wrong: examples 0, 1, 2; ICL right on 0 and 2 -> 2/3
    assert ft.rec2ftp(zsl, icl, ftc) == pytest.approx(2 / 3)
    assert math.isnan(
        ft.rec2ftp(torch.tensor([t]), torch.tensor([t]), torch.tensor([t]))
    )
    with pytest.raises(ValueError, match="zsl_correct must be a 1-d bool tensor"):
        ft.rec2ftp(torch.tensor([1, 0]), icl, ftc)


def test_correct_and_accuracy_by_hand():
    predictions = torch.tensor([0.3, -0.1, 0.0, -2.0])
    labels = torch.tensor([1.0, 1.0, 1.0, -1.0])
    assert ft.correct(predictions, labels).tolist() == [True, False, True, True]
    assert ft.accuracy(predictions, labels) == pytest.approx(0.75)


def test_sim_aou_and_sim_am_by_hand():
    h_zsl = torch.tensor([[1.0, 1.0]])
    h_icl = torch.tensor([[2.0, 1.0]])  # update (1, 0)
    h_ft = torch.tensor([[2.0, 2.0]])  # update (1, 1): cosine 1/sqrt(2)
    assert ft.sim_aou(h_zsl, h_icl, h_ft) == pytest.approx(1 / math.sqrt(2))
    assert ft.sim_aou(h_zsl, h_icl, torch.tensor([[1.0, 3.0]])) == pytest.approx(0.0)
    maps_a = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    maps_b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert ft.sim_am(maps_a, maps_b) == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert ft.cosine_similarity(torch.zeros(3), torch.ones(3)).item() == 0.0


def test_kendall_tau_by_hand_and_against_scipy():
    # a = (1, 2, 3), b = (1, 3, 2): pairs (1,2) C, (1,3) C, (2,3) D -> (2 - 1) / 3
    assert ft.kendall_tau(
        torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0])
    ).item() == pytest.approx(1 / 3)
    assert ft.kendall_tau(
        torch.arange(5.0), -torch.arange(5.0)
    ).item() == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    for n in (4, 7, 20):
        a, b = rng.normal(size=n), rng.normal(size=n)
        b[:2] = b[2]  # ties: tau-b
        a[3] = a[4 % n] if n > 4 else a[3]
        expected = scipy.stats.kendalltau(a, b).statistic
        assert ft.kendall_tau(torch.tensor(a), torch.tensor(b)).item() == pytest.approx(
            expected, abs=1e-12
        )
    rows = torch.tensor(rng.normal(size=(3, 6)))
    other = torch.tensor(rng.normal(size=(3, 6)))
    batched = ft.kendall_tau(rows, other)
    for i in range(3):
        assert batched[i].item() == pytest.approx(
            scipy.stats.kendalltau(rows[i], other[i]).statistic, abs=1e-12
        )
    assert math.isnan(ft.kendall_tau(torch.ones(4), torch.arange(4.0)).item())
    with pytest.raises(ValueError, match="n >= 2"):
        ft.kendall_tau(torch.ones(1), torch.ones(1))


def test_demonstration_attention_averages_layers_and_heads():
    maps = torch.zeros(1, 2, 2, 4)
    maps[0, 0, 0] = torch.tensor([0.2, 0.3, 0.1, 0.4])
    maps[0, 1, 1] = torch.tensor([0.6, 0.1, 0.1, 0.2])
    torch.testing.assert_close(
        ft.demonstration_attention(maps), torch.tensor([[0.2, 0.1, 0.05]])
    )


def test_bad_inputs_raise_value_errors():
    with pytest.raises(
        ValueError, match="model must be an icl_lib.models.GPT, got Linear"
    ):
        ft.zero_shot_tokens(torch.nn.Linear(2, 2), *prompts())
    model = make_model(SPEC, 3, 5, seed=0)
    with pytest.raises(
        ValueError, match="model must be an icl_lib.models.GPT, got Linear"
    ):
        ft.compare(torch.nn.Linear(2, 2), *prompts(), 0.1, make_generator(0))
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        ft.compare(model, *prompts(), 0.1, 7)
    with pytest.raises(ValueError, match="tokens must have shape"):
        ft.trace(model, torch.zeros(2, 4, 7))
    with pytest.raises(ValueError, match="learning_rate must be a finite number >= 0"):
        ft.finetune_key_value(model, *prompts(), -1.0)
    with pytest.raises(
        ValueError,
        match=(
            r"a and b must be tensors of one shape \(\.\.\., n\), got \[\(2,\), "
            r"\(3,\)\]"
        ),
    ):
        ft.cosine_similarity(torch.ones(2), torch.ones(3))
    with pytest.raises(
        ValueError,
        match=(
            r"predictions and labels must be tensors of one shape \(n,\), got .*'list'"
        ),
    ):
        ft.correct(torch.ones(2), [1.0, 1.0])


# ----------------------------------------- Dai et al.'s definitions and layer-causal GD


def test_trace_records_queries_scores_and_projected_outputs_like_numpy():
    model = make_model(SPEC, 3, 5, seed=3).eval().double()
    xs, ys = prompts(batch=2, seed=4)
    tokens = ft.icl_tokens(model, xs.double(), ys.double())
    result = ft.trace(model, tokens)
    # numpy reference for layer 0: LN(read_in(t) + pos), then the fused projection, per
    # head
    block = model.blocks[0]
    h = (
        (
            tokens @ model.read_in.weight.T
            + model.read_in.bias
            + model.positions.weight[: tokens.shape[1]]
        )
        .detach()
        .numpy()
    )
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    x = (h - mu) / np.sqrt(
        var + block.ln_1.eps
    ) * block.ln_1.weight.detach().numpy() + block.ln_1.bias.detach().numpy()
    qkv = (
        x @ block.attn.qkv.weight.detach().numpy().T
        + block.attn.qkv.bias.detach().numpy()
    )
    width, heads = model.config.width, model.config.n_heads
    hd = width // heads
    q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]
    np.testing.assert_allclose(
        result.queries[0].detach().numpy(), q / np.sqrt(hd), rtol=1e-10, atol=1e-12
    )
    for head in range(heads):
        s = (
            q[..., head * hd : (head + 1) * hd]
            @ np.swapaxes(k[..., head * hd : (head + 1) * hd], -1, -2)
            / np.sqrt(hd)
        )
        np.testing.assert_allclose(
            result.scores[0][:, head].detach().numpy(), s, rtol=1e-10, atol=1e-12
        )
    out = result.attention_outputs[0].detach().numpy()
    proj = (
        out @ block.attn.proj.weight.detach().numpy().T
        + block.attn.proj.bias.detach().numpy()
    )
    np.testing.assert_allclose(
        result.projected_outputs[0].detach().numpy(), proj, rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(result.layer_predictions[-1], result.predictions)
    # the first layer's read-out: final LN and read-out head on block 0's output
    h1 = model.blocks[0](
        tokens @ model.read_in.weight.T
        + model.read_in.bias
        + model.positions.weight[: tokens.shape[1]]
    )
    expected = model.read_out(model.ln_f(h1[:, 0::2]))[..., 0]
    torch.testing.assert_close(result.layer_predictions[0], expected)


def test_layer_causal_finetuning_equals_per_layer_sgd_on_a_copy():
    model = make_model(SPEC, 3, 5, seed=5).eval()
    xs, ys = prompts(batch=2, seed=6)
    rate = 0.05
    deltas = ft.finetune_key_value(model, xs, ys, rate, layer_causal=True)
    width = model.config.width
    # reference: a copy, each block updated from its own read-out with its input
    # detached
    for b in range(2):
        ref = copy.deepcopy(model)
        blank = torch.zeros_like(ys[b : b + 1])
        start = [
            (blk.attn.qkv.weight.detach().clone(), blk.attn.qkv.bias.detach().clone())
            for blk in ref.blocks
        ]
        for i in range(xs.shape[1] - 1):
            tokens = ref.tokens(xs[b : b + 1], blank)
            h = ref.read_in(tokens) + ref.positions.weight[: tokens.shape[1]]
            grads = []
            for blk in ref.blocks:
                h = blk(h.detach())
                loss = (ref.read_out(ref.ln_f(h[:, 0::2]))[0, i, 0] - ys[b, i]) ** 2
                grads.append(
                    torch.autograd.grad(loss, (blk.attn.qkv.weight, blk.attn.qkv.bias))
                )
            with torch.no_grad():
                for blk, (gw, gb) in zip(ref.blocks, grads):
                    blk.attn.qkv.weight[width:] -= rate * gw[width:]
                    blk.attn.qkv.bias[width:] -= rate * gb[width:]
        for layer, (blk, (w0, b0)) in enumerate(zip(ref.blocks, start)):
            torch.testing.assert_close(
                deltas[layer].weight[b],
                (blk.attn.qkv.weight - w0)[width:].detach(),
                rtol=1e-4,
                atol=1e-6,
            )
            torch.testing.assert_close(
                deltas[layer].bias[b],
                (blk.attn.qkv.bias - b0)[width:].detach(),
                rtol=1e-4,
                atol=1e-6,
            )


def test_recorded_training_queries_are_the_zero_shot_queries_when_nothing_changes():
    model = make_model(SPEC, 3, 5, seed=7).eval()
    xs, ys = prompts(batch=3, seed=8)
    record = ft.finetune_key_value_recorded(model, xs, ys, 0.0)
    reference = ft.trace(model, ft.zero_shot_tokens(model, xs, ys))
    expected = torch.stack(
        [q[:, : 2 * (xs.shape[1] - 1)] for q in reference.queries], dim=1
    )
    torch.testing.assert_close(record.training_queries, expected)
    assert record.training_queries.shape == (
        3,
        2,
        2 * (xs.shape[1] - 1),
        model.config.width,
    )


def test_dai_attention_helpers_against_numpy():
    rng = np.random.default_rng(1)
    q, training = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 6, 4))
    logits = np.einsum("blw,bltw->blt", q, training)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(
        ft.training_token_attention(torch.tensor(q), torch.tensor(training)).numpy(),
        expected,
        rtol=1e-12,
    )
    scores = rng.normal(size=(2, 3, 2, 7))
    summed = scores.sum(2)[..., :4]
    ctx = np.exp(summed) / np.exp(summed).sum(-1, keepdims=True)
    np.testing.assert_allclose(
        ft.context_attention(torch.tensor(scores), 4).numpy(), ctx, rtol=1e-12
    )
    np.testing.assert_allclose(
        ft.example_level(torch.tensor(ctx), 2).numpy(),
        ctx[..., 0::2] + ctx[..., 1::2],
        rtol=1e-12,
    )


def test_normalised_sim_aou_against_numpy():
    rng = np.random.default_rng(2)
    z, i, f = (
        rng.normal(size=(5, 3, 8)) * rng.uniform(0.5, 3, size=(5, 3, 1))
        for _ in range(3)
    )
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    u, v = unit(i) - unit(z), unit(f) - unit(z)
    expected = (
        (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    ).mean()
    got = ft.sim_aou(torch.tensor(z), torch.tensor(i), torch.tensor(f), normalize=True)
    assert got == pytest.approx(expected, abs=1e-12)
    plain = (
        ((i - z) * (f - z)).sum(-1)
        / np.linalg.norm(i - z, axis=-1)
        / np.linalg.norm(f - z, axis=-1)
    )
    assert ft.sim_aou(
        torch.tensor(z), torch.tensor(i), torch.tensor(f)
    ) == pytest.approx(plain.mean(), abs=1e-12)


def test_compare_reads_the_query_alone_and_layer_causal_changes_the_update():
    model = make_model(SPEC, 3, 5, seed=9).eval()
    xs, ys = prompts(batch=3, seed=10)
    c = ft.compare(model, xs, ys, 0.05, make_generator(0))
    with torch.no_grad():
        alone = model(xs[:, -1:], torch.zeros_like(ys[:, -1:]))[:, 0]
    torch.testing.assert_close(c.zsl_alone, alone)
    # FT read on the query alone (Dai et al.'s FTZS): a copy of the model after SGD on
    # its k, v rows, given the query
    width = model.blocks[0].attn.qkv.weight.shape[1]
    deltas = ft.finetune_key_value(model, xs, ys, 0.05)
    for b in range(xs.shape[0]):
        ref = copy.deepcopy(model)
        with torch.no_grad():
            for blk, delta in zip(ref.blocks, deltas):
                blk.attn.qkv.weight[width:] += delta.weight[b]
                blk.attn.qkv.bias[width:] += delta.bias[b]
            expected = ref(xs[b : b + 1, -1:], torch.zeros_like(ys[b : b + 1, -1:]))[
                0, 0
            ]
        torch.testing.assert_close(c.ft_alone[b], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(
        c.ft_alone, c.zsl_alone
    ), "fine-tuning should move the query-alone prediction"
    assert c.hp_icl.shape == c.h_icl.shape and c.scores_icl.shape == c.map_icl.shape
    lc = ft.compare(model, xs, ys, 0.05, make_generator(0), layer_causal=True)
    assert not torch.allclose(
        lc.ft, c.ft
    ), "layer-causal fine-tuning should differ from back-propagation"


# ----------------------------------------- every metric of one model (chapter 3)


# a bootstrap resample without a task that FT gets right and ZSL wrong gives NaN, and
# numpy warns
EMPTY_RESAMPLES = pytest.mark.filterwarnings(
    "ignore:Mean of empty slice:RuntimeWarning",
    "ignore:invalid value encountered:RuntimeWarning",
)


@EMPTY_RESAMPLES
def test_rec2ftp_excess_by_hand():
    t, f = True, False
    zsl = torch.tensor([f, f, f, f, t, t])
    ftc = torch.tensor([t, t, t, f, t, f])
    icl = torch.tensor([t, f, t, t, f, f])
    # FT right and ZSL wrong: 0, 1, 2, ICL right on 2 of them; ZSL wrong: 0..3, ICL
    # right on 3 of them
    value, _, _ = ft.rec2ftp_excess(zsl, icl, ftc, n_bootstrap=10)
    zn, icln, ftn = zsl.numpy(), icl.numpy(), ftc.numpy()
    assert value == icln[ftn & ~zn].mean() - icln[~zn].mean()
    assert value == pytest.approx(2 / 3 - 3 / 4)
    # many tasks: the interval holds the value and depends on the seed only
    g = make_generator(4)
    zsl, icl, ftc = (torch.rand(300, generator=g) < p for p in (0.3, 0.7, 0.6))
    value, low, high = ft.rec2ftp_excess(zsl, icl, ftc, n_bootstrap=500)
    assert value == (icl[ftc & ~zsl].double().mean() - icl[~zsl].double().mean()).item()
    assert low < value < high
    assert ft.rec2ftp_excess(zsl, icl, ftc, n_bootstrap=500) == (value, low, high)
    other_seed = ft.rec2ftp_excess(zsl, icl, ftc, n_bootstrap=500, seed=10)
    assert other_seed[0] == value and other_seed[1:] != (low, high)


PER_TASK_METRICS = [
    "SimAOU",
    "SimAOU random",
    "SimAOU uniform",
    "Dai SimAOU",
    "Dai SimAOU random",
    "Dai SimAOU uniform",
    "Dai SimAOU mean part",
    "Dai SimAOU centred",
    "SimAM before",
    "SimAM after",
    "Dai SimAM before",
    "Dai SimAM after",
    "Dai Kendall",
    "Dai Kendall example",
    "Dai Kendall uniform",
    "Kendall",
    "Kendall ZSL",
    "Kendall uniform",
]
OTHER_KEYS = [
    "model",
    "learning rate",
    "validation FT accuracy",
    "ZSL accuracy",
    "ICL accuracy",
    "FT accuracy",
    "Dai FT accuracy",
    "FT right, ZSL wrong",
    "Dai FT right, ZSL wrong",
    "Dai ICL right among them",
    "random right, ZSL wrong",
    "Rec2FTP",
    "Rec2FTP random",
    "Dai Rec2FTP",
    "Rec2FTP base rate",
    "Dai Rec2FTP base rate",
    "Rec2FTP excess",
    "Dai Rec2FTP excess",
    "per task",
    "per layer",
    "comparison",
]


@EMPTY_RESAMPLES
def test_dual_form_metrics_returns_the_documented_keys_and_is_deterministic():
    model = make_model(SPEC, 3, 5, seed=0).eval()
    val_xs, val_ys = prompts(batch=6, seed=1)
    test_xs, test_ys = prompts(batch=24, seed=2)
    rates = [0.01, 0.1, 1.0]

    def run(**changes):
        return ft.dual_form_metrics(
            model,
            "tiny",
            val_xs,
            val_ys,
            test_xs,
            test_ys,
            rates,
            n_bootstrap=50,
            **changes,
        )

    result = run()
    assert set(result) == set(OTHER_KEYS) | {
        key + suffix for key in PER_TASK_METRICS for suffix in ("", " CI")
    }
    assert result["model"] == "tiny"
    assert result["learning rate"] in rates
    assert list(result["validation FT accuracy"]) == rates
    assert result["validation FT accuracy"][result["learning rate"]] == max(
        result["validation FT accuracy"].values()
    )
    c = result["comparison"]
    assert result["FT accuracy"] == ft.accuracy(c.ft, c.labels)
    assert set(result["per task"]) == set(PER_TASK_METRICS)
    assert all(v.shape == (24,) for v in result["per task"].values())
    assert set(result["per layer"]) == set(PER_TASK_METRICS[:-3])
    assert all(v.shape == (2,) for v in result["per layer"].values())
    assert result["SimAOU"] == pytest.approx(
        ft.update_cosines(c.h_zsl, c.h_icl, c.h_ft).mean().item(), abs=1e-6
    )
    # two calls give the same numbers (every generator is seeded in the call)
    again = run()
    for key in set(OTHER_KEYS) - {"model", "comparison"} | {
        key + suffix for key in PER_TASK_METRICS for suffix in ("", " CI")
    }:
        torch.testing.assert_close(
            again[key], result[key], rtol=0, atol=0, equal_nan=True
        )
    for name in ("zsl", "icl", "ft", "random", "h_random", "training_queries"):
        assert torch.equal(getattr(again["comparison"], name), getattr(c, name))
    # layer-causal fine-tuning changes the FT side
    lcgd = run(layer_causal=True)
    assert lcgd["learning rate"] in rates
    assert not torch.equal(lcgd["per task"]["SimAOU"], result["per task"]["SimAOU"])
