"""Theory of the Zhang-Frei-Bartlett LSA against independent references: Monte Carlo of
the model's predictions (ReducedLSA and the full LSA in torch), Monte Carlo moments in
numpy, finite differences, exact sympy identities, and the flow's own invariants. Every
symbolic step runs in well under a few seconds on one core."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch

from icl_lib import theory
from icl_lib.devices import make_generator
from icl_lib.models import LinearSelfAttention, ReducedLSA
from icl_lib.samplers import gaussian_xs

# =================================================== helpers


def random_covariance(d: int, seed: int, floor: float = 0.3) -> np.ndarray:
    """A random positive definite (d, d) covariance with eigenvalues >= floor."""
    b = np.random.default_rng(seed).standard_normal((d, d))
    return b @ b.T / d + floor * np.eye(d)


def lambda_values(s: theory.LSASymbols, lam: np.ndarray) -> dict:
    """Substitution {Lambda symbol: number} for the symbols of ``s.Lambda`` (identity:
    nothing to substitute)."""
    values = {}
    d = lam.shape[0]
    for i in range(d):
        for j in range(d):
            entry = s.Lambda[i, j]
            if isinstance(entry, sp.Symbol):
                values[entry] = sp.Float(lam[i, j], 30)
    return values


def evaluate(
    expr: sp.Expr, s: theory.LSASymbols, a: np.ndarray | None, lam: np.ndarray, n: int
) -> float:
    """A symbolic expression of the problem ``s`` at A = ``a``, Lambda = ``lam``,
    N = ``n``."""
    values = {s.N: sp.Integer(n), **lambda_values(s, lam)}
    if a is not None:
        values.update({s.A[i]: sp.Float(a.flat[i], 30) for i in range(a.size)})
    return float(expr.xreplace(values))


def monte_carlo_errors(
    model: torch.nn.Module, lam: np.ndarray, n: int, batch: int, seed: int
) -> np.ndarray:
    """Squared errors (yhat - <w, x_q>)^2 of ``model`` on ``batch`` prompts of N = ``n``
    examples and a query, x ~ N(0, lam), w ~ N(0, I_d), y = <w, x>, in float64."""
    d = lam.shape[0]
    g = make_generator(seed)
    xs = gaussian_xs(batch, n + 1, d, g, cov=torch.tensor(lam), dtype=torch.float64)
    w = torch.randn(batch, d, generator=g, dtype=torch.float64)
    ys = torch.einsum("bnd,bd->bn", xs, w)
    with torch.no_grad():
        predictions = model(xs, ys)[:, 0]
    return ((predictions - ys[:, -1]) ** 2).numpy()


def reduced_lsa(a: np.ndarray, u: float = 0.8) -> ReducedLSA:
    """A float64 ReducedLSA with u U = ``a``."""
    model = ReducedLSA(a.shape[0]).double()
    with torch.no_grad():
        model.u.fill_(u)
        model.U.copy_(torch.tensor(a / u))
    return model


def transposed_closed_form(a: np.ndarray, lam: np.ndarray, n: int) -> float:
    """The closed form with the other transpose, tr(A^T Lambda A Lambda Gamma) - ...:
    what x_q^T A (1/N) sum y_i x_i would give. Monte Carlo of the book's model must
    reject it."""
    g = theory.gamma(lam, n)
    return float(
        np.trace(a.T @ lam @ a @ lam @ g)
        - 2 * np.trace(a.T @ lam @ lam)
        + np.trace(lam)
    )


def is_zero(matrix: sp.Matrix) -> bool:
    return all(sp.expand(entry) == 0 for entry in matrix)


# =================================================== Wick / Isserlis


def test_pairings_are_the_perfect_matchings():
    for k in (0, 2, 4, 6):
        matchings = list(theory.pairings(list(range(k))))
        assert len(matchings) == math.prod(range(1, k, 2))  # (k - 1)!!
        assert len({frozenset(map(frozenset, m)) for m in matchings}) == len(matchings)
        assert all(
            sorted(x for pair in m for x in pair) == list(range(k)) for m in matchings
        )
    # odd: no matching, so odd moments vanish
    assert list(theory.pairings([0, 1, 2])) == []


def test_wick_fourth_and_sixth_moments_match_numpy_monte_carlo():
    lam = random_covariance(3, seed=1)
    cov = sp.Matrix(lam.tolist())
    x = np.random.default_rng(2).multivariate_normal(np.zeros(3), lam, size=400_000)
    for indices in (
        (0, 0, 0, 0),
        (0, 1, 2, 2),
        (0, 1, 0, 1),
        (0, 0, 1, 2, 2, 1),
        (1, 1, 1, 1, 1, 1),
    ):
        products = np.prod(x[:, list(indices)], axis=1)
        expected = float(theory.wick_expectation(indices, cov))
        standard_error = products.std() / math.sqrt(len(products))
        assert abs(products.mean() - expected) < 4 * standard_error, (
            indices,
            products.mean(),
            expected,
        )
    assert theory.wick_expectation((0, 1, 2), cov) == 0
    # the tensor: E[x_a x_b x_c x_e] at a few entries, against the same Monte Carlo
    tensor = theory.isserlis_fourth_moment(3, cov)
    assert tensor.shape == (3, 3, 3, 3)
    mc = (
        np.einsum("ta,tb,tc,te->abce", x[:50_000], x[:50_000], x[:50_000], x[:50_000])
        / 50_000
    )
    np.testing.assert_allclose(np.array(tensor.tolist(), dtype=float), mc, atol=0.15)


@pytest.mark.parametrize("d", [2, 3])
def test_isserlis_identity_holds_symbolically_for_full_lambda_and_general_m(d):
    lam, _ = theory.lambda_matrix(d, "full")
    m = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"m_{i}{j}", real=True))
    fourth = theory.fourth_moment_quadratic(m, lam)
    assert fourth.shape == (d, d)
    assert is_zero(fourth - (lam * (m + m.T) * lam + (m * lam).trace() * lam))
    # the M + M^T matters: with M not symmetric, 2 Lambda M Lambda + tr(M Lambda) Lambda
    # is wrong
    assert not is_zero(fourth - (2 * lam * m * lam + (m * lam).trace() * lam))


def test_sample_moment_covariance_matches_monte_carlo():
    lam, n = random_covariance(2, seed=3), 3
    second = theory.sample_moment_covariance(sp.Matrix(lam.tolist()), sp.Integer(n))
    x = np.random.default_rng(4).multivariate_normal(
        np.zeros(2), lam, size=(200_000, n)
    )
    s = np.einsum("tia,tib->tab", x, x) / n
    for a, b, c, e in ((0, 0, 0, 0), (0, 1, 0, 1), (0, 0, 1, 1), (0, 1, 1, 1)):
        products = s[:, a, b] * s[:, c, e]
        standard_error = products.std() / math.sqrt(len(products))
        assert abs(products.mean() - float(second[a, b, c, e])) < 4 * standard_error


# =================================================== the population loss


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("lambda_kind", ["identity", "diagonal", "full"])
def test_wick_loss_equals_the_closed_form(d, lambda_kind):
    loss, s = theory.lsa_population_loss(d, lambda_kind)
    assert s.A.shape == (d, d) and s.Lambda.shape == (d, d) and s.Lambda.is_symmetric()
    assert loss.free_symbols <= set(s.A) | set(s.lambda_symbols) | {s.N}
    assert theory.check_closed_form_loss(d, lambda_kind)
    assert sp.expand(loss - theory.closed_form_loss(s.A, s.Lambda, s.N)) == 0
    # the other transpose, tr(A^T Lambda A Lambda Gamma), is a different function of A
    # unless Lambda = I
    gamma = theory.symbolic_gamma(s.Lambda, s.N)
    other = (
        (s.A.T * s.Lambda * s.A * s.Lambda * gamma).trace()
        - 2 * (s.A.T * s.Lambda**2).trace()
        + s.Lambda.trace()
    )
    assert (sp.expand(loss - other) == 0) == (lambda_kind == "identity")


@pytest.mark.parametrize("d, n, seed", [(2, 3, 10), (3, 2, 11)])
def test_symbolic_loss_matches_monte_carlo_of_the_reduced_lsa(d, n, seed):
    """E[(yhat - y)^2] of ReducedLSA (u U = A) on sampled prompts equals the symbolic
    loss at random A, Lambda, N, within 4 standard errors; the transposed formula is
    rejected; so is the loss with a factor 1/2."""
    loss, s = theory.lsa_population_loss(d, "full")
    # an anisotropic Lambda and an A far from symmetric in its eigenbasis, rotated to a
    # generic basis: there the two transposes differ by 2 (A_12^2 - A_21^2)-like terms,
    # far more than the Monte Carlo error
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    lam = q @ np.diag([2.0, 0.5, 1.0][:d]) @ q.T
    lam = (lam + lam.T) / 2
    a = q @ np.triu(np.full((d, d), 1.0) - 0.6 * np.eye(d)) @ q.T
    errors = monte_carlo_errors(reduced_lsa(a), lam, n, batch=400_000, seed=seed)
    mean, standard_error = errors.mean(), errors.std() / math.sqrt(len(errors))
    symbolic = evaluate(loss, s, a, lam, n)
    assert abs(mean - symbolic) < 4 * standard_error, (mean, symbolic, standard_error)
    # the numpy closed form agrees
    assert abs(symbolic - theory.lsa_loss(a, lam, n)) < 1e-10 * symbolic
    assert abs(mean - transposed_closed_form(a, lam, n)) > 8 * standard_error
    assert abs(mean - symbolic / 2) > 8 * standard_error


def test_loss_at_gamma_inverse_matches_monte_carlo_of_the_full_lsa_with_optimal_weights():
    lam, n = random_covariance(2, seed=12), 4
    w_kq, w_pv = theory.optimal_weights(lam, n)
    model = LinearSelfAttention.from_weights(torch.tensor(w_kq), torch.tensor(w_pv))
    errors = monte_carlo_errors(model, lam, n, batch=400_000, seed=13)
    expected = theory.lsa_test_loss(lam, n, n)
    assert abs(errors.mean() - expected) < 4 * errors.std() / math.sqrt(len(errors))
    # the balanced optimum: W^KQ_11 W^PV_22 = Gamma^{-1}, equal Frobenius norms of the
    # two factors
    d = lam.shape[0]
    np.testing.assert_allclose(
        w_kq[:d, :d] * w_pv[d, d], theory.gamma_inverse(lam, n), rtol=1e-12
    )
    assert w_pv[d, d] ** 2 == pytest.approx(np.sum(w_kq**2), rel=1e-12)


@pytest.mark.parametrize("d", [2, 3])
def test_matrix_level_argument_steps_vanish(d):
    """The matrix-level argument for general d, each step checked at concrete d (full
    symbolic Lambda, symbolic N): E[S M S] = (1 - 1/N) Lambda M Lambda + (1/N)(Lambda
    (M + M^T) Lambda + tr(M Lambda) Lambda) for any M, and tr E[S M S] = tr(M Lambda
    Gamma) for symmetric M. With E_w E_xq (w^T B x_q)^2 = tr(B Lambda B^T), B = S A - I
    and M = A Lambda A^T, they give the closed form of L(A) for every d."""
    lam, _ = theory.lambda_matrix(d, "full")
    n = sp.Symbol("N", positive=True)
    m = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"m_{i + 1}{j + 1}", real=True))
    m_sym = sp.Matrix(
        d, d, lambda i, j: sp.Symbol(f"m_{min(i, j) + 1}{max(i, j) + 1}", real=True)
    )
    second = theory.sample_moment_covariance(lam, n)

    def sandwich(
        mat: sp.Matrix,
    ) -> sp.Matrix:  # E[S M S]: entry (a, e) = sum_{b, c} E[S_ab S_ce] M_bc
        return sp.Matrix(
            d,
            d,
            lambda i, e: sp.Add(
                *(second[i, b, c, e] * mat[b, c] for b in range(d) for c in range(d))
            ),
        )

    expected = (1 - 1 / n) * lam * m * lam + (
        lam * (m + m.T) * lam + (m * lam).trace() * lam
    ) / n
    assert (sandwich(m) - expected).applyfunc(sp.expand).is_zero_matrix
    assert (
        sp.expand(
            sandwich(m_sym).trace()
            - (m_sym * lam * theory.symbolic_gamma(lam, n)).trace()
        )
        == 0
    )


def test_closed_form_is_rotation_invariant_which_justifies_the_eigenbasis():
    lam, n = random_covariance(3, seed=14), 5
    q, _ = np.linalg.qr(np.random.default_rng(15).standard_normal((3, 3)))
    a = np.random.default_rng(16).standard_normal((3, 3))
    rotated = theory.lsa_loss(q @ a @ q.T, q @ lam @ q.T, n)
    assert rotated == pytest.approx(theory.lsa_loss(a, lam, n), rel=1e-12)


# =================================================== stationary point, Hessian, minimum


@pytest.mark.parametrize(
    "d, lambda_kind",
    [(2, "identity"), (3, "identity"), (2, "diagonal"), (3, "diagonal"), (2, "full")],
)
def test_linsolve_stationary_point_is_gamma_inverse(d, lambda_kind):
    result = theory.stationary_point(d, lambda_kind)
    assert result.equals_gamma_inverse
    assert all(
        sp.simplify(entry) == 0 for entry in result.solution - result.gamma_inverse
    )
    # a unique solution, no free parameter
    assert not (result.solution.free_symbols & set(result.symbols.A))
    # and numerically: Gamma^{-1} of numpy at a random Lambda
    lam = (
        random_covariance(d, seed=20 + d)
        if lambda_kind == "full"
        else (
            np.diag(np.random.default_rng(d).uniform(0.3, 2.0, d))
            if lambda_kind == "diagonal"
            else np.eye(d)
        )
    )
    values = {result.symbols.N: 7, **lambda_values(result.symbols, lam)}
    numeric = np.array(result.solution.xreplace(values).tolist(), dtype=float)
    np.testing.assert_allclose(numeric, theory.gamma_inverse(lam, 7), rtol=1e-12)


@pytest.mark.parametrize("d, lambda_kind", [(2, "full"), (3, "diagonal"), (3, "full")])
def test_gradient_hessian_and_commutation_identities(d, lambda_kind):
    assert theory.gradient_identities(d, lambda_kind) == {
        "gradient": True,
        "commute": True,
        "hessian_constant": True,
        "hessian_kron": True,
    }


def test_gradient_identity_agrees_with_finite_differences_of_the_numpy_loss():
    lam, n = random_covariance(3, seed=21), 4
    a = np.random.default_rng(22).standard_normal((3, 3))
    g = theory.gamma(lam, n)
    gradient = 2 * lam @ g @ a @ lam - 2 * lam @ lam
    step, numeric = 1e-6, np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            e = np.zeros((3, 3))
            e[i, j] = step
            numeric[i, j] = (
                theory.lsa_loss(a + e, lam, n) - theory.lsa_loss(a - e, lam, n)
            ) / (2 * step)
    np.testing.assert_allclose(numeric, gradient, rtol=1e-6, atol=1e-7)


def test_hessian_is_positive_definite():
    # diagonal Lambda: the Hessian is diagonal with entries sympy proves positive from
    # the symbols' assumptions
    loss, s = theory.lsa_population_loss(3, "diagonal")
    hessian = sp.hessian(loss, list(s.A))
    assert hessian.is_diagonal() and all(
        entry.is_positive for entry in hessian.diagonal()
    )
    # full Lambda: at random positive definite Lambda and several N, smallest
    # eigenvalue > 0
    loss, s = theory.lsa_population_loss(3, "full")
    hessian = sp.hessian(loss, list(s.A))
    for seed, n in ((23, 1), (24, 5), (25, 50)):
        lam = random_covariance(3, seed)
        values = {s.N: n, **lambda_values(s, lam)}
        numeric = np.array(hessian.xreplace(values).tolist(), dtype=float)
        g = theory.gamma(lam, n)
        np.testing.assert_allclose(numeric, 2 * np.kron(g @ lam, lam), rtol=1e-12)
        assert np.linalg.eigvalsh(numeric).min() > 0


def test_stationary_point_refuses_full_lambda_beyond_d_2():
    with pytest.raises(ValueError, match="d must be <= 2"):
        theory.stationary_point(3, "full")


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("lambda_kind", ["identity", "diagonal", "full"])
def test_loss_at_gamma_inverse_is_the_minimum(d, lambda_kind):
    assert theory.check_minimum_loss(d, lambda_kind)
    assert theory.minimum_loss_residual(d, lambda_kind) == 0
    # the expression, evaluated, equals the numpy minimum and the numpy loss at
    # Gamma^{-1}
    minimum, s = theory.minimum_loss(d, lambda_kind)
    lam = (
        random_covariance(d, 30 + d)
        if lambda_kind == "full"
        else (np.diag([0.5, 1.5, 2.5][:d]) if lambda_kind == "diagonal" else np.eye(d))
    )
    n = 6
    value = evaluate(minimum, s, None, lam, n)
    assert value == pytest.approx(theory.lsa_test_loss(lam, n, n), rel=1e-12)
    assert value == pytest.approx(
        theory.lsa_loss(theory.gamma_inverse(lam, n), lam, n), rel=1e-12
    )


def test_a_wrong_loss_fails_the_minimum_check(monkeypatch):
    """The polynomial-ring check has power: perturb the derived loss and it reports a
    non-zero residual."""
    original = theory.lsa_population_loss

    def perturbed(d, lambda_kind):
        loss, s = original(d, lambda_kind)
        return loss + s.A[0, 0] ** 2 / 1000, s

    monkeypatch.setattr(theory, "lsa_population_loss", perturbed)
    assert not theory.check_minimum_loss(2, "full")


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_identity_minimum_is_d_d_plus_1_over_n_plus_d_plus_1(d):
    minimum, s = theory.minimum_loss(d, "identity")
    assert sp.simplify(minimum - theory.identity_minimum_loss(d, s.N)) == 0
    assert sp.simplify(minimum - sp.Integer(d * (d + 1)) / (s.N + d + 1)) == 0
    if d == 2:
        assert sp.simplify(minimum - 6 / (s.N + 3)) == 0  # d = 2 written out by hand
    for n in (1, 10, 100):
        assert theory.lsa_test_loss(np.eye(d), n, n) == pytest.approx(
            d * (d + 1) / (n + d + 1), rel=1e-12
        )


# =================================================== symbolic d


def test_eigenbasis_argument_for_symbolic_d():
    e = theory.eigenbasis_symbols()
    gradient = theory.eigenbasis_gradient(e)
    trace = sp.Sum(e.lam[e.j], (e.j, 1, e.d))
    gamma_r = (1 + 1 / e.N) * e.lam[e.r] + trace / e.N
    expected = (
        2 * e.lam[e.r] * e.lam[e.s] * gamma_r * e.A[e.r, e.s]
        - 2 * sp.KroneckerDelta(e.r, e.s) * e.lam[e.r] ** 2
    )
    assert sp.simplify(gradient - expected) == 0
    diagonal, off_diagonal = theory.eigenbasis_stationary_point(e)
    assert off_diagonal == 0
    assert sp.simplify(diagonal - e.N / (e.N * e.lam[e.p] + trace + e.lam[e.p])) == 0
    assert theory.eigenbasis_minimum_residual(e) == 0
    value, e2 = theory.identity_minimum_loss_general_d()
    assert sp.simplify(value - e2.d * (e2.d + 1) / (e2.N + e2.d + 1)) == 0


def eigenbasis_concrete(
    expr: sp.Expr, e: theory.EigenbasisSymbols, s: theory.LSASymbols
) -> sp.Expr:
    """Evaluate a symbolic-d expression at the concrete d of ``s`` (diagonal Lambda):
    d -> size, sums expanded, lambda[p] -> s.Lambda[p-1, p-1], A[p, q] -> s.A[p-1, q-1],
    N -> s.N."""
    d = s.A.shape[0]
    concrete = expr.subs(e.d, d).doit()
    concrete = concrete.replace(
        lambda x: isinstance(x, sp.Indexed) and x.base == e.lam,
        lambda x: s.Lambda[int(x.indices[0]) - 1, int(x.indices[0]) - 1],
    )
    concrete = concrete.replace(
        lambda x: isinstance(x, sp.Indexed) and x.base == e.A,
        lambda x: s.A[int(x.indices[0]) - 1, int(x.indices[1]) - 1],
    )
    return concrete.xreplace({e.N: s.N})


@pytest.mark.parametrize("d", [2, 3])
def test_eigenbasis_loss_at_concrete_d_is_the_wick_loss_with_diagonal_lambda(d):
    e = theory.eigenbasis_symbols()
    loss, s = theory.lsa_population_loss(d, "diagonal")
    assert sp.expand(eigenbasis_concrete(theory.eigenbasis_loss(e), e, s) - loss) == 0
    # same symbol names and assumptions, hence the same symbols
    minimum, _ = theory.minimum_loss(d, "diagonal")
    assert (
        sp.simplify(
            eigenbasis_concrete(theory.eigenbasis_minimum_closed_form(e), e, s)
            - minimum
        )
        == 0
    )


# =================================================== the reduced flow


@pytest.mark.parametrize("lambda_kind", ["diagonal", "full"])
def test_reduced_flow_is_minus_half_the_gradient_and_conserves_u2_minus_frobenius(
    lambda_kind,
):
    assert theory.reduced_flow_checks(2, lambda_kind) == {
        "dU_is_minus_half_gradient": True,
        "du_is_minus_half_gradient": True,
        "invariant": True,
    }


def test_numpy_flow_field_is_minus_half_the_finite_difference_gradient():
    lam, n = random_covariance(3, seed=40), 5
    rng = np.random.default_rng(41)
    u, big_u = 0.7, rng.standard_normal((3, 3))
    d_u, d_big_u = theory.reduced_flow_rhs(u, big_u, lam, theory.gamma(lam, n))
    step = 1e-6
    grad_u = (
        theory.lsa_loss((u + step) * big_u, lam, n)
        - theory.lsa_loss((u - step) * big_u, lam, n)
    ) / (2 * step)
    assert d_u == pytest.approx(-grad_u / 2, rel=1e-6)
    for i in range(3):
        for j in range(3):
            e = np.zeros((3, 3))
            e[i, j] = step
            grad = (
                theory.lsa_loss(u * (big_u + e), lam, n)
                - theory.lsa_loss(u * (big_u - e), lam, n)
            ) / (2 * step)
            assert d_big_u[i, j] == pytest.approx(-grad / 2, rel=1e-6, abs=1e-8)


FLOW_LAMBDA = np.array([[1.0, 0.3, -0.1], [0.3, 0.8, 0.2], [-0.1, 0.2, 1.4]])


def relative_drift(trajectory: theory.FlowTrajectory) -> float:
    scale = trajectory.u**2 + np.einsum("tij,tij->t", trajectory.U, trajectory.U)
    return float(np.max(np.abs(trajectory.invariant - trajectory.invariant[0]) / scale))


def test_balanced_flow_keeps_the_invariant_and_converges_to_the_balanced_global_minimum():
    n = 4
    trajectory = theory.simulate_reduced_flow(
        FLOW_LAMBDA, n, sigma=0.1, t_max=40.0, n_steps=4000
    )
    steps = 4001
    assert trajectory.times.shape == (steps,) and trajectory.U.shape == (steps, 3, 3)
    assert trajectory.u[0] == pytest.approx(0.1) and trajectory.invariant[
        0
    ] == pytest.approx(0.0, abs=1e-15)
    assert relative_drift(trajectory) < 1e-8
    inverse = theory.gamma_inverse(FLOW_LAMBDA, n)
    final = trajectory.product[-1]
    assert np.linalg.norm(final - inverse) < 1e-6 * np.linalg.norm(inverse)
    # balanced limit: u^2 = ||U||_F^2 = sqrt(tr Gamma^{-2}), the paper's W^PV_*, W^KQ_*
    w_kq, w_pv = theory.optimal_weights(FLOW_LAMBDA, n)
    assert trajectory.u[-1] == pytest.approx(w_pv[3, 3], rel=1e-6)
    np.testing.assert_allclose(trajectory.U[-1], w_kq[:3, :3], rtol=1e-5, atol=1e-7)
    assert trajectory.u[-1] ** 2 == pytest.approx(
        theory.limit_u_squared(0.0, inverse), rel=1e-6
    )
    # gradient flow: the loss never increases and ends at the minimum
    assert np.all(np.diff(trajectory.loss) <= 1e-12)
    assert trajectory.loss[-1] == pytest.approx(
        theory.lsa_test_loss(FLOW_LAMBDA, n, n), rel=1e-10
    )
    np.testing.assert_allclose(
        trajectory.loss[::500],
        [theory.lsa_loss(a, FLOW_LAMBDA, n) for a in trajectory.product[::500]],
        rtol=1e-12,
    )


@pytest.mark.parametrize("u0", [1.0, 0.03])
def test_unbalanced_start_reaches_gamma_inverse_with_the_predicted_u(u0):
    n = 4
    trajectory = theory.simulate_reduced_flow(
        FLOW_LAMBDA, n, sigma=0.1, u0=u0, t_max=40.0, n_steps=8000
    )
    c = trajectory.invariant[0]
    assert c == pytest.approx(u0**2 - 0.1**2, rel=1e-12)
    assert relative_drift(trajectory) < 1e-8
    inverse = theory.gamma_inverse(FLOW_LAMBDA, n)
    assert np.linalg.norm(trajectory.product[-1] - inverse) < 1e-6 * np.linalg.norm(
        inverse
    )
    expected = theory.limit_u_squared(c, inverse)
    assert trajectory.u[-1] ** 2 == pytest.approx(expected, rel=1e-6)
    # the balance is broken for good: the limit differs from the balanced one
    assert abs(expected - theory.limit_u_squared(0.0, inverse)) > 1e-3


def test_flow_from_another_theta_converges_to_the_same_product():
    theta = torch.randn(3, 2, generator=make_generator(50), dtype=torch.float64)
    theta = theta / torch.linalg.matrix_norm(theta @ theta.T) ** 0.5
    trajectory = theory.simulate_reduced_flow(
        FLOW_LAMBDA,
        4,
        sigma=0.2,
        theta=theta,
        t_max=40.0,
        n_steps=4000,
        record_every=100,
    )
    assert len(trajectory.times) == 41 and trajectory.times[-1] == pytest.approx(40.0)
    np.testing.assert_allclose(
        trajectory.U[0], 0.2 * (theta @ theta.T).numpy(), rtol=1e-12
    )
    inverse = theory.gamma_inverse(FLOW_LAMBDA, 4)
    assert np.linalg.norm(trajectory.product[-1] - inverse) < 1e-6 * np.linalg.norm(
        inverse
    )


def test_limit_u_squared_solves_the_quartic():
    inverse = theory.gamma_inverse(FLOW_LAMBDA, 3)
    trace = np.trace(inverse @ inverse)
    for c in (-2.0, 0.0, 0.5, 3.0):
        v = theory.limit_u_squared(c, inverse)
        assert v > 0 and v**2 - c * v - trace == pytest.approx(0.0, abs=1e-12)
        # u^2 - ||U||_F^2 with U = Gamma^{-1} / u
        assert v - trace / v == pytest.approx(c, abs=1e-12)


# =================================================== trained at N, tested at M


def test_test_loss_at_m_equals_n_is_the_minimum_and_matches_monte_carlo_at_other_m():
    lam = random_covariance(2, seed=60)
    for n in (1, 3, 20):
        expected = np.trace(lam) - np.trace(theory.gamma_inverse(lam, n) @ lam @ lam)
        assert theory.lsa_test_loss(lam, n, n) == pytest.approx(expected, rel=1e-12)
    n_train, w_kq_pv = 3, theory.optimal_weights(lam, 3)
    model = LinearSelfAttention.from_weights(*(torch.tensor(w) for w in w_kq_pv))
    for m_test in (1, 8):
        errors = monte_carlo_errors(model, lam, m_test, batch=300_000, seed=61 + m_test)
        assert abs(
            errors.mean() - theory.lsa_test_loss(lam, n_train, m_test)
        ) < 4 * errors.std() / math.sqrt(len(errors))
    # the trained-at-N model is best at M = N among models of the form Gamma_K^{-1}
    losses = {
        k: theory.lsa_loss(theory.gamma_inverse(lam, k), lam, 8)
        for k in (2, 4, 8, 16, 32)
    }
    assert min(losses, key=losses.get) == 8


def test_query_shift_loss_matches_numpy_monte_carlo_for_gaussian_and_non_gaussian_queries():
    # Prompts x_i ~ N(0, Lambda), a query from another law with second moment Omega, any
    # A: numpy Monte Carlo of the prediction w^T S A x_q against lsa_loss(A, Lambda, M,
    # query_cov=Omega).
    rng = np.random.default_rng(62)
    d, m, batch = 3, 4, 400_000
    lam, omega = random_covariance(d, seed=63), random_covariance(d, seed=64, floor=0.0)
    a = rng.standard_normal((d, d)) / 2
    root_lam, root_omega = (
        np.linalg.cholesky(lam),
        np.linalg.cholesky(omega + 1e-12 * np.eye(d)),
    )
    xs = rng.standard_normal((batch, m, d)) @ root_lam.T
    w = rng.standard_normal((batch, d))
    s_w = np.einsum("bmi,bmj,bj->bi", xs, xs, w) / m  # S w
    for query in (
        rng.standard_normal((batch, d)),
        rng.choice([-1.0, 1.0], size=(batch, d)),
    ):  # Gaussian, Rademacher
        x_q = query @ root_omega.T  # second moment Omega either way
        errors = (
            np.einsum("bi,ij,bj->b", s_w, a, x_q) - np.einsum("bi,bi->b", w, x_q)
        ) ** 2
        expected = theory.lsa_loss(a, lam, m, query_cov=omega)
        assert abs(errors.mean() - expected) < 4 * errors.std() / math.sqrt(batch)
    # the default query is the prompt's law, and a shifted query changes the loss
    assert theory.lsa_loss(a, lam, m, query_cov=lam) == pytest.approx(
        theory.lsa_loss(a, lam, m), rel=1e-14
    )
    assert (
        abs(theory.lsa_loss(a, lam, m, query_cov=omega) - theory.lsa_loss(a, lam, m))
        > 0.1
    )


def test_covariate_shift_loss_matches_monte_carlo_of_the_trained_layer():
    # The optimum trained on Lambda, tested on prompts and queries from Lambda' (torch
    # Monte Carlo of the full LSA).
    lam, shifted, n_train, m_test = (
        random_covariance(2, seed=65),
        random_covariance(2, seed=66),
        4,
        6,
    )
    model = LinearSelfAttention.from_weights(
        *(torch.tensor(w) for w in theory.optimal_weights(lam, n_train))
    )
    errors = monte_carlo_errors(model, shifted, m_test, batch=300_000, seed=67)
    expected = theory.lsa_loss(theory.gamma_inverse(lam, n_train), shifted, m_test)
    assert abs(errors.mean() - expected) < 4 * errors.std() / math.sqrt(len(errors))


def test_isotropic_query_shift_leaves_the_normalised_error_unchanged():
    # Lambda = I and A = a I: L / tr(Omega) = (1 - a)^2 + a^2 (d + 1) / M for every
    # query second moment Omega.
    d, n, m = 4, 10, 7
    a = theory.gamma_inverse(np.eye(d), n)
    omega = random_covariance(d, seed=68, floor=0.0)
    ratio = n / (n + d + 1)
    expected = (1 - ratio) ** 2 + ratio**2 * (d + 1) / m
    assert theory.lsa_loss(a, np.eye(d), m, query_cov=omega) / np.trace(
        omega
    ) == pytest.approx(expected, rel=1e-12)


def test_query_cov_is_checked_by_name():
    with pytest.raises(
        ValueError,
        match=r"^query_cov must have the shape of lam, \(2, 2\), got \(3, 3\)",
    ):
        theory.lsa_loss(np.eye(2), np.eye(2), 3, query_cov=np.eye(3))
    with pytest.raises(ValueError, match=r"^query_cov must be positive semi-definite"):
        theory.lsa_loss(np.eye(2), np.eye(2), 3, query_cov=-np.eye(2))
    with pytest.raises(ValueError, match=r"^query_cov must be symmetric"):
        theory.lsa_loss(
            np.eye(2), np.eye(2), 3, query_cov=np.array([[1.0, 1.0], [0.0, 1.0]])
        )
    # a zero query: no error
    assert theory.lsa_loss(np.eye(2), np.eye(2), 3, query_cov=np.zeros((2, 2))) == 0.0


def test_gamma_matches_its_definition_and_the_symbolic_gamma():
    lam, n = random_covariance(3, seed=70), 6
    g = theory.gamma(lam, n)
    np.testing.assert_allclose(
        g, (1 + 1 / n) * lam + np.trace(lam) / n * np.eye(3), rtol=1e-15
    )
    np.testing.assert_allclose(theory.gamma_inverse(lam, n) @ g, np.eye(3), atol=1e-12)
    s = theory.lsa_symbols(3, "full")
    symbolic = theory.symbolic_gamma(s.Lambda, s.N).xreplace(
        {s.N: n, **lambda_values(s, lam)}
    )
    np.testing.assert_allclose(np.array(symbolic.tolist(), dtype=float), g, rtol=1e-12)
    # torch tensors are accepted too
    np.testing.assert_allclose(theory.gamma(torch.tensor(lam), n), g)


# =================================================== bad input


@pytest.mark.parametrize("bad_n", [0, -1, 2.5, True, "3"])
def test_non_positive_or_non_integer_n_is_rejected_by_name(bad_n):
    lam = np.eye(2)
    with pytest.raises(ValueError, match="n must be"):
        theory.gamma(lam, bad_n)
    with pytest.raises(ValueError, match="n_train"):
        theory.lsa_test_loss(lam, bad_n, 3)
    with pytest.raises(ValueError, match="m_test"):
        theory.lsa_test_loss(lam, 3, bad_n)
    with pytest.raises(ValueError, match="n_context"):
        theory.simulate_reduced_flow(lam, bad_n)


@pytest.mark.parametrize(
    "bad_lam, why",
    [
        (np.ones((2, 3)), "square"),
        (np.ones(3), "square"),
        (np.array([[1.0, 0.5], [0.0, 1.0]]), "symmetric"),
        (np.array([[1.0, 2.0], [2.0, 1.0]]), "positive semi-definite"),
        (np.zeros((2, 2)), "non-zero"),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), "finite"),
        ("identity", "covariance"),
    ],
)
def test_bad_lambda_is_rejected_by_name(bad_lam, why):
    for call in (
        lambda: theory.gamma(bad_lam, 3),
        lambda: theory.lsa_test_loss(bad_lam, 3, 3),
        lambda: theory.simulate_reduced_flow(bad_lam, 3),
    ):
        with pytest.raises(ValueError, match=f"lam must .*{why}"):
            call()


def test_other_bad_arguments_are_rejected_by_name():
    with pytest.raises(ValueError, match="lambda_kind"):
        theory.lsa_population_loss(2, "spherical")
    with pytest.raises(ValueError, match="lambda_kind"):
        theory.stationary_point(2, "Full")
    with pytest.raises(ValueError, match="lambda_kind"):
        theory.minimum_loss(2, "eye")
    with pytest.raises(ValueError, match="d must"):
        theory.lsa_population_loss(0, "full")
    with pytest.raises(ValueError, match="d must"):
        theory.isserlis_fourth_moment(-1)
    with pytest.raises(ValueError, match="cov"):
        theory.isserlis_fourth_moment(2, sp.eye(3))
    with pytest.raises(ValueError, match="cov must be a square"):
        theory.sample_moment_covariance(np.eye(2), sp.Symbol("N"))
    with pytest.raises(ValueError, match="m must"):
        theory.fourth_moment_quadratic(sp.eye(3), sp.eye(2))
    with pytest.raises(ValueError, match="a must have shape"):
        theory.lsa_loss(np.eye(3), np.eye(2), 3)
    with pytest.raises(ValueError, match="sigma"):
        theory.simulate_reduced_flow(np.eye(2), 3, sigma=0.0)
    with pytest.raises(ValueError, match="theta"):
        theory.simulate_reduced_flow(np.eye(2), 3, theta=2 * np.eye(2))
    with pytest.raises(ValueError, match="u0"):
        theory.simulate_reduced_flow(np.eye(2), 3, u0=float("nan"))
    with pytest.raises(ValueError, match="t_max"):
        theory.simulate_reduced_flow(np.eye(2), 3, t_max=-1.0)
    with pytest.raises(ValueError, match="n_steps"):
        theory.simulate_reduced_flow(np.eye(2), 3, n_steps=0)
    with pytest.raises(ValueError, match="c must"):
        theory.limit_u_squared(float("inf"), np.eye(2))
    with pytest.raises(ValueError, match="gamma_inv"):
        theory.limit_u_squared(0.0, np.ones((2, 3)))


def test_non_finite_numbers_are_rejected_by_name():
    with pytest.raises(ValueError, match=r"^c must be a finite number, got nan"):
        theory.limit_u_squared(float("nan"), np.eye(2))
    with pytest.raises(ValueError, match=r"^u0 must be a finite number, got 'x'"):
        theory.simulate_reduced_flow(np.eye(2), 5, u0="x", n_steps=2)
