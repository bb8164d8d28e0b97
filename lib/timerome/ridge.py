"""Cholesky kernels of the edit memory's exact streaming updates (Eq. 11 without refactorising).

`EditMemory.insert` / `remove` keep the ridge factor L (L Lᵀ = UUᵀ + λI or UᵀU + λI) current with
O(n²) work per fact instead of a rebuild: a rank-1 update or downdate of a Cholesky factor, and
the triangular solves around it.
"""
from __future__ import annotations

import torch


def cholesky_rank1(L, x, sign: int, w=None) -> torch.Tensor:
    """Lower-triangular L' with L'L'ᵀ = LLᵀ + sign·xxᵀ in O(n²), vectorised (no loop over columns).

    LLᵀ + σxxᵀ = L (I + σwwᵀ) Lᵀ with w = L⁻¹x, and I + σwwᵀ has the closed-form Cholesky factor
    M_jj = √(t_j / t_{j-1}), M_ij = σ w_i w_j / √(t_j t_{j-1}) (i > j), t_j = 1 + σ Σ_{i<=j} w_i²;
    so L' = L M, whose column j is M_jj L[:, j] + σ w_j / √(t_j t_{j-1}) · Σ_{i>j} w_i L[:, i], and
    Σ_{i>j} w_i L[:, i] = x - Σ_{i<=j} w_i L[:, i] because L w = x: one cumulative sum. ``w`` may
    be passed when the caller already solved for it. (A handful of whole-matrix operations: at
    small n their count, not their flops, is the cost.)
    """
    if w is None:
        w = torch.linalg.solve_triangular(L, x[:, None], upper=False)[:, 0]
    w2 = w * w
    t = torch.cumsum(w2, 0).mul_(sign).add_(1)
    t_prev = torch.sub(t, w2, alpha=sign)  # t_{j-1} (t_{-1} = 1)
    a = torch.sqrt(t / t_prev)  # M_jj
    c = (w * a).div_(t if sign > 0 else -t)  # σ w_j / √(t_j t_{j-1}) = σ w_j a_j / t_j
    head = (L * w).cumsum_(1)  # column j: Σ_{i<=j} w_i L[:, i]
    out = (L * a).addr_(x, c).addcmul_(head, c, value=-1)  # a_j L[:, j] + (x - head_j) c_j
    return out.tril_()  # the upper triangle is x - head = 0 up to round-off: make it exact


def half_solves(L, u):
    """(w, z) = (L⁻¹u, (LLᵀ)⁻¹u): w serves three times in a rank-1 update, since uᵀ(LLᵀ)⁻¹u = ‖w‖²
    and `cholesky_rank1` needs it too."""
    w = torch.linalg.solve_triangular(L, u[:, None], upper=False)
    return w[:, 0], torch.linalg.solve_triangular(L.T, w, upper=True)[:, 0]


def cho_solve(L, B) -> torch.Tensor:
    """(L Lᵀ)⁻¹ B by two triangular solves (torch.cholesky_solve copies to column-major first)."""
    return torch.linalg.solve_triangular(L.T, torch.linalg.solve_triangular(L, B, upper=False), upper=True)
