"""In-context fits: prompts built per query, and the fit of a baseline against numpy's
least squares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_lib import baselines
from icl_lib.fits import in_context_fit, query_prompts


def test_query_prompts_repeat_the_examples_and_append_each_query():
    xs = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    ys = torch.tensor([5.0, 6.0])
    queries = torch.tensor([[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]])
    prompt_xs, prompt_ys = query_prompts(xs, ys, queries)
    assert prompt_xs.shape == (3, 3, 2) and prompt_ys.shape == (3, 3)
    for i in range(3):
        assert prompt_xs[i, :2].tolist() == [[1.0, 2.0], [3.0, 4.0]]
        assert prompt_xs[i, 2].tolist() == queries[i].tolist()
        assert prompt_ys[i].tolist() == [5.0, 6.0, 0.0]


def test_the_least_squares_fit_is_numpys_line_through_the_examples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 1))
    y = 2.0 * x[:, 0] - 0.5 + 0.1 * rng.normal(size=6)
    # Least squares without intercept, as the baseline fits it: slope = <x, y> / <x, x>.
    slope = float(np.linalg.lstsq(x, y, rcond=None)[0][0])
    grid = np.linspace(-2, 2, 9)[:, None]
    fit = in_context_fit(
        baselines.least_squares, torch.tensor(x), torch.tensor(y), torch.tensor(grid)
    )
    assert fit.shape == (9,)
    np.testing.assert_allclose(fit.numpy(), slope * grid[:, 0], rtol=1e-10, atol=1e-12)


def test_a_causal_model_does_not_see_the_zero_label_of_its_query():
    # A predictor that reads the label in the query's own slot would change the fit when
    # that label changes.
    def leaky(prompt_xs, prompt_ys):
        return prompt_ys + 1.0

    fit = in_context_fit(leaky, torch.zeros(2, 1), torch.ones(2), torch.zeros(4, 1))
    assert fit.tolist() == [1.0, 1.0, 1.0, 1.0], "query labels must be 0"


@pytest.mark.parametrize(
    ("xs", "ys", "queries", "got"),
    [
        (
            torch.zeros(3),
            torch.zeros(3),
            torch.zeros(2, 1),
            r"xs \(3,\), ys \(3,\), queries \(2, 1\)",
        ),
        (
            torch.zeros(3, 1),
            torch.zeros(2),
            torch.zeros(2, 1),
            r"xs \(3, 1\), ys \(2,\), queries \(2, 1\)",
        ),
        (
            torch.zeros(3, 1),
            torch.zeros(3),
            torch.zeros(2, 2),
            r"xs \(3, 1\), ys \(3,\), queries \(2, 2\)",
        ),
        (
            torch.zeros(3, 1),
            [0.0] * 3,
            torch.zeros(2, 1),
            r"xs \(3, 1\), ys list, queries \(2, 1\)",
        ),
    ],
)
def test_bad_shapes_are_shown_with_the_accepted_ones(xs, ys, queries, got):
    message = (
        r"^in_context_fit takes xs: \(k, d\), ys: \(k,\) and queries: \(m, d\) \(one "
        r"k, one d\), got "
    )
    with pytest.raises(ValueError, match=message + got + "$"):
        in_context_fit(lambda a, b: b, xs, ys, queries)


def test_a_predictor_with_the_wrong_output_shape_is_named():
    with pytest.raises(ValueError, match="predict"):
        in_context_fit(
            lambda a, b: b[:, :1], torch.zeros(2, 1), torch.zeros(2), torch.zeros(3, 1)
        )
