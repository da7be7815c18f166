"""Theory of Zhang, Frei and Bartlett's linear self-attention (arXiv 2306.09927):
symbolic and numerical.

The setting. Covariates x ~ N(0, Lambda) in R^d, a task w ~ N(0, I_d), labels
y = <w, x>. The reduced LSA (:class:`icl_lib.models.ReducedLSA`) predicts the label of a
query x_q from N examples as

    yhat = u (1/N) sum_i y_i x_i^T U x_q = (1/N) sum_i y_i x_i^T A x_q
         = w^T S A x_q,   A = u U,

with S = (1/N) sum_i x_i x_i^T. Conventions used throughout this module:

* **Loss.** ``L(A) = E[(yhat - <w, x_q>)^2]``, *without* a factor 1/2. Its closed form
  is L(A) = tr(A Lambda A^T Lambda Gamma) - 2 tr(A^T Lambda^2) + tr(Lambda),
  Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I_d; the minimum is tr(Lambda) - tr(Gamma^{-1}
  Lambda^2), at A = Gamma^{-1}.
* **Transposes.** A acts as x_i^T A x_q (example on the left, query on the right), as in
  ``ReducedLSA``. With the other order the first term would read tr(A^T Lambda A Lambda
  Gamma) (the tests show Monte Carlo rejects it).
* **Flow.** The reduced gradient flow dU/dt = -u^2 Gamma Lambda U Lambda + u Lambda^2,
  du/dt = -tr(u Gamma Lambda U Lambda U^T - Lambda^2 U^T) is the gradient flow of L/2
  (Zhang-Frei-Bartlett's objective carries the 1/2), i.e. (dU/dt, du/dt) = -(1/2)
  (dL/dU, dL/du) with L = L(u U).

Symbolic part (sympy, each step in seconds for d <= 3): a small Wick/Isserlis expander
gives the fourth moment and E[S_ab S_ce] with symbolic N; from it the loss for concrete
d with symbolic Lambda (``"identity"``, ``"diagonal"`` or ``"full"``); its gradient,
stationary point (= Gamma^{-1}), minimum, Hessian; the eigenbasis argument for symbolic
d (chapter 2 runs it); the conserved quantity u^2 - ||U||_F^2. Numerical part (numpy
float64): Gamma, the closed-form loss (also under query and covariate shifts), the loss
of a model trained at N and tested at M, an RK4 simulator of the reduced flow and its
rates near the minimum, the theorem's predictor (:func:`gd_prediction`), Wishart draws
of the prompt's second moment, and the product and off-block size of a trained full
LSA.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import sympy as sp
import torch

from icl_lib import checks
from icl_lib.models import LinearSelfAttention, zfb_init

LAMBDA_KINDS = ("identity", "diagonal", "full")

# ================================================== symbols


class LSASymbols(NamedTuple):
    """The symbols of a concrete-d problem: ``A`` (d x d Matrix of real symbols a_ij),
    ``Lambda`` (d x d Matrix), ``N`` (positive Symbol), and ``lambda_symbols`` (the free
    symbols of Lambda, a tuple, empty for the identity)."""

    A: sp.Matrix
    Lambda: sp.Matrix
    N: sp.Symbol
    lambda_symbols: tuple[sp.Symbol, ...]


def lambda_matrix(
    d: int, lambda_kind: str = "full"
) -> tuple[sp.Matrix, tuple[sp.Symbol, ...]]:
    """A symbolic covariance ``(d, d)`` and its symbols.

    ``"identity"``: I_d, no symbols. ``"diagonal"``: diag(lambda_1, ..., lambda_d),
    positive symbols. ``"full"``: symmetric with entries l_ij = l_ji (i <= j); diagonal
    entries positive, off-diagonal real.
    """
    d = checks.positive_int("d", d)
    checks.choice("lambda_kind", lambda_kind, LAMBDA_KINDS)
    if lambda_kind == "identity":
        return sp.eye(d), ()
    if lambda_kind == "diagonal":
        diagonal = sp.symbols(f"lambda_1:{d + 1}", positive=True)
        return sp.diag(*diagonal), tuple(diagonal)
    entries = {}
    for i in range(d):
        for j in range(i, d):
            name = f"l_{i + 1}{j + 1}"
            entries[i, j] = (
                sp.Symbol(name, positive=True) if i == j else sp.Symbol(name, real=True)
            )
    matrix = sp.Matrix(d, d, lambda i, j: entries[min(i, j), max(i, j)])
    return matrix, tuple(entries.values())


def lsa_symbols(d: int, lambda_kind: str = "full") -> LSASymbols:
    """Fresh :class:`LSASymbols` for dimension ``d``: A = [a_ij] (real), Lambda of
    ``lambda_kind``, N > 0."""
    lam, lambda_symbols = lambda_matrix(d, lambda_kind)
    a = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"a_{i + 1}{j + 1}", real=True))
    return LSASymbols(a, lam, sp.Symbol("N", positive=True), lambda_symbols)


def symbolic_gamma(lam: sp.Matrix, n: sp.Expr) -> sp.Matrix:
    """Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I_d for a symbolic ``lam: (d, d)`` and
    N = ``n``."""
    return (1 + 1 / n) * lam + lam.trace() / n * sp.eye(lam.shape[0])


def _is_zero_matrix(
    matrix: sp.Matrix, simplifier: Callable[[sp.Expr], sp.Expr] = sp.expand
) -> bool:
    """True if every entry of ``matrix`` reduces to 0 under ``simplifier`` (expand for
    polynomials in 1/N)."""
    return all(simplifier(entry) == 0 for entry in matrix)


def _check_symbolic_square(name: str, matrix: object, d: int) -> sp.Matrix:
    if not isinstance(matrix, sp.MatrixBase) or matrix.shape != (d, d):
        got = (
            matrix.shape if isinstance(matrix, sp.MatrixBase) else type(matrix).__name__
        )
        raise ValueError(f"{name} must be a sympy Matrix of shape {(d, d)}, got {got}")
    return sp.Matrix(matrix)


def _symbolic_covariance(cov: object) -> sp.Matrix:
    if not isinstance(cov, sp.MatrixBase) or cov.rows != cov.cols:
        got = cov.shape if isinstance(cov, sp.MatrixBase) else type(cov).__name__
        raise ValueError(f"cov must be a square sympy Matrix (d, d), got {got}")
    return sp.Matrix(cov)


# ================================================== Wick / Isserlis


def pairings(items: Sequence) -> Iterator[list[tuple]]:
    """Every perfect matching of ``items`` (even length): (len - 1)!! lists of pairs.
    Nothing for an odd length."""
    if len(items) == 0:
        yield []
        return
    first, rest = items[0], list(items[1:])
    for k in range(len(rest)):
        for tail in pairings(rest[:k] + rest[k + 1 :]):
            yield [(first, rest[k])] + tail


def wick_expectation(indices: Sequence[int], cov: sp.Matrix) -> sp.Expr:
    """E[x_{i_1} ... x_{i_k}] for x ~ N(0, cov) by Isserlis' theorem: the sum over
    pairings of products of cov entries (0 for odd k). ``indices`` are 0-based
    coordinates, ``cov: (d, d)``."""
    return sp.Add(
        *(
            sp.Mul(*(cov[a, b] for a, b in pairing))
            for pairing in pairings(list(indices))
        )
    )


def isserlis_fourth_moment(d: int, cov: sp.Matrix | None = None) -> sp.Array:
    """The tensor E[x_a x_b x_c x_e], shape ``(d, d, d, d)``, for x ~ N(0, cov).

    ``cov`` defaults to a symbolic full symmetric Lambda (:func:`lambda_matrix`). Entry
    [a, b, c, e] is cov_ab cov_ce + cov_ac cov_be + cov_ae cov_bc.
    """
    d = checks.positive_int("d", d)
    cov = (
        lambda_matrix(d, "full")[0]
        if cov is None
        else _check_symbolic_square("cov", cov, d)
    )
    return sp.Array(
        [
            [
                [
                    [wick_expectation((a, b, c, e), cov) for e in range(d)]
                    for c in range(d)
                ]
                for b in range(d)
            ]
            for a in range(d)
        ]
    )


def fourth_moment_quadratic(m: sp.Matrix, cov: sp.Matrix) -> sp.Matrix:
    """E[x x^T M x x^T], ``(d, d)``, for x ~ N(0, cov) and any ``m: (d, d)``, by
    contracting the Isserlis tensor: entry (a, e) is sum_{b, c} E[x_a x_b x_c x_e]
    M_bc."""
    cov = _symbolic_covariance(cov)
    d = cov.shape[0]
    m = _check_symbolic_square("m", m, d)
    moment = isserlis_fourth_moment(d, cov)
    return sp.Matrix(
        d,
        d,
        lambda a, e: sp.Add(
            *(moment[a, b, c, e] * m[b, c] for b in range(d) for c in range(d))
        ),
    )


def sample_moment_covariance(cov: sp.Matrix, n: sp.Expr) -> sp.Array:
    """E[S_ab S_ce], shape ``(d, d, d, d)``, for S = (1/N) sum_{i <= N} x_i x_i^T, x_i
    i.i.d. N(0, cov), N = ``n``.

    Of the N^2 pairs (i, j), the N(N - 1) with i != j are independent (cov_ab cov_ce)
    and the N with i = j give the fourth moment: E[S_ab S_ce] = (1 - 1/N) cov_ab
    cov_ce + (1/N) E[x_a x_b x_c x_e].
    """
    cov = _symbolic_covariance(cov)
    d = cov.shape[0]
    moment = isserlis_fourth_moment(d, cov)
    return sp.Array(
        [
            [
                [
                    [
                        (1 - 1 / n) * cov[a, b] * cov[c, e] + moment[a, b, c, e] / n
                        for e in range(d)
                    ]
                    for c in range(d)
                ]
                for b in range(d)
            ]
            for a in range(d)
        ]
    )


# ================================================== the population loss


def lsa_population_loss(
    d: int, lambda_kind: str = "full"
) -> tuple[sp.Expr, LSASymbols]:
    """L(A) = E[(w^T S A x_q - w^T x_q)^2] derived by Wick pairing, for concrete ``d``
    and symbolic N and Lambda.

    Returns ``(loss, symbols)``: an expanded polynomial in the entries of A, of Lambda
    (``lambda_kind``: ``"identity"``, ``"diagonal"`` or ``"full"``) and 1/N, and the
    :class:`LSASymbols`. No factor 1/2. Derivation (chapter 2 runs the same lines): the
    error is w^T B x_q with B = S A - I; averaging over w ~ N(0, I_d) and x_q ~ N(0,
    Lambda), both independent of S, leaves E tr(B Lambda B^T) = E tr(S M S) - 2
    tr(Lambda A Lambda) + tr(Lambda) with M = A Lambda A^T, because E[S] = Lambda; and E
    tr(S M S) = sum_{i, b, c} E[S_ib S_ci] M_bc needs only the second moments of S
    (:func:`sample_moment_covariance`).
    """
    symbols = lsa_symbols(d, lambda_kind)
    a, lam, n = symbols.A, symbols.Lambda, symbols.N
    second = sample_moment_covariance(lam, n)  # E[S_ab S_ce]
    m = a * lam * a.T
    quadratic = sp.Add(
        *(
            second[i, b, c, i] * m[b, c]
            for i in range(d)
            for b in range(d)
            for c in range(d)
        )
    )
    return sp.expand(quadratic - 2 * (lam * a * lam).trace() + lam.trace()), symbols


def closed_form_loss(a: sp.Matrix, lam: sp.Matrix, n: sp.Expr) -> sp.Expr:
    """tr(A Lambda A^T Lambda Gamma) - 2 tr(A^T Lambda^2) + tr(Lambda) for symbolic
    ``a``, ``lam: (d, d)``, N = ``n``."""
    gamma = symbolic_gamma(lam, n)
    return (
        (a * lam * a.T * lam * gamma).trace() - 2 * (a.T * lam**2).trace() + lam.trace()
    )


def check_closed_form_loss(d: int, lambda_kind: str = "full") -> bool:
    """True if the Wick-derived :func:`lsa_population_loss` equals
    :func:`closed_form_loss` identically."""
    loss, s = lsa_population_loss(d, lambda_kind)
    return sp.expand(loss - closed_form_loss(s.A, s.Lambda, s.N)) == 0


# ================================================== gradient, stationary point, minimum


def loss_gradient(loss: sp.Expr, a: sp.Matrix) -> sp.Matrix:
    """The matrix of partial derivatives dL/dA_ij, same shape as ``a`` (a Matrix of
    symbols)."""
    return a.applyfunc(lambda entry: sp.diff(loss, entry))


class StationaryPoint(NamedTuple):
    """``solution``: the A solving gradient = 0 (``(d, d)`` Matrix); ``gamma_inverse``:
    Gamma^{-1}; ``equals_gamma_inverse``: whether simplify(solution - Gamma^{-1}) is the
    zero matrix; ``symbols``."""

    solution: sp.Matrix
    gamma_inverse: sp.Matrix
    equals_gamma_inverse: bool
    symbols: LSASymbols


def stationary_point(d: int, lambda_kind: str = "diagonal") -> StationaryPoint:
    """Solve dL/dA = 0 with ``sympy.linsolve`` (d^2 linear equations) and compare the
    solution with Gamma^{-1}.

    Runs in well under a second for ``"identity"`` and ``"diagonal"`` at d <= 3 and for
    ``"full"`` at d = 2. ``"full"`` at d >= 3 raises ValueError: linsolve does not
    finish there (minutes); use :func:`gradient_identities` instead, which proves the
    same by structure.
    """
    d = checks.positive_int("d", d)
    checks.choice("lambda_kind", lambda_kind, LAMBDA_KINDS)
    if lambda_kind == "full" and d > 2:
        raise ValueError(
            "d must be <= 2 for lambda_kind='full' (linsolve does not finish at d = "
            f"{d}); use gradient_identities(d, 'full')"
        )
    loss, s = lsa_population_loss(d, lambda_kind)
    unknowns = list(s.A)
    (values,) = sp.linsolve(list(loss_gradient(loss, s.A)), unknowns)
    solution = sp.Matrix(d, d, list(values))
    gamma_inverse = symbolic_gamma(s.Lambda, s.N).inv()
    equal = _is_zero_matrix(solution - gamma_inverse, sp.simplify)
    return StationaryPoint(solution, gamma_inverse, equal, s)


def gradient_identities(d: int, lambda_kind: str = "full") -> dict[str, bool]:
    """Structural facts of the Wick-derived loss that make A = Gamma^{-1} its unique
    minimiser (any d, Lambda > 0).

    * ``"gradient"``: dL/dA = 2 Lambda Gamma A Lambda - 2 Lambda^2 (so dL/dA = 0 at
      A = Gamma^{-1}).
    * ``"commute"``: Gamma Lambda = Lambda Gamma, and Gamma Lambda = (1 + 1/N)
      Lambda^2 + tr(Lambda)/N Lambda.
    * ``"hessian_constant"``: the Hessian in the entries of A (row-major) has no A in it
      (L is quadratic).
    * ``"hessian_kron"``: it equals 2 (Gamma Lambda kron Lambda). For Lambda > 0 both
      factors are positive definite (Gamma Lambda has eigenvalues (1 + 1/N) lambda^2 +
      tr(Lambda) lambda / N > 0), hence so is the Hessian.
    """
    loss, s = lsa_population_loss(d, lambda_kind)
    lam, n = s.Lambda, s.N
    gamma = symbolic_gamma(lam, n)
    gradient = loss_gradient(loss, s.A)
    hessian = sp.hessian(loss, list(s.A))
    polynomial = (1 + 1 / n) * lam**2 + lam.trace() / n * lam
    return {
        "gradient": _is_zero_matrix(
            gradient - (2 * lam * gamma * s.A * lam - 2 * lam**2)
        ),
        "commute": _is_zero_matrix(gamma * lam - lam * gamma)
        and _is_zero_matrix(gamma * lam - polynomial),
        "hessian_constant": not (hessian.free_symbols & set(s.A)),
        "hessian_kron": _is_zero_matrix(
            hessian - 2 * sp.kronecker_product(gamma * lam, lam)
        ),
    }


def minimum_loss(d: int, lambda_kind: str = "diagonal") -> tuple[sp.Expr, LSASymbols]:
    """The minimum tr(Lambda) - tr(Gamma^{-1} Lambda^2), as a sympy expression in N and
    Lambda, with its symbols."""
    s = lsa_symbols(d, lambda_kind)
    gamma_inverse = symbolic_gamma(s.Lambda, s.N).inv()
    return s.Lambda.trace() - (gamma_inverse * s.Lambda**2).trace(), s


def minimum_loss_residual(d: int, lambda_kind: str = "diagonal") -> sp.Expr:
    """N det(G)^2 (L(Gamma^{-1}) - tr(Lambda) + tr(Gamma^{-1} Lambda^2)), expanded: zero
    iff the Wick-derived loss at A = Gamma^{-1} equals :func:`minimum_loss` identically
    in N and Lambda.

    G = N Gamma = (N + 1) Lambda + tr(Lambda) I_d is polynomial and Gamma^{-1} = N
    adj(G) / det(G); clearing the denominators turns the check into a polynomial
    identity, computed in sympy's sparse polynomial ring (``sp.ring``) because
    ``cancel`` on the rational expression takes 12 s at d = 3 with full Lambda (this
    takes under 1 s).
    """
    loss, s = lsa_population_loss(d, lambda_kind)
    n, n_a = s.N, d * d
    g = (n + 1) * s.Lambda + s.Lambda.trace() * sp.eye(d)
    ring, *_ = sp.ring(list(s.A) + list(s.lambda_symbols) + [n], sp.QQ)

    def to_ring(expr: sp.Expr) -> sp.polys.rings.PolyElement:
        return ring(sp.expand(expr))

    # Gamma^{-1} = numerators / det, row-major
    numerators = [to_ring(n * entry) for entry in g.adjugate()]
    det = to_ring(g.det())
    # N L(numerators / det) det^2: L is quadratic in A, so a monomial of degree k in A
    # gets det^(2 - k)
    scaled_loss = ring.zero
    for monomial, coefficient in to_ring(n * loss).terms():
        term = ring({(0,) * n_a + monomial[n_a:]: coefficient}) * det ** (
            2 - sum(monomial[:n_a])
        )
        for exponent, numerator in zip(monomial[:n_a], numerators):
            if exponent:
                term *= numerator**exponent
        scaled_loss += term
    lam_squared = s.Lambda**2
    trace_term = sum(
        (
            numerators[i * d + k] * to_ring(lam_squared[k, i])
            for i in range(d)
            for k in range(d)
        ),
        ring.zero,
    )  # tr(numerators Lambda^2)
    scaled_minimum = (
        to_ring(n * s.Lambda.trace()) * det**2 - to_ring(n) * det * trace_term
    )
    return (scaled_loss - scaled_minimum).as_expr()


def check_minimum_loss(d: int, lambda_kind: str = "diagonal") -> bool:
    """True if the Wick-derived loss at A = Gamma^{-1} equals tr(Lambda) - tr(Gamma^{-1}
    Lambda^2) symbolically (:func:`minimum_loss_residual` is 0)."""
    return minimum_loss_residual(d, lambda_kind) == 0


def identity_minimum_loss(d: int | sp.Expr, n: sp.Expr | None = None) -> sp.Expr:
    """d (d + 1) / (N + d + 1): the minimum at Lambda = I_d (d may be a Symbol; N
    defaults to a positive Symbol)."""
    for name, value in (("d", d), ("n", n)):
        if value is not None and not (
            isinstance(value, sp.Expr) and not value.is_number
        ):
            checks.positive_int(
                name, int(value) if isinstance(value, sp.Integer) else value
            )
    n = sp.Symbol("N", positive=True) if n is None else n
    return d * (d + 1) / (n + d + 1)


# ================================================== symbolic d: the eigenbasis argument


class EigenbasisSymbols(NamedTuple):
    """Symbols of the symbolic-d argument: ``d``, ``N`` (positive integers), ``lam``
    (IndexedBase, lambda_p > 0), ``A`` (IndexedBase), summation indices ``p``, ``q``,
    ``j`` and gradient indices ``r``, ``s``."""

    d: sp.Symbol
    N: sp.Symbol
    lam: sp.IndexedBase
    A: sp.IndexedBase
    p: sp.Symbol
    q: sp.Symbol
    j: sp.Symbol
    r: sp.Symbol
    s: sp.Symbol


def eigenbasis_symbols() -> EigenbasisSymbols:
    """Fresh :class:`EigenbasisSymbols`."""
    d, n = sp.symbols("d N", positive=True, integer=True)
    p, q, j, r, s = sp.symbols("p q j r s", integer=True)
    return EigenbasisSymbols(
        d,
        n,
        sp.IndexedBase("lambda", positive=True),
        sp.IndexedBase("A"),
        p,
        q,
        j,
        r,
        s,
    )


def _eigen_gamma(e: EigenbasisSymbols, k: sp.Expr) -> sp.Expr:
    """gamma_k = (1 + 1/N) lambda_k + tr(Lambda)/N, the k-th eigenvalue of Gamma."""
    return (1 + 1 / e.N) * e.lam[k] + sp.Sum(e.lam[e.j], (e.j, 1, e.d)) / e.N


def eigenbasis_loss(
    e: EigenbasisSymbols, entry: Callable[[sp.Expr, sp.Expr], sp.Expr] | None = None
) -> sp.Expr:
    """L(A) for Lambda = diag(lambda_1, ..., lambda_d) and symbolic d, as unevaluated
    sums:

    sum_{p, q} A_pq^2 lambda_p lambda_q gamma_p - 2 sum_p A_pp lambda_p^2 + sum_j
    lambda_j.

    ``entry(p, q)`` gives the entries of A (default the IndexedBase ``e.A[p, q]``). A
    general Lambda = Q D Q^T reduces to this one by A -> Q^T A Q, since the closed form
    is a trace of products.
    """
    entry = (lambda p, q: e.A[p, q]) if entry is None else entry
    p, q = e.p, e.q
    quadratic = sp.Sum(
        entry(p, q) ** 2 * e.lam[p] * e.lam[q] * _eigen_gamma(e, p),
        (p, 1, e.d),
        (q, 1, e.d),
    )
    return (
        quadratic
        - 2 * sp.Sum(entry(p, p) * e.lam[p] ** 2, (p, 1, e.d))
        + sp.Sum(e.lam[e.j], (e.j, 1, e.d))
    )


def _in_range(expr: sp.Expr) -> sp.Expr:
    """Keep the first branch of every Piecewise: sympy guards KroneckerDelta sums with
    1 <= r, s <= d, which holds."""
    return expr.replace(lambda x: isinstance(x, sp.Piecewise), lambda x: x.args[0].expr)


def eigenbasis_gradient(e: EigenbasisSymbols) -> sp.Expr:
    """dL/dA_rs for 1 <= r, s <= d, by ``diff`` with respect to the Indexed ``A[r, s]``
    (this works, unlike ``diff`` of Traces of MatrixSymbols in sympy 1.14, which returns
    0): 2 lambda_r lambda_s gamma_r A_rs - 2 delta_rs lambda_r^2."""
    return _in_range(sp.diff(eigenbasis_loss(e), e.A[e.r, e.s]).doit())


def eigenbasis_stationary_point(e: EigenbasisSymbols) -> tuple[sp.Expr, sp.Expr]:
    """``(A_pp, A_rs for r != s)`` solving the gradient equations: (N / (N lambda_p + tr
    Lambda + lambda_p), 0)."""
    gradient = eigenbasis_gradient(e)
    (off_diagonal,) = sp.solve(
        gradient.subs(sp.KroneckerDelta(e.r, e.s), 0), e.A[e.r, e.s]
    )
    (diagonal,) = sp.solve(gradient.subs(e.s, e.r), e.A[e.r, e.r])
    return sp.factor(diagonal).subs(e.r, e.p), off_diagonal


def _rename_sum_index(expr: sp.Expr, old: sp.Symbol, new: sp.Symbol) -> sp.Expr:
    """Rename the index ``old`` of the top-level single-index Sums of ``expr`` to
    ``new``, so that sums that differ only in their dummy cancel. Nested sums are left
    alone (renaming them could capture ``new``)."""

    def rename(factor: sp.Expr) -> sp.Expr:
        if (
            isinstance(factor, sp.Sum)
            and len(factor.limits) == 1
            and factor.limits[0][0] == old
            and new not in factor.function.free_symbols
        ):
            _, low, high = factor.limits[0]
            return sp.Sum(factor.function.xreplace({old: new}), (new, low, high))
        return factor

    return sp.Add(
        *(
            sp.Mul(*map(rename, sp.Mul.make_args(term)))
            for term in sp.Add.make_args(expr)
        )
    )


def eigenbasis_minimum_loss(e: EigenbasisSymbols) -> sp.Expr:
    """L at the stationary point of :func:`eigenbasis_stationary_point`, for symbolic d,
    as sympy computes it (unevaluated sums over p and j);
    :func:`eigenbasis_minimum_residual` compares it with the closed form."""
    diagonal, _ = eigenbasis_stationary_point(e)
    at_optimum = eigenbasis_loss(
        e, lambda p, q: sp.KroneckerDelta(p, q) * diagonal.subs(e.p, p)
    )
    return _rename_sum_index(_in_range(at_optimum.doit()), e.q, e.p)


def eigenbasis_minimum_closed_form(e: EigenbasisSymbols) -> sp.Expr:
    """tr(Lambda) - tr(Gamma^{-1} Lambda^2) in the eigenbasis: sum_j lambda_j - sum_p
    lambda_p^2 / gamma_p."""
    return sp.Sum(e.lam[e.j], (e.j, 1, e.d)) - sp.Sum(
        e.lam[e.p] ** 2 / _eigen_gamma(e, e.p), (e.p, 1, e.d)
    )


def eigenbasis_minimum_residual(e: EigenbasisSymbols) -> sp.Expr:
    """simplify(:func:`eigenbasis_minimum_loss` -
    :func:`eigenbasis_minimum_closed_form`): 0 for every d."""
    return sp.simplify(eigenbasis_minimum_loss(e) - eigenbasis_minimum_closed_form(e))


def identity_minimum_loss_general_d() -> tuple[sp.Expr, EigenbasisSymbols]:
    """The minimum at Lambda = I_d for symbolic d and N, from
    :func:`eigenbasis_minimum_loss` with every lambda_p = 1: returns ``(expression,
    symbols)``; the expression simplifies to d (d + 1) / (N + d + 1)."""
    e = eigenbasis_symbols()
    value = eigenbasis_minimum_loss(e)
    ones = value.replace(
        lambda x: isinstance(x, sp.Indexed) and x.base == e.lam, lambda x: sp.S.One
    )
    return sp.simplify(ones.doit()), e


# ================================================== the reduced flow, symbolically


def reduced_flow_field(
    u: sp.Expr, big_u: sp.Matrix, lam: sp.Matrix, n: sp.Expr
) -> tuple[sp.Expr, sp.Matrix]:
    """The right-hand side ``(du/dt, dU/dt)`` of the reduced flow: dU/dt = -u^2 Gamma
    Lambda U Lambda + u Lambda^2, du/dt = -tr(u Gamma Lambda U Lambda U^T - Lambda^2
    U^T)."""
    gamma = symbolic_gamma(lam, n)
    d_big_u = -(u**2) * gamma * lam * big_u * lam + u * lam**2
    d_u = -(u * gamma * lam * big_u * lam * big_u.T - lam**2 * big_u.T).trace()
    return d_u, d_big_u


def reduced_flow_checks(d: int = 2, lambda_kind: str = "full") -> dict[str, bool]:
    """Symbolic checks of the reduced flow with symbolic u, U = [U_ij], Lambda and N,
    using the Wick-derived loss:

    * ``"dU_is_minus_half_gradient"``: dU/dt = -(1/2) dL/dU for L = L(u U);
    * ``"du_is_minus_half_gradient"``: du/dt = -(1/2) dL/du;
    * ``"invariant"``: d/dt (u^2 - ||U||_F^2) = 2 u du/dt - 2 <U, dU/dt> = 0.
    """
    loss, s = lsa_population_loss(d, lambda_kind)
    u = sp.Symbol("u", real=True)
    big_u = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"U_{i + 1}{j + 1}", real=True))
    loss_u = sp.expand(loss.xreplace(dict(zip(s.A, u * big_u))))
    d_u, d_big_u = reduced_flow_field(u, big_u, s.Lambda, s.N)
    grad_big_u = big_u.applyfunc(lambda entry: sp.diff(loss_u, entry))
    invariant_rate = 2 * u * d_u - 2 * sum(big_u[i] * d_big_u[i] for i in range(d * d))
    return {
        "dU_is_minus_half_gradient": _is_zero_matrix(d_big_u + grad_big_u / 2),
        "du_is_minus_half_gradient": sp.expand(d_u + sp.diff(loss_u, u) / 2) == 0,
        "invariant": sp.expand(invariant_rate) == 0,
    }


# ================================================== numerics (numpy float64)


def _covariance(lam: object, name: str = "lam", *, nonzero: bool = True) -> np.ndarray:
    """``lam`` as a float64 ``(d, d)`` array after checking: square, finite, symmetric,
    PSD, and (``nonzero``) a non-zero trace."""
    if isinstance(lam, torch.Tensor):
        lam = lam.detach().cpu().to(torch.float64).numpy()
    try:
        matrix = np.array(lam, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a (d, d) covariance matrix, got {type(lam).__name__}"
        ) from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(
            f"{name} must be a square (d, d) covariance matrix, got shape "
            f"{matrix.shape}"
        )
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} must be finite")
    scale = max(1.0, float(np.abs(matrix).max()))
    if not np.allclose(matrix, matrix.T, rtol=0, atol=1e-10 * scale):
        raise ValueError(f"{name} must be symmetric")
    if np.linalg.eigvalsh(matrix).min() < -1e-10 * scale:
        raise ValueError(
            f"{name} must be positive semi-definite (it has a negative eigenvalue)"
        )
    if nonzero and np.trace(matrix) <= 0:
        raise ValueError(
            f"{name} must be non-zero (tr({name}) > 0), so that Gamma is invertible"
        )
    return matrix


def _square(name: str, matrix: object, d: int) -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(matrix, dtype=np.float64)
    if array.shape != (d, d):
        raise ValueError(f"{name} must have shape {(d, d)}, got {array.shape}")
    return array


def gamma(lam: np.ndarray, n: int) -> np.ndarray:
    """Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I_d: ``(d, d)`` float64, for a covariance
    ``lam: (d, d)`` and N = ``n``."""
    lam = _covariance(lam)
    n = checks.positive_int("n", n)
    return (1 + 1 / n) * lam + np.trace(lam) / n * np.eye(lam.shape[0])


def gamma_inverse(lam: np.ndarray, n: int) -> np.ndarray:
    """Gamma^{-1}, ``(d, d)``: the global minimiser A_* = u_* U_* of the LSA trained
    with N = ``n`` examples."""
    return np.linalg.inv(gamma(lam, n))


def lsa_loss(
    a: np.ndarray, lam: np.ndarray, n: int, query_cov: np.ndarray | None = None
) -> float:
    """The population loss E[(yhat - <w, x_q>)^2] (no 1/2) of the LSA with product
    ``a = u U: (d, d)`` on prompts of N = ``n`` examples x_i ~ N(0, ``lam``), w ~ N(0,
    I_d):

        tr(A Omega A^T Lambda Gamma_N) - 2 tr(Lambda A Omega) + tr(Omega),

    where Omega = E[x_q x_q^T] is ``query_cov: (d, d)``, the second moment of a query
    drawn independently of the prompt from any distribution (a query shift); by default
    Omega = Lambda, which gives tr(A Lambda A^T Lambda Gamma_N) - 2 tr(A^T Lambda^2) +
    tr(Lambda). Only E[S] = Lambda and E[S M S] (Isserlis) enter, so the examples must
    be Gaussian but the query need not be. ``query_cov`` may be singular (a query in a
    subspace). A covariate shift (examples and query from Lambda') is
    ``lsa_loss(gamma_inverse(Lambda, N), Lambda', M)``.
    """
    lam = _covariance(lam)
    d = lam.shape[0]
    a = _square("a", a, d)
    if query_cov is None:
        omega = lam
    else:
        omega = _covariance(query_cov, "query_cov", nonzero=False)
        if omega.shape != (d, d):
            raise ValueError(
                f"query_cov must have the shape of lam, {(d, d)}, got {omega.shape}"
            )
    g = gamma(lam, n)
    return float(
        np.trace(a @ omega @ a.T @ lam @ g)
        - 2 * np.trace(lam @ a @ omega)
        + np.trace(omega)
    )


def _losses(products: np.ndarray, lam: np.ndarray, gamma_n: np.ndarray) -> np.ndarray:
    """The closed-form loss of each ``products[t] = A: (T, d, d)``, vectorised (no
    checks): ``(T,)``."""
    quadratic = np.einsum(
        "tij,jk,tlk,lm,mi->t", products, lam, products, lam, gamma_n, optimize=True
    )
    linear = np.einsum("tji,jk,ki->t", products, lam, lam, optimize=True)
    return quadratic - 2 * linear + np.trace(lam)


def lsa_test_loss(lam: np.ndarray, n_train: int, m_test: int) -> float:
    """Loss of the global minimum trained at N = ``n_train`` (A = G_N^{-1}) on prompts
    of M = ``m_test`` examples: tr(G_N^{-1} Lambda G_N^{-1} Lambda G_M) - 2 tr(G_N^{-1}
    Lambda^2) + tr(Lambda), G_K = Gamma at K. At M = N it is the minimum tr(Lambda) -
    tr(Gamma^{-1} Lambda^2)."""
    checks.positive_int("n_train", n_train)
    checks.positive_int("m_test", m_test)
    return lsa_loss(gamma_inverse(lam, n_train), lam, m_test)


def optimal_weights(lam: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The balanced global minimum ``(W^KQ_*, W^PV_*)``, both ``(d + 1, d + 1)``:
    W^KQ_* = tr(Gamma^{-2})^{-1/4} [[Gamma^{-1}, 0], [0, 0]], W^PV_* =
    tr(Gamma^{-2})^{1/4} [[0, 0], [0, 1]]."""
    inverse = gamma_inverse(lam, n)
    d = inverse.shape[0]
    scale = float(np.trace(inverse @ inverse)) ** 0.25
    w_kq = np.zeros((d + 1, d + 1))
    w_kq[:d, :d] = inverse / scale
    w_pv = np.zeros((d + 1, d + 1))
    w_pv[d, d] = scale
    return w_kq, w_pv


def reduced_flow_rhs(
    u: float, big_u: np.ndarray, lam: np.ndarray, gamma_n: np.ndarray
) -> tuple[float, np.ndarray]:
    """``(du/dt, dU/dt)`` of the reduced flow (gradient flow of L/2) at ``u``, ``big_u:
    (d, d)``, for ``lam`` and ``gamma_n = Gamma: (d, d)``. Unchecked inner loop of
    :func:`simulate_reduced_flow`."""
    gl = gamma_n @ lam
    lam2 = lam @ lam
    d_big_u = -u * u * gl @ big_u @ lam + u * lam2
    d_u = -float(np.trace(u * gl @ big_u @ lam @ big_u.T - lam2 @ big_u.T))
    return d_u, d_big_u


@dataclass(frozen=True)
class FlowTrajectory:
    """A simulated reduced flow, recorded at ``T`` times: ``times: (T,)``, ``u: (T,)``,
    ``U: (T, d, d)``, ``loss: (T,)`` (the population loss L(u U), no 1/2), ``invariant:
    (T,)`` (u^2 - ||U||_F^2)."""

    times: np.ndarray
    u: np.ndarray
    U: np.ndarray
    loss: np.ndarray
    invariant: np.ndarray

    @property
    def product(self) -> np.ndarray:
        """A(t) = u(t) U(t): ``(T, d, d)``."""
        return self.u[:, None, None] * self.U


def simulate_reduced_flow(
    lam: np.ndarray,
    n_context: int,
    sigma: float = 0.1,
    theta: np.ndarray | torch.Tensor | None = None,
    *,
    u0: float | None = None,
    t_max: float = 40.0,
    n_steps: int = 4000,
    record_every: int = 1,
) -> FlowTrajectory:
    """Integrate the reduced flow with classical RK4 (float64, fixed step dt = t_max /
    n_steps).

    Start: the paper's initialisation via :func:`icl_lib.models.zfb_init`: U(0) = sigma
    Theta Theta^T (``theta: (d, m)`` with ||Theta Theta^T||_F = 1, default
    :func:`icl_lib.models.default_theta`) and u(0) = sigma, so u^2 - ||U||_F^2 = 0
    ("balanced"). ``u0`` overrides u(0) and breaks the balance. The flow is dU/dt = -u^2
    Gamma Lambda U Lambda + u Lambda^2, du/dt = -tr(u Gamma Lambda U Lambda U^T -
    Lambda^2 U^T), the gradient flow of L/2 with Gamma at N = ``n_context``. Records
    every ``record_every`` steps (and the last).
    """
    lam = _covariance(lam)
    d = lam.shape[0]
    n_context = checks.positive_int("n_context", n_context)
    t_max = checks.positive_float("t_max", t_max)
    n_steps = checks.positive_int("n_steps", n_steps)
    record_every = checks.positive_int("record_every", record_every)
    theta_tensor = (
        None if theta is None else torch.as_tensor(np.asarray(theta, dtype=np.float64))
    )
    w_kq, w_pv = zfb_init(d, sigma, theta_tensor, dtype=torch.float64)
    big_u, u = w_kq[:d, :d].numpy().copy(), float(w_pv[d, d])
    if u0 is not None:
        u = checks.finite_float("u0", u0)
    gamma_n = gamma(lam, n_context)
    dt = t_max / n_steps
    records: list[tuple[float, float, np.ndarray]] = [(0.0, u, big_u.copy())]
    for step in range(1, n_steps + 1):
        k1 = reduced_flow_rhs(u, big_u, lam, gamma_n)
        k2 = reduced_flow_rhs(u + dt / 2 * k1[0], big_u + dt / 2 * k1[1], lam, gamma_n)
        k3 = reduced_flow_rhs(u + dt / 2 * k2[0], big_u + dt / 2 * k2[1], lam, gamma_n)
        k4 = reduced_flow_rhs(u + dt * k3[0], big_u + dt * k3[1], lam, gamma_n)
        u = u + dt / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        big_u = big_u + dt / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        if step % record_every == 0 or step == n_steps:
            records.append((step * dt, u, big_u.copy()))
    times = np.array([t for t, _, _ in records])
    us = np.array([v for _, v, _ in records])
    big_us = np.stack([m for _, _, m in records])
    losses = _losses(us[:, None, None] * big_us, lam, gamma_n)
    invariant = us**2 - np.einsum("tij,tij->t", big_us, big_us)
    return FlowTrajectory(times, us, big_us, losses, invariant)


def limit_u_squared(c: float, gamma_inv: np.ndarray) -> float:
    """The limit of u(t)^2 along the flow when u^2 - ||U||_F^2 = ``c`` is conserved and
    u U -> ``gamma_inv: (d, d)``: u^2 = (C + sqrt(C^2 + 4 tr(Gamma^{-2}))) / 2 (from
    u^4 - C u^2 - tr(Gamma^{-2}) = 0). C = 0 gives sqrt(tr Gamma^{-2})."""
    c = checks.finite_float("c", c)
    inverse = np.asarray(gamma_inv, dtype=np.float64)
    if inverse.ndim != 2 or inverse.shape[0] != inverse.shape[1]:
        raise ValueError(
            f"gamma_inv must be a square (d, d) matrix, got shape {inverse.shape}"
        )
    trace = float(np.trace(inverse @ inverse))
    return (c + math.sqrt(c * c + 4 * trace)) / 2


# ================================================== chapter 2's measurements


class FlowRates(NamedTuple):
    """The reduced flow linearised at its minimum (balanced start): ``rates: (d,)``,
    ascending, the eigenvalues of (u*^2 I + U* U*^T) diag(lambda_p^2 gamma_p);
    ``u2_star = sqrt(tr Gamma^{-2})``; ``lam_eigen, gamma_eigen: (d,)``, the eigenvalues
    of Lambda (ascending) and the matching ones of Gamma."""

    rates: np.ndarray
    u2_star: float
    lam_eigen: np.ndarray
    gamma_eigen: np.ndarray


def linearised_flow_rates(lam: np.ndarray, n: int) -> FlowRates:
    """The rates at which the reduced flow trained at N = ``n`` settles near its
    minimum, from the eigenvalues of ``lam: (d, d)`` alone (chapter 2): in the
    eigenbasis of Lambda, delta' = -(u*^2 I + U* U*^T) D delta with D =
    diag(lambda_p^2 gamma_p) and U*_p = 1 / (gamma_p u*)."""
    lam = _covariance(lam)
    n = checks.positive_int("n", n)
    lam_eigen = np.linalg.eigvalsh(lam)
    gamma_eigen = (1 + 1 / n) * lam_eigen + lam_eigen.sum() / n
    u2_star = math.sqrt(np.sum(gamma_eigen**-2.0))
    u_star_p = 1 / (gamma_eigen * math.sqrt(u2_star))
    jacobian = (
        u2_star * np.eye(len(lam_eigen)) + np.outer(u_star_p, u_star_p)
    ) @ np.diag(lam_eigen**2 * gamma_eigen)
    rates = np.sort(np.linalg.eigvals(jacobian).real)
    return FlowRates(rates, u2_star, lam_eigen, gamma_eigen)


def gd_prediction(
    xs: torch.Tensor, ys: torch.Tensor, preconditioner: np.ndarray | torch.Tensor
) -> torch.Tensor:
    """The theorem's predictor x_q^T P (1/M) sum_i y_i x_i, one preconditioned gradient
    step from w = 0, for prompts whose last point is the query: ``xs: (batch, M + 1,
    d)``, ``ys: (batch, M + 1)``, ``preconditioner = P: (d, d)`` -> ``(batch,)``,
    float64."""
    batch, n_points, d = checks.prompt_tensors(xs, ys)
    if n_points < 2:
        raise ValueError(
            f"xs must hold at least one example before the query (n_points >= 2), "
            f"got n_points = {n_points}"
        )
    preconditioner = torch.as_tensor(preconditioner, dtype=torch.float64)
    if tuple(preconditioner.shape) != (d, d):
        raise ValueError(
            f"preconditioner must have shape {(d, d)} (d of xs), got "
            f"{tuple(preconditioner.shape)}"
        )
    moment = (ys[:, :-1, None] * xs[:, :-1]).double().mean(1)
    return torch.einsum("bd,de,be->b", xs[:, -1].double(), preconditioner, moment)


def wishart_second_moments(
    m: int, n_prompts: int, d: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_prompts`` draws of S = (1/M) sum_i x_i x_i^T for M = ``m`` examples x_i ~
    N(0, I_d), at a cost free of M: ``(n_prompts, d, d)``. Bartlett's decomposition: S =
    B B^T / M with B lower triangular, B_pp^2 ~ chi^2(M - p) (p = 0..d-1) and B_pq ~
    N(0, 1) below the diagonal (``rng`` draws the normals, then the chi-squares)."""
    n_prompts = checks.positive_int("n_prompts", n_prompts)
    d = checks.positive_int("d", d)
    m = checks.positive_int("m", m)
    if m < d:
        raise ValueError(f"m must be at least d = {d} (S is then invertible), got {m}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy Generator (np.random.default_rng(seed)), got {rng!r}"
        )
    b = np.tril(rng.standard_normal((n_prompts, d, d)), k=-1)
    b[:, np.arange(d), np.arange(d)] = np.sqrt(
        rng.chisquare(m - np.arange(d), size=(n_prompts, d))
    )
    return b @ b.transpose(0, 2, 1) / m


def _lsa_weights(model: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(model, LinearSelfAttention):
        raise ValueError(
            "model must be an icl_lib.models.LinearSelfAttention (the full LSA), got "
            f"{type(model).__name__}"
        )
    return model.w_kq, model.w_pv


def lsa_product(model: LinearSelfAttention) -> np.ndarray:
    """A = u U of a full LSA (W^PV[d+1, d+1] times the top-left block of W^KQ):
    ``(d, d)`` float64."""
    _lsa_weights(model)
    return model.product.detach().double().numpy()


def off_block_size(model: LinearSelfAttention) -> float:
    """The largest weight of a full LSA in the blocks that gradient flow keeps at 0
    (all but u and U): the last row and column of W^KQ, and W^PV but its last entry."""
    w_kq, w_pv = _lsa_weights(model)
    with torch.no_grad():
        return max(
            float(w_kq[-1].abs().max()),
            float(w_kq[:, -1].abs().max()),
            float(w_pv[:-1].abs().max()),
            float(w_pv[-1, :-1].abs().max()),
        )
