"""Estimators a transformer competes with, batched over prompts and over prefix lengths.

Every baseline takes ``xs: (batch, n_points, d)`` and ``ys: (batch, n_points)`` and
returns ``preds: (batch, n_points)`` where ``preds[:, k]`` predicts ``ys[:, k]`` from
``xs[:, k]`` and the first k examples only (k = 0 .. n_points - 1): exactly what a
causal transformer reading the prompt predicts at the position of x_k. With no example
(k = 0) every baseline predicts 0, the prior mean, except :func:`dmmse`, whose prior
mean is the mean of its pool of tasks.

Computation is in float64 on the inputs' device; predictions come back in the inputs'
dtype.
"""

from __future__ import annotations

import itertools
import math

import torch

from icl_lib import checks
from icl_lib.devices import make_generator


def _float64(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt in float64, once checked: shapes, and finite values (a nan would fail
    deep in a solver or pass)."""
    # else lasso's max_steps = 8 d = 0 would take the blame
    if checks.prompt_tensors(xs, ys)[2] == 0:
        raise ValueError(
            "xs must have at least one input dimension (d >= 1), got shape "
            f"{tuple(xs.shape)}"
        )
    return checks.finite_tensor("xs", xs).to(torch.float64), checks.finite_tensor(
        "ys", ys
    ).to(torch.float64)


def _exclusive_cumsum(terms: torch.Tensor) -> torch.Tensor:
    """Sums over dim 1 where position k sums terms 0 .. k-1. Shifting (rather than
    subtracting term k from the inclusive sum) keeps example k and later ones out of
    position k exactly, not just up to rounding."""
    sums = torch.zeros_like(terms)
    torch.cumsum(terms[:, :-1], dim=1, out=sums[:, 1:])
    return sums


def _prefix_moments(
    xs: torch.Tensor, ys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over the first k examples: ``gram: (batch, n, d, d)`` = sum x x^T and ``xy:
    (batch, n, d)``."""
    outer = xs[..., :, None] * xs[..., None, :]
    return _exclusive_cumsum(outer), _exclusive_cumsum(ys[..., None] * xs)


def _predict(
    xs: torch.Tensor, weights: torch.Tensor, like: torch.Tensor
) -> torch.Tensor:
    """Apply per-prefix weights ``(batch, n, d)`` to the query inputs ``xs[:, k]``."""
    return torch.einsum("bnd,bnd->bn", xs, weights).to(like.dtype)


def least_squares(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares: w_k = pinv(X_k) y_k, where X_k holds the first k
    inputs.

    Below k = d the system is under-determined and the minimum-norm interpolant is the
    posterior mean for w ~ N(0, I) on noiseless data; from k = d on it recovers a linear
    function exactly.
    """
    x64, y64 = _float64(xs, ys)
    batch, n_points, d = xs.shape
    weights = torch.zeros(batch, n_points, d, dtype=torch.float64, device=xs.device)
    for k in range(1, n_points):
        weights[:, k] = (torch.linalg.pinv(x64[:, :k]) @ y64[:, :k, None]).squeeze(-1)
    return _predict(x64, weights, xs)


def ridge(xs: torch.Tensor, ys: torch.Tensor, penalty: float) -> torch.Tensor:
    """Ridge regression: w_k = argmin ||y_k - X_k w||^2 + penalty ||w||^2
    (penalty > 0)."""
    penalty = checks.positive_float("penalty", penalty)
    x64, y64 = _float64(xs, ys)
    gram, xy = _prefix_moments(x64, y64)
    eye = torch.eye(xs.shape[-1], dtype=torch.float64, device=xs.device)
    weights = torch.linalg.solve(gram + penalty * eye, xy[..., None]).squeeze(-1)
    return _predict(x64, weights, xs)


def bayes_linear(
    xs: torch.Tensor, ys: torch.Tensor, noise_std: float, prior_std: float = 1.0
) -> torch.Tensor:
    """Posterior mean for w ~ N(0, prior_std^2 I) and y = <w, x> + N(0, noise_std^2):
    Bayes-optimal.

    It is ridge with penalty (noise_std / prior_std)^2; for noise_std = 0 it is its
    limit, minimum-norm least squares.
    """
    noise_std = checks.nonnegative_float("noise_std", noise_std)
    prior_std = checks.positive_float("prior_std", prior_std)
    if noise_std == 0:
        return least_squares(xs, ys)
    return ridge(xs, ys, penalty=(noise_std / prior_std) ** 2)


def dmmse(
    xs: torch.Tensor,
    ys: torch.Tensor,
    pool: torch.Tensor,
    noise_std: float,
    max_elements: int = 2**20,
) -> torch.Tensor:
    """The discrete minimum-mean-squared-error estimator (dMMSE): the posterior mean
    over a finite pool of tasks.

    Prior: w uniform over the rows of ``pool: (M, d)``
    (:meth:`icl_lib.tasks.FinitePoolLinear.pool`); labels y_i = <w, x_i> + N(0,
    noise_std^2). After the first k examples the posterior weight of task m is
    proportional to exp(-sum_{i<k} (y_i - <w_m, x_i>)^2 / (2 noise_std^2)), and the
    prediction at x_k is sum_m p_m(k) <w_m, x_k>: the Bayes-optimal predictor when the
    prompts' tasks come from the pool. Computed for every prompt and prefix at once in
    float64, the weights by a log-sum-exp (softmax after subtracting the largest
    log-likelihood), in chunks of prompts holding at most ``max_elements`` entries of
    the ``(prompts, n_points, M)`` likelihood table. At k = 0 the posterior is the
    prior, so entry 0 is <mean of the pool, x_0>, not 0 as for the other baselines.
    """
    x64, y64 = _float64(xs, ys)
    batch, n_points, d = xs.shape
    if (
        not isinstance(pool, torch.Tensor)
        or pool.ndim != 2
        or pool.shape[1] != d
        or pool.shape[0] < 1
    ):
        got = (
            tuple(pool.shape) if isinstance(pool, torch.Tensor) else type(pool).__name__
        )
        raise ValueError(
            f"pool must be a tensor of shape (M, d) = (M, {d}) with M >= 1 tasks, got "
            f"{got}"
        )
    checks.finite_tensor("pool", pool)
    noise_std = checks.positive_float("noise_std", noise_std)
    max_elements = checks.positive_int("max_elements", max_elements)
    w64 = pool.to(device=xs.device, dtype=torch.float64)
    chunk = max(1, max_elements // (n_points * w64.shape[0]))
    scale = -1.0 / (2 * noise_std**2)
    # k = 0: the prior mean, the pool's mean
    preds = [(x64[:, 0] @ w64.mean(0))[:, None]]
    tail = []
    for start in range(0, batch, chunk):
        values = x64[start : start + chunk] @ w64.T  # (chunk, n, M): <w_m, x_i>
        # log-likelihood after k examples: scale * sum_{i<k} (y_i - <w_m, x_i>)^2, so
        # position k reads the cumulative sum at k - 1 and example k never enters its
        # own prediction.
        logits = (values[:, :-1] - y64[start : start + chunk, :-1, None]).square_()
        logits = torch.cumsum(logits, dim=1).mul_(scale)
        # log-sum-exp: the largest weight is 1
        logits = logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
        tail.append((logits * values[:, 1:]).sum(-1) / logits.sum(-1))
    if n_points > 1:
        preds.append(torch.cat(tail))
    return torch.cat(preds, dim=1)[:, :n_points].to(xs.dtype)


def oracle_least_squares(
    xs: torch.Tensor, ys: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """Least squares on the true support only. ``support: (batch, d)`` boolean (from
    ``SparseLinear``)."""
    batch, _, d = checks.prompt_tensors(xs, ys)
    if (
        not isinstance(support, torch.Tensor)
        or tuple(support.shape) != (batch, d)
        or support.dtype != torch.bool
    ):
        raise ValueError(
            f"support must be a boolean tensor of shape (batch, d) = {(batch, d)}"
        )
    # Zeroed columns get weight 0 in the minimum-norm solution, so this is least squares
    # on the support.
    return least_squares(xs * support[:, None, :].to(xs.dtype), ys)


def averaging(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Garg et al.'s averaging estimator: w_k = (1/k) sum_{i<k} y_i x_i (one GD step
    with step size 1)."""
    return gd_one_step(xs, ys, learning_rate=1.0)


def gd_one_step(
    xs: torch.Tensor,
    ys: torch.Tensor,
    learning_rate: float,
    preconditioner: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step of (preconditioned) gradient descent from w = 0 on L(w) = (1/2k)
    sum_{i<k} (<w, x_i> - y_i)^2.

    w_1 = learning_rate * P (1/k) sum_{i<k} y_i x_i, with P = ``preconditioner: (d, d)``
    (identity if None).
    """
    learning_rate = checks.nonnegative_float("learning_rate", learning_rate)
    x64, y64 = _float64(xs, ys)
    _, n_points, d = xs.shape
    if preconditioner is not None and not (
        isinstance(preconditioner, torch.Tensor) and preconditioner.shape == (d, d)
    ):
        got = (
            tuple(preconditioner.shape)
            if isinstance(preconditioner, torch.Tensor)
            else type(preconditioner).__name__
        )
        raise ValueError(
            f"preconditioner must be a tensor of shape (d, d) = {(d, d)}, got {got}"
        )
    _, xy = _prefix_moments(x64, y64)
    counts = torch.arange(n_points, dtype=torch.float64, device=xs.device).clamp_min(1)
    direction = xy / counts[None, :, None]
    if preconditioner is not None:
        direction = direction @ preconditioner.to(direction).T
    return _predict(x64, learning_rate * direction, xs)


def knn(xs: torch.Tensor, ys: torch.Tensor, n_neighbors: int = 3) -> torch.Tensor:
    """k-nearest neighbours: the mean label of the ``n_neighbors`` closest earlier
    inputs (all of them if fewer)."""
    n_neighbors = checks.positive_int("n_neighbors", n_neighbors)
    x64, y64 = _float64(xs, ys)
    _, n_points, _ = xs.shape
    distances = torch.cdist(x64, x64)  # (batch, query k, example i)
    earlier = torch.ones(n_points, n_points, dtype=torch.bool, device=xs.device).tril(
        diagonal=-1
    )
    distances = distances.masked_fill(~earlier, math.inf)
    m = min(n_neighbors, n_points)
    nearest_distances, nearest = distances.topk(m, dim=-1, largest=False)
    found = torch.isfinite(nearest_distances).to(torch.float64)
    labels = torch.gather(y64[:, None, :].expand(-1, n_points, -1), 2, nearest)
    preds = (labels * found).sum(-1) / found.sum(-1).clamp_min(1)
    return preds.to(xs.dtype)


def lasso(
    xs: torch.Tensor, ys: torch.Tensor, alpha: float, max_steps: int | None = None
) -> torch.Tensor:
    """Lasso, scikit-learn's objective without intercept, solved exactly for all prompts
    and prefixes at once.

    w_k = argmin (1/2k) ||y_k - X_k w||^2 + alpha ||w||_1. The solver follows the
    lasso's piecewise-linear solution path (the LARS-lasso homotopy) from lambda = max_j
    |<x_j, y>| / k, where w = 0, down to lambda = alpha, every problem of the ``(batch,
    n_points)`` batch advancing one event (a coordinate entering or leaving the active
    set) per step. It ends at the exact solution after as many steps as the longest path
    has events, where coordinate descent can need thousands of sweeps when alpha is
    small and k < d. ``max_steps`` (default 8 d) bounds the number of events.
    """
    alpha = checks.positive_float("alpha", alpha)
    x64, y64 = _float64(xs, ys)
    batch, n_points, d = xs.shape
    max_steps = checks.positive_int(
        "max_steps", 8 * d if max_steps is None else max_steps
    )
    gram, xy = _prefix_moments(x64, y64)
    counts = torch.arange(n_points, dtype=torch.float64, device=xs.device).clamp_min(1)
    gram = (gram / counts[None, :, None, None]).reshape(-1, d, d)
    xy = (xy / counts[None, :, None]).reshape(-1, d)
    weights = _lasso_path(gram, xy, alpha, max_steps)
    return _predict(x64, weights.reshape(batch, n_points, d), xs)


def _lasso_path(
    gram: torch.Tensor, xy: torch.Tensor, alpha: float, max_steps: int
) -> torch.Tensor:
    """Exact lasso solutions of min 1/2 w^T G w - c^T w + alpha ||w||_1 for ``gram: (P,
    d, d)``, ``xy: (P, d)``.

    KKT: c - G w = lambda * s with s_j = sign(w_j) on the active set A and |s_j| <= 1
    off it. On a segment of the path w_A(lambda) = G_AA^{-1} (c_A - lambda s_A), so w
    moves along u = G_AA^{-1} s_A as lambda falls, until an inactive correlation reaches
    +-lambda (it joins A) or an active weight reaches 0 (it leaves A).
    """
    problems, d = xy.shape
    weights = torch.zeros_like(xy)
    signs = torch.zeros_like(xy)
    active = torch.zeros_like(xy, dtype=torch.bool)
    lam, first = xy.abs().max(dim=1)
    done = lam <= alpha  # includes k = 0, where c = 0: w = 0 is the solution
    rows = torch.arange(problems, device=xy.device)
    start = ~done
    active[rows[start], first[start]] = True
    signs[rows[start], first[start]] = torch.sign(xy[rows[start], first[start]])
    # steps are in units of lambda: relative, so the path is scale-equivariant
    tiny = 1e-12 * lam[:, None]
    for _ in range(max_steps):
        if bool(done.all()):
            break
        both = active[:, :, None] & active[:, None, :]
        reduced = torch.where(both, gram, torch.zeros_like(gram)) + torch.diag_embed(
            (~active).to(gram.dtype)
        )
        # u, zero off A
        direction = torch.linalg.solve(reduced, (signs * active)[..., None]).squeeze(-1)
        correlation = xy - (gram @ weights[..., None]).squeeze(-1)  # r = c - G w
        # how fast r falls per unit decrease of lambda
        slope = (gram @ direction[..., None]).squeeze(-1)
        inf = torch.full_like(xy, math.inf)
        # An inactive coordinate joins when r_j - t a_j = +-(lambda - t). The gaps
        # lambda -+ r_j are >= 0 in exact arithmetic; clamping their rounding at 0 stops
        # a coordinate that has just left (|r_j| = lambda, moving away) from re-joining
        # at once with its old sign through a negative gap over a negative rate.
        join_up = (lam[:, None] - correlation).clamp_min(0) / (1 - slope)
        join_down = (lam[:, None] + correlation).clamp_min(0) / (1 + slope)
        join_up = torch.where((join_up > tiny) & ~active, join_up, inf)
        join_down = torch.where((join_down > tiny) & ~active, join_down, inf)
        join = torch.minimum(join_up, join_down)
        # An active weight leaves when w_j + t u_j = 0.
        leave = torch.where(active & (direction != 0), -weights / direction, inf)
        leave = torch.where(leave > tiny, leave, inf)
        join_step, join_at = join.min(dim=1)
        leave_step, leave_at = leave.min(dim=1)
        final_step = lam - alpha
        step = torch.minimum(torch.minimum(join_step, leave_step), final_step)
        step = torch.where(done, torch.zeros_like(step), step)
        weights = weights + step[:, None] * direction
        lam = lam - step
        joins = ~done & (step == join_step) & (step < final_step)
        leaves = ~done & (step == leave_step) & (step < final_step) & ~joins
        j = join_at[joins]
        active[rows[joins], j] = True
        signs[rows[joins], j] = torch.sign(
            correlation[rows[joins], j] - step[joins] * slope[rows[joins], j]
        )
        j = leave_at[leaves]
        active[rows[leaves], j] = False
        signs[rows[leaves], j] = 0
        weights[rows[leaves], j] = 0
        done = done | (step >= final_step)
    if not bool(done.all()):
        raise RuntimeError(
            f"lasso path did not reach alpha = {alpha} in max_steps = {max_steps} "
            "events"
        )
    # Polish: the exact solution on the final active set and signs, free of accumulated
    # rounding.
    both = active[:, :, None] & active[:, None, :]
    reduced = torch.where(both, gram, torch.zeros_like(gram)) + torch.diag_embed(
        (~active).to(gram.dtype)
    )
    return torch.linalg.solve(
        reduced, ((xy - alpha * signs) * active)[..., None]
    ).squeeze(-1)


def _dense_sparse_posterior(
    xs: torch.Tensor, ys: torch.Tensor, p_sparse: float, k_sparse: int, noise_std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    p_sparse = checks.unit_interval("p_sparse", p_sparse)
    k_sparse = checks.positive_int("k_sparse", k_sparse)
    noise_std = checks.positive_float("noise_std", noise_std)
    x64, y64 = _float64(xs, ys)
    batch, n_points, d = xs.shape
    if k_sparse > d:
        raise ValueError(f"k_sparse must be at most d = {d}, got {k_sparse}")
    supports = torch.tensor(
        list(itertools.combinations(range(d), k_sparse)), device=xs.device
    )  # (M, k)
    n_supports = supports.shape[0]
    log_prior = torch.tensor(
        [math.log(1 - p_sparse) if p_sparse < 1 else -math.inf]
        + [math.log(p_sparse) - math.log(n_supports) if p_sparse > 0 else -math.inf]
        * n_supports,
        dtype=torch.float64,
        device=xs.device,
    )
    variance = noise_std**2
    preds = torch.zeros(batch, n_points, dtype=torch.float64, device=xs.device)
    sparse_probability = torch.full(
        (batch, n_points), p_sparse, dtype=torch.float64, device=xs.device
    )
    for k in range(1, n_points):
        # Designs of every model: the dense one, then one per support; model m has s_m
        # columns.
        dense = x64[:, None, :k, :]  # (batch, 1, k, d)
        sparse = x64[:, :k, supports].permute(0, 2, 1, 3)  # (batch, M, k, k_sparse)
        # (batch, 1, d), (batch, M, k_sparse)
        queries = [x64[:, k, None, :], x64[:, k, supports]]
        scores, model_preds = [], []
        for design, query in zip((dense, sparse), queries):
            s = design.shape[-1]
            targets = y64[:, None, :k].expand(-1, design.shape[1], -1)
            gram = design.transpose(-1, -2) @ design
            factor = torch.linalg.cholesky(
                gram + variance * torch.eye(s, dtype=torch.float64, device=xs.device)
            )
            mean = torch.cholesky_solve(
                (design.transpose(-1, -2) @ targets[..., None]), factor
            ).squeeze(-1)
            # Penalised residual ||y - X m||^2 + sigma^2 ||m||^2 computed directly (no
            # cancellation).
            residual = ((targets - (design @ mean[..., None]).squeeze(-1)) ** 2).sum(
                -1
            ) + variance * (mean**2).sum(-1)
            log_det = 2 * torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(-1)
            # log N(y; 0, X X^T + sigma^2 I) up to terms shared by all models.
            scores.append(
                0.5 * s * math.log(variance) - 0.5 * log_det - residual / (2 * variance)
            )
            model_preds.append((query * mean).sum(-1))
        # (batch, 1 + M)
        posterior = torch.softmax(torch.cat(scores, dim=1) + log_prior, dim=1)
        preds[:, k] = (posterior * torch.cat(model_preds, dim=1)).sum(-1)
        sparse_probability[:, k] = posterior[:, 1:].sum(-1)
    return preds.to(xs.dtype), sparse_probability.to(xs.dtype)


def bayes_dense_sparse_mixture(
    xs: torch.Tensor, ys: torch.Tensor, p_sparse: float, k_sparse: int, noise_std: float
) -> torch.Tensor:
    """Bayes-optimal prediction (posterior mean) for the dense + sparse linear mixture.

    Prior: with probability 1 - p_sparse, w ~ N(0, I_d); with probability p_sparse, a
    support of ``k_sparse`` coordinates uniform among all C(d, k_sparse) and N(0, 1)
    weights on it. Labels carry N(0, noise_std^2) noise (noise_std > 0; for noiseless
    prompts a small value such as 1e-2 gives the posterior of nearly noiseless
    observations). The posterior is exact: it sums over the dense model and every
    support, each with its Gaussian marginal likelihood, so its cost grows as C(d,
    k_sparse).
    """
    return _dense_sparse_posterior(xs, ys, p_sparse, k_sparse, noise_std)[0]


def dense_sparse_posterior_probability(
    xs: torch.Tensor, ys: torch.Tensor, p_sparse: float, k_sparse: int, noise_std: float
) -> torch.Tensor:
    """Posterior probability ``(batch, n_points)`` that the prompt's function is sparse,
    after k examples.

    Same model as :func:`bayes_dense_sparse_mixture`; entry k uses the first k examples
    (entry 0 is the prior ``p_sparse``).
    """
    return _dense_sparse_posterior(xs, ys, p_sparse, k_sparse, noise_std)[1]


def _wave_grid(
    freq_min: float, freq_max: float, n_freq: int, n_phase: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoints of a grid on [freq_min, freq_max] x [0, 2 pi): ``freqs: (n_freq,)`` and
    ``phases: (n_phase,)``."""
    freq_min = checks.nonnegative_float("freq_min", freq_min)
    freq_max = checks.nonnegative_float("freq_max", freq_max)
    if freq_max < freq_min:
        raise ValueError(f"freq_max must be >= freq_min = {freq_min}, got {freq_max}")
    n_freq = checks.positive_int("n_freq", n_freq)
    n_phase = checks.positive_int("n_phase", n_phase)
    freqs = (
        freq_min
        + (freq_max - freq_min)
        * (torch.arange(n_freq, dtype=torch.float64) + 0.5)
        / n_freq
    )
    phases = 2 * math.pi * (torch.arange(n_phase, dtype=torch.float64) + 0.5) / n_phase
    return freqs, phases


def _wave_posterior_mean(
    xs: torch.Tensor,
    ys: torch.Tensor,
    hypotheses: list[tuple[float, float, float, bool]],
    freqs: torch.Tensor,
    phases: torch.Tensor,
    noise_std: float,
    max_elements: int,
) -> torch.Tensor:
    """Posterior mean for y = a w x + b sin(omega x + phi) + N(0, noise_std^2) in d = 1,
    w ~ N(0, 1).

    ``hypotheses`` lists groups ``(log_prior, a, b, on_grid)``: a group on the grid is
    one hypothesis per grid point (omega, phi), each with prior exp(log_prior) / H; a
    group off the grid has no wave (b is ignored) and prior exp(log_prior); the grid is
    every pair of ``freqs: (F,)`` and ``phases: (P,)``, H = F P. Given a hypothesis the
    residual r = y - b s is Gaussian with covariance sigma^2 I + a^2 x x^T, so w
    integrates out in closed form (Woodbury): with prefix sums Sxx, Sxr, Srr over the
    first k examples, precision = 1 + a^2 Sxx / sigma^2, log-likelihood =
    -(Srr - a^2 Sxr^2 / (sigma^2 precision)) / (2 sigma^2) - log(precision) / 2
    (dropping terms that all hypotheses share), and the prediction at x_k is
    b s(x_k) + a x_k (a Sxr / sigma^2) / precision.
    """
    batch, n_points, d = checks.prompt_tensors(xs, ys)
    if d != 1:
        raise ValueError(
            "xs must have d = 1 (in d = 1 the sinusoid's direction is a sign, folded "
            f"into the phase), got d = {d}"
        )
    noise_std = checks.positive_float("noise_std", noise_std)
    max_elements = checks.positive_int("max_elements", max_elements)
    x64, y64 = _float64(xs, ys)
    x64 = x64[..., 0]
    variance = noise_std**2
    freqs, phases = freqs.to(xs.device), phases.to(xs.device)
    n_grid = freqs.shape[0] * phases.shape[0]
    chunk = max(1, max_elements // (n_points * n_grid))

    out = []
    for start in range(0, batch, chunk):
        x, y = (
            x64[start : start + chunk, :, None],
            y64[start : start + chunk, :, None],
        )  # (c, n, 1)
        sxx = _exclusive_cumsum(x.square())
        logits, preds = [], []
        for log_prior, a, b, on_grid in hypotheses:
            # sin(omega x + phi) = sin(omega x) cos(phi) + cos(omega x) sin(phi): F
            # sines, not F P
            if on_grid:
                angles = x * freqs  # (c, n, F)
                residual = torch.sin(angles)[..., None] * torch.cos(phases)
                residual.addcmul_(torch.cos(angles)[..., None], torch.sin(phases))
                # (c, n, H): y - b sin(.) at (freqs[h // P], phases[h % P])
                residual = residual.flatten(-2).mul_(-b).add_(y)
            else:
                residual = y.clone()
            logit = _exclusive_cumsum(residual.square()).mul_(-1 / (2 * variance))
            logit.add_(log_prior - math.log(residual.shape[-1]))
            pred = residual.neg_().add_(y)  # b sin(.) at x_k, in place of the residual
            if a != 0:
                sxr = _exclusive_cumsum(x * (y - pred))
                precision = 1 + a**2 * sxx / variance
                logit.add_(sxr.square() * (a**2 / (2 * variance**2)) / precision).sub_(
                    0.5 * torch.log(precision)
                )
                pred.add_(sxr * (a**2 / variance) * x / precision)
            logits.append(logit)
            preds.append(pred)
        # log-sum-exp over all groups
        top = torch.stack([logit.amax(-1) for logit in logits]).amax(0)[..., None]
        numerator, denominator = 0, 0
        for logit, pred in zip(logits, preds):
            weight = logit.sub_(top).exp_()
            numerator = numerator + (weight * pred).sum(-1)
            denominator = denominator + weight.sum(-1)
        out.append(numerator / denominator)
    return torch.cat(out).to(xs.dtype)[..., :n_points]


def bayes_convex_sinusoid(
    xs: torch.Tensor,
    ys: torch.Tensor,
    alpha: float,
    noise_std: float,
    freq_min: float = 0.5,
    freq_max: float = 2.0,
    n_freq: int = 96,
    n_phase: int = 128,
    max_elements: int = 2**22,
) -> torch.Tensor:
    """Grid-Bayes predictor for f(x) = alpha w x + (1 - alpha) sin(omega x + phi) in
    d = 1 (``tasks.ConvexCombination``).

    Prior: w ~ N(0, 1), omega uniform on [freq_min, freq_max], phi uniform on [0, 2 pi)
    (``tasks.Sinusoid``, amplitude 1; in d = 1 the direction v = -1 is the phase pi -
    phi, so it adds nothing), labels with N(0, noise_std^2) noise. The posterior over
    (omega, phi) is computed on an ``n_freq`` x ``n_phase`` grid of midpoints, w
    integrated out exactly; the grid approximates the continuous prior, so ``noise_std``
    should exceed the grid's largest residual (about |x| * step_omega / 2 + step_phi /
    2, some 0.04 for the defaults and |x| <= 2.5). alpha = 0 is the sinusoid class's
    posterior mean, alpha = 1 Bayesian linear regression.
    """
    alpha = checks.unit_interval("alpha", alpha)
    freqs, phases = _wave_grid(freq_min, freq_max, n_freq, n_phase)
    return _wave_posterior_mean(
        xs, ys, [(0.0, alpha, 1 - alpha, True)], freqs, phases, noise_std, max_elements
    )


def bayes_linear_sinusoid_mixture(
    xs: torch.Tensor,
    ys: torch.Tensor,
    p_linear: float,
    noise_std: float,
    freq_min: float = 0.5,
    freq_max: float = 2.0,
    n_freq: int = 96,
    n_phase: int = 128,
    max_elements: int = 2**22,
) -> torch.Tensor:
    """Grid-Bayes predictor for the mixture: f(x) = w x with probability p_linear, else
    sin(omega x + phi), d = 1.

    The two classes as in :func:`bayes_convex_sinusoid` (its alpha = 1 and alpha = 0);
    the posterior weighs the linear class's marginal likelihood against every grid
    point's. The Bayes-optimal predictor for a model pretrained on ``tasks.Mixture`` of
    ``linear`` and ``sinusoid`` with weights (p_linear, 1 - p_linear).
    """
    p_linear = checks.unit_interval("p_linear", p_linear)
    freqs, phases = _wave_grid(freq_min, freq_max, n_freq, n_phase)
    groups = [
        (math.log(p), a, b, grid)
        for p, a, b, grid in (
            (p_linear, 1.0, 0.0, False),
            (1 - p_linear, 0.0, 1.0, True),
        )
        if p > 0
    ]
    return _wave_posterior_mean(xs, ys, groups, freqs, phases, noise_std, max_elements)


def relu_net_init(
    batch: int,
    n_points: int,
    d: int,
    hidden: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Initial weights of :func:`relu_net_gd`'s networks, one per prompt and prefix
    length k.

    ``first: (batch, n_points, d, hidden)`` ~ N(0, 1/d), ``first_bias: (batch, n_points,
    hidden)`` = 0, ``second: (batch, n_points, hidden)`` ~ N(0, 1/hidden),
    ``second_bias: (batch, n_points)`` = 0. The sizes come from :func:`relu_net_gd`,
    which checks them.
    """
    device = generator.device
    first = torch.randn(
        batch, n_points, d, hidden, generator=generator, device=device, dtype=dtype
    ) / math.sqrt(d)
    second = torch.randn(
        batch, n_points, hidden, generator=generator, device=device, dtype=dtype
    ) / math.sqrt(hidden)
    return {
        "first": first,
        "first_bias": torch.zeros(batch, n_points, hidden, device=device, dtype=dtype),
        "second": second,
        "second_bias": torch.zeros(batch, n_points, device=device, dtype=dtype),
    }


def relu_net_gd(
    xs: torch.Tensor,
    ys: torch.Tensor,
    hidden: int = 100,
    steps: int = 100,
    learning_rate: float = 1e-2,
    seed: int = 0,
) -> torch.Tensor:
    """A two-layer ReLU network fitted by gradient descent (Adam, full batch) to the
    first k examples, for each k.

    For every prompt and every k >= 1, a network f(x) = sum_j a_j relu(<v_j, x> + c_j) +
    b with ``hidden`` units, initialised by :func:`relu_net_init` from ``seed``, takes
    ``steps`` Adam steps of size ``learning_rate`` on (1/k) sum_{i<k} (f(x_i) - y_i)^2
    and predicts ``ys[:, k]`` from ``xs[:, k]`` (Garg et al.'s "2-layer NN, GD"
    baseline). All ``batch * n_points`` networks train at once: their losses are summed,
    so each network's gradient is its own, and Adam acts coordinate-wise, so each runs
    its own Adam. Computed in float32 (not float64 like the other baselines: it is by
    far the most expensive). ``xs: (batch, n, d)``, ``ys: (batch, n)`` -> ``(batch,
    n)``.
    """
    batch, n_points, d = checks.prompt_tensors(xs, ys)
    checks.finite_tensor("xs", xs)
    checks.finite_tensor("ys", ys)
    hidden = checks.positive_int("hidden", hidden)
    steps = checks.nonnegative_int("steps", steps)
    learning_rate = checks.nonnegative_float("learning_rate", learning_rate)
    generator = make_generator(checks.nonnegative_int("seed", seed), xs.device)
    x32, y32 = xs.detach().to(torch.float32), ys.detach().to(torch.float32)
    params = {
        k: v.requires_grad_()
        for k, v in relu_net_init(batch, n_points, d, hidden, generator).items()
    }
    # mask[k, i] = 1 if example i is among the first k (i < k), weighted 1/k: each
    # network's loss is a mean.
    counts = torch.arange(n_points, device=xs.device, dtype=torch.float32)
    mask = (
        torch.ones(n_points, n_points, device=xs.device).tril(diagonal=-1)
        / counts.clamp_min(1)[:, None]
    )

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        """``inputs: (batch, m, d)`` -> outputs of every network ``(batch, n_points,
        m)``."""
        pre = (
            torch.einsum("bmd,bkdh->bkmh", inputs, params["first"])
            + params["first_bias"][:, :, None, :]
        )
        return (
            torch.einsum("bkmh,bkh->bkm", torch.relu(pre), params["second"])
            + params["second_bias"][..., None]
        )

    with torch.enable_grad():
        optimizer = torch.optim.Adam(list(params.values()), lr=learning_rate)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = (((forward(x32) - y32[:, None, :]) ** 2) * mask).sum()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        outputs = forward(x32)  # (batch, k, m): network k at input m
        preds = torch.diagonal(outputs, dim1=1, dim2=2)  # network k at its query x_k
        preds = preds * (counts > 0)  # no example: predict 0
    return preds.to(xs.dtype)
