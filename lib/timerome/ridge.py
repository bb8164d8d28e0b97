"""The ridge factorisation of the edit memory (paper 002 Eq. 11) and its exact streaming updates.

The memory's coefficients are c = G U h with G = (UUᵀ + λI)⁻¹ and U ∈ R^{|F|×H} the subject
keys. G is never formed: the ridge Gram matrix is Cholesky-factorised (float64) and W = G U is
precomputed by triangular solves, so a forward only needs W. Two Gram forms give the same W:

* facts (|F| <= H by default): L Lᵀ = UUᵀ + λI_|F|, W = (L Lᵀ)⁻¹U, O(|F|²H + |F|³);
* hidden (|F| > H): the dual identity (UUᵀ + λI)⁻¹U = U(UᵀU + λI)⁻¹ gives L Lᵀ = UᵀU + λI_H,
  W = U (L Lᵀ)⁻¹, O(|F|H²).

The form is chosen when the factor is built and kept while streaming.

Streaming. `RidgeFactor.insert` / `remove` add or drop one key without refactorising. Facts form:
L grows by one row (a triangular solve, O(|F|²)) or loses one (a rank-1 Cholesky update of the
trailing block, O(|F|²)), and W takes the matching rank-1 correction from the block inverse
(O(|F|·H)). Hidden form: a rank-1 Cholesky update/downdate (O(H²)) and a Sherman-Morrison
correction of W (O(|F|·H)). Both match a from-scratch build to float64 round-off.

The updates are bound by memory traffic and per-call overheads, not flops, so the storage is laid
out for them: U and W are views into `RowBuffer`s whose capacity doubles (an append copies the rows
O(1) times amortised; W's rows are corrected in place), and L stays one contiguous tensor (LAPACK's
triangular solves are much slower on a strided view) held in one of two reused flat buffers.
"""
from __future__ import annotations

import math

import torch

GRAM_FORMS = ("auto", "facts", "hidden")  # which ridge Gram matrix is factorised


class RowBuffer:
    """Rows [n, H] kept as ``view``, a contiguous prefix of a buffer whose capacity doubles.

    Starts as exactly the given tensor (no copy, no spare capacity). `remove` shifts the later
    rows up in place and keeps the capacity."""

    __slots__ = ("buf", "view")

    def __init__(self, rows: torch.Tensor):
        self.buf = self.view = rows.contiguous()

    def reserve(self, rows: int):
        """Room for ``rows`` rows; ``view`` moves to the new buffer (same values)."""
        cap = self.buf.shape[0]
        if cap >= rows:
            return
        n = self.view.shape[0]
        buf = self.buf.new_zeros(max(rows, 2 * cap, 16), self.buf.shape[1])
        buf[:n] = self.view
        self.buf, self.view = buf, buf[:n]

    def append(self, row):
        n = self.view.shape[0]
        self.reserve(n + 1)
        self.buf[n] = row
        self.view = self.buf[:n + 1]

    def remove(self, k: int):
        n = self.view.shape[0]
        self.buf[k:n - 1] = self.buf[k + 1:n].clone()
        self.view = self.buf[:n - 1]


class RidgeFactor:
    """The Cholesky factor ``L`` of the ridge Gram matrix of keys ``U`` and W = (UUᵀ + λI)⁻¹U.

    ``U``: [n, H] float64, taken as the factor's own (its rows are shifted in place by `remove`);
    ``gram``: "facts", "hidden" or "auto" (facts when n <= H), see the module docstring. Rows of
    ``U`` and ``W`` are indexed alike; `insert` appends row n, `remove(k)` drops row k.
    """

    def __init__(self, U: torch.Tensor, lam: float, gram: str = "auto"):
        if gram not in GRAM_FORMS:
            raise ValueError(f"gram={gram!r}; expected one of {GRAM_FORMS}")
        n, H = U.shape
        self.lam = lam
        self.gram = gram if gram != "auto" else "facts" if n <= H else "hidden"
        if self.gram == "facts" and not n:
            L, W = U.new_zeros(0, 0), U.clone()
        else:
            A = U @ U.T if self.gram == "facts" else U.T @ U
            A.diagonal().add_(lam)
            L, info = torch.linalg.cholesky_ex(A)
            if int(info) != 0:
                raise torch.linalg.LinAlgError(f"the ridge Gram matrix is not numerically positive definite "
                                               f"(lam={lam:g}); use a larger lam")
            W = _cho_solve(L, U) if self.gram == "facts" else _cho_solve(L, U.T).T
        self._U, self._W = RowBuffer(U), RowBuffer(W)
        self.L = L.contiguous()
        self._L_flat, self._L_slot = [None, None], None  # see `_spare_factor`

    @property
    def U(self) -> torch.Tensor:
        return self._U.view

    @property
    def W(self) -> torch.Tensor:
        return self._W.view

    @W.setter
    def W(self, value):
        """Replace W by hand (e.g. to set exact ties in a test); streaming then updates the new one."""
        if tuple(value.shape) != tuple(self.U.shape):
            raise ValueError(f"W must have U's shape {tuple(self.U.shape)}, got {tuple(value.shape)}")
        self._W = RowBuffer(value)

    def __len__(self):
        return self._U.view.shape[0]

    def _spare_factor(self, m: int) -> torch.Tensor:
        """An m×m contiguous tensor for the next facts-form factor, in whichever of two reusable flat
        buffers does not hold the current one. (Growing or shrinking L must copy it, since LAPACK's
        solves want it contiguous; a fresh |F|² tensor costs page faults that outweigh the copy.) The
        caller must make the result the new ``self.L``: the buffer of the previous factor is reused."""
        i = 1 if self._L_slot == 0 else 0
        buf = self._L_flat[i]
        if buf is None or buf.numel() < m * m:
            rows = max(m + m // 8, 16)  # the factor is copied on every insert anyway: little headroom needed
            buf = self._L_flat[i] = self.L.new_empty(rows * rows)
        self._L_slot = i
        return buf[:m * m].view(m, m)

    def insert(self, u: torch.Tensor) -> None:
        """Append key ``u`` (float64 [H] on U's device, validated by the caller) as row n:
        O(|F|² + |F|H) (facts form) or O(H² + |F|H) (hidden form)."""
        n = len(self)
        self._U.reserve(n + 1)  # U and W double in step
        self._W.reserve(n + 1)
        U, W, lam = self.U, self.W, self.lam
        if self.gram == "facts":
            # A' = [[A, b], [bᵀ, a]]: L' = [[L, 0], [lᵀ, √s]] with L l = b and s = a - lᵀl (the Schur
            # complement, >= λ exactly); the block inverse of A' gives W' = [W - g rᵀ/s ; rᵀ/s] with
            # g = G b and r = u - Uᵀg.
            b = U @ u
            l = torch.linalg.solve_triangular(self.L, b[:, None], upper=False)[:, 0] if n else b
            s = float((u @ u + lam - l @ l).clamp_min(lam))
            g = torch.linalg.solve_triangular(self.L.T, l[:, None], upper=True)[:, 0] if n else b
            r = u - g @ U
            W.addr_(g, r, alpha=-1 / s)
            new_w = r / s
            L = self._spare_factor(n + 1)
            L[:n, :n], L[:n, n], L[n, :n], L[n, n] = self.L, 0.0, l, math.sqrt(s)
            self.L = L
        else:
            # K' = K + uuᵀ: Sherman-Morrison with z = K⁻¹u, β = 1 + uᵀz gives W' = [W - (Wu)zᵀ/β ; zᵀ/β]
            w, z = _half_solves(self.L, u)
            beta = 1 + float(w @ w)
            self.L = _cholesky_rank1(self.L, u, +1, w=w)
            W.addr_(W @ u, z, alpha=-1 / beta)
            new_w = z / beta
        self._U.append(u)
        self._W.append(new_w)

    def remove(self, k: int) -> None:
        """Drop row ``k`` (same costs as `insert`). The later rows of U and W move up by one; W is
        then corrected in place by a rank-1 term."""
        n = len(self)
        m = n - 1
        if self.gram == "facts":
            keep = torch.cat([torch.arange(k), torch.arange(k + 1, n)]).to(self.U.device)
            e = self.U.new_zeros(n, 1)
            e[k] = 1.0
            g = _cho_solve(self.L, e)[:, 0]  # column k of G
            # G without row/col k is G₋ₖ - g₋ₖ g₋ₖᵀ/γ (γ = G_kk), hence W' = W₋ₖ - g₋ₖ w_kᵀ/γ
            coef, vec, rank1_alpha = g[keep], self.W[k].clone(), -1 / float(g[k])
            # deleting row/col k of L leaves [[L11, 0], [L31, L33']] with L33'L33'ᵀ = L33L33ᵀ + l32 l32ᵀ
            L = self._spare_factor(m)
            L[:k, :k], L[:k, k:], L[k:, :k] = self.L[:k, :k], 0.0, self.L[k + 1:, :k]
            if k < n - 1:
                L[k:, k:] = _cholesky_rank1(self.L[k + 1:, k + 1:].contiguous(), self.L[k + 1:, k], +1)
        else:
            # K' = K - uuᵀ (>= λI): z = K⁻¹u, β = 1 - uᵀz > 0, W' = W₋ₖ + (W₋ₖu)zᵀ/β
            u = self.U[k].clone()
            w, z = _half_solves(self.L, u)
            coef, vec, rank1_alpha = None, z, 1 / (1 - float(w @ w))
            L = _cholesky_rank1(self.L, u, -1, w=w)
        self._U.remove(k)  # close the gap (capacity kept)
        self._W.remove(k)
        self.L = L
        W = self.W
        W.addr_(W @ u if coef is None else coef, vec, alpha=rank1_alpha)


# ============================================================================ Cholesky kernels
def _cholesky_rank1(L, x, sign: int, w=None) -> torch.Tensor:
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


def _half_solves(L, u):
    """(w, z) = (L⁻¹u, (LLᵀ)⁻¹u): w serves three times in a rank-1 update, since uᵀ(LLᵀ)⁻¹u = ‖w‖²
    and `_cholesky_rank1` needs it too."""
    w = torch.linalg.solve_triangular(L, u[:, None], upper=False)
    return w[:, 0], torch.linalg.solve_triangular(L.T, w, upper=True)[:, 0]


def _cho_solve(L, B) -> torch.Tensor:
    """(L Lᵀ)⁻¹ B by two triangular solves (torch.cholesky_solve copies to column-major first)."""
    return torch.linalg.solve_triangular(L.T, torch.linalg.solve_triangular(L, B, upper=False), upper=True)
