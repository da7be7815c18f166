"""Covariate samplers: the inputs x_1, ..., x_n of a prompt, drawn from N(0, c^2
Lambda).

All samplers are batched, run on the generator's device and draw only from the
``torch.Generator`` they are given. Shapes: ``xs: (batch, n_points, d)``; a covariance
is ``(d, d)`` (shared by the batch) or ``(batch, d, d)`` (one per prompt).
"""

from __future__ import annotations

import torch

from icl_lib import checks


def gaussian_xs(
    batch: int,
    n_points: int,
    d: int,
    generator: torch.Generator,
    *,
    cov: torch.Tensor | None = None,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sample ``xs: (batch, n_points, d)`` with rows x ~ N(0, scale^2 * cov).

    ``cov`` is ``None`` (the identity), a ``(d, d)`` covariance shared by all prompts,
    or a ``(batch, d, d)`` covariance per prompt (see :func:`exp_diagonal_cov`). It must
    be symmetric positive semi-definite; it is factored with an eigendecomposition, so
    singular covariances (inputs in a subspace) are allowed.
    """
    checks.positive_int("batch", batch)
    checks.positive_int("n_points", n_points)
    checks.positive_int("d", d)
    scale = checks.nonnegative_float("scale", scale)
    dtype = float_dtype("dtype", dtype)
    device = checks.generator("generator", generator).device
    if cov is not None and not (
        isinstance(cov, torch.Tensor) and tuple(cov.shape) in ((d, d), (batch, d, d))
    ):
        got = tuple(cov.shape) if isinstance(cov, torch.Tensor) else type(cov).__name__
        raise ValueError(
            f"cov must be a tensor of shape (d, d) = {(d, d)} or (batch, d, d) = "
            f"{(batch, d, d)}, got {got}"
        )
    if cov is not None:
        # a nan would reach the square root and every input drawn
        checks.finite_tensor("cov", cov)
    if cov is not None and not torch.allclose(
        cov.double(), cov.double().transpose(-1, -2), atol=1e-8
    ):
        raise ValueError("cov must be symmetric")
    z = torch.randn(batch, n_points, d, generator=generator, device=device, dtype=dtype)
    if cov is not None:
        z = z @ cov_sqrt(cov).to(device=device, dtype=dtype).transpose(-1, -2)
    return scale * z


def float_dtype(name: str, dtype: object) -> torch.dtype:
    """Return ``dtype`` if it is a floating torch dtype (``torch.float32``,
    ``torch.float64``, ...), else ``ValueError``."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(
            f"{name} must be a floating torch dtype (torch.float32 or torch.float64), "
            f"got {dtype!r}"
        )
    return dtype


def cov_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD covariance ``(d, d)`` or ``(batch, d,
    d)``, computed in float64."""
    if (
        not isinstance(cov, torch.Tensor)
        or cov.ndim not in (2, 3)
        or cov.shape[-1] != cov.shape[-2]
    ):
        got = tuple(cov.shape) if isinstance(cov, torch.Tensor) else type(cov).__name__
        raise ValueError(
            f"cov must be a tensor of shape (d, d) or (batch, d, d), got {got}"
        )
    checks.finite_tensor("cov", cov)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov.to(torch.float64))
    # Rounding makes a singular covariance's zero eigenvalues slightly negative: about
    # d * eps of the input's dtype relative to the largest (eps = 1.2e-7 in float32), so
    # the tolerance scales with it.
    eps = torch.finfo(cov.dtype if cov.is_floating_point() else torch.float64).eps
    largest = eigenvalues.abs().amax(dim=-1, keepdim=True)
    tolerance = max(1e-8, cov.shape[-1] * eps) * largest.clamp_min(1.0)
    # a check on the argument that needs the eigenvalues, so it is made here
    if (eigenvalues < -tolerance).any():
        raise ValueError(
            "cov must be positive semi-definite (it has a negative eigenvalue)"
        )
    # An eigenvalue within d ulps of the largest is rounding of a zero one, of either
    # sign: its square root (about sqrt(eps) of the largest's) would carry samples out
    # of the covariance's range, so it counts as 0.
    negligible = cov.shape[-1] * eps * largest
    root = torch.where(eigenvalues > negligible, eigenvalues.clamp_min(0).sqrt(), 0.0)
    return (eigenvectors * root.unsqueeze(-2)) @ eigenvectors.transpose(-1, -2)


def exp_diagonal_cov(
    batch: int, d: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Random diagonal covariances, one per prompt, with i.i.d. Exp(1) diagonal entries:
    ``(batch, d, d)``.

    This is Zhang, Frei and Bartlett's covariate shift: a model trained with Lambda = I
    meets a prompt whose covariance is random.
    """
    checks.positive_int("batch", batch)
    checks.positive_int("d", d)
    dtype = float_dtype("dtype", dtype)
    generator = checks.generator("generator", generator)
    diagonal = torch.empty(batch, d, device=generator.device, dtype=dtype).exponential_(
        1.0, generator=generator
    )
    return torch.diag_embed(diagonal)
