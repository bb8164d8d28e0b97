"""The edit memory: a multi-fact, low-rank, inference-time residual edit (paper 002 §III-C/D).

Memory (Eq. 11-12). U, D ∈ R^{|F|×H}; G = (UUᵀ + λI)⁻¹ is never formed: the ridge Gram matrix
is Cholesky-factorised (float64) and W = G U is precomputed once by triangular solves, so a
forward costs c = W h (|F|·H per token), TopQ_q on |c| per token (q = 0: dense), then α Dᵀ c.
When |F| > H the H×H Gram UᵀU + λI is factorised instead (the dual identity
(UUᵀ + λI)⁻¹U = U(UᵀU + λI)⁻¹: same W, O(|F|H²) rather than O(|F|²H + |F|³)). For the dense
map (q = 0, or q >= |F|) the whole edit is one H×H matrix α WᵀD, used when H < 2|F|.

Streaming. `insert` / `remove` update the factor and W without refactorising. Facts form: the
factor grows by one row (a triangular solve, O(|F|²)) or loses one (a rank-1 Cholesky update
of the trailing block, O(|F|²)), and W takes the matching rank-1 correction from the block
inverse (O(|F|·H)). Hidden form: a rank-1 Cholesky update/downdate (O(H²)) and a
Sherman-Morrison correction of W (O(|F|·H)). The form is chosen when the memory is factorised
(construction, `load`) and kept while streaming. Both match a from-scratch build to float64
round-off. An empty memory is a no-op: its hook returns the module output untouched, so the
logits equal no_edit bitwise.

Install. `installed(backbone, layer, module, steps)` is a context manager that adds the edit to
the module's output at every position of every forward (``steps=None`` or ``-1``: the paper's
k* = -1), or only in forwards whose denoising step ``backbone.step`` (set by `sampler.generate`
and the tracer) is in ``steps``. A step-restricted edit does not fire in forwards outside a
sampler (``backbone.step`` is None, e.g. likelihood scoring).

The keys and deltas come from `timerome.capture` (Eq. 6-9); the Cholesky kernels of the streaming
updates from `timerome.ridge`. This module stays over 400 lines for one reason: the factorisation,
its streaming insert/remove and the Eq. 12 forward share the memory's row buffers and caches, and
splitting them would expose those internals.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch

from .backbones import MODULES, point
from .capture import DEFAULT_TARGET, capture_keys, sync
from .ridge import cho_solve, cholesky_rank1, half_solves

FORMAT = "timerome-edit-memory"
FORMAT_VERSION = 1
TENSORS_FILE, META_FILE = "memory.safetensors", "memory.json"
_META_FIELDS = ("layer", "module", "alpha", "lam", "q", "keys", "backbone", "hidden_size", "n_facts", "target")
GRAM_FORMS = ("auto", "facts", "hidden")  # which ridge Gram matrix is factorised (see the module docstring)


# =========================================================================== validation helpers
def _real(x, name, what="matrix") -> torch.Tensor:
    x = torch.as_tensor(x)
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a real-valued {what}, got dtype {x.dtype}")
    return x


def _finite_matrix(x, name) -> torch.Tensor:
    x = _real(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a matrix [n_facts, hidden], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has non-finite entries (rows {bad}...)")
    # a copy even when x is already float64: the memory shifts its rows in place (`remove`)
    return x.to(torch.float64, copy=True)


def _positive(x, name) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name}={x!r} must be a finite number > 0")
    return float(x)


def _finite(x, name) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{name}={x!r} must be a finite number")
    return float(x)


def _q(q) -> int:
    if isinstance(q, bool) or not isinstance(q, int) or q < 0:
        raise ValueError(f"q={q!r} must be an integer >= 0 (0 = dense, no TopQ)")
    return int(q)


def _key(key):
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise TypeError(f"fact key {key!r} must be a str or an int (it is saved as JSON)")
    return key


def _steps(steps):
    """None / -1 -> None (every step); an int or an iterable of ints >= 0 -> frozenset."""
    if steps is None or (isinstance(steps, int) and not isinstance(steps, bool) and steps == -1):
        return None
    steps = [steps] if isinstance(steps, int) else list(steps)
    if not steps or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in steps):
        raise ValueError(f"steps={steps!r}: expected None or -1 (every step), or non-negative step indices")
    return frozenset(steps)


# =================================================================================== install
def install(backbone, delta, layer: int, module: str = "resid", steps=None, hidden_size: int | None = None):
    """Context manager: while active, output h of ``module`` at ``layer`` becomes ``h + delta(h)``
    (cast to h's dtype).

    ``steps``: None or -1 = every forward; else only forwards whose ``backbone.step`` is in it.
    ``delta(h)`` may return None (no edit). On exit, also by exception, the hook is removed.
    """
    if module not in MODULES:
        raise ValueError(f"module={module!r}; an edit is installed at one of {MODULES}")
    if hidden_size is not None and hidden_size != backbone.hidden_size:
        raise ValueError(f"the edit has hidden size {hidden_size} but {backbone.name or 'the backbone'} has "
                         f"hidden size {backbone.hidden_size}: it was captured on another model")
    only = _steps(steps)

    def edit(_point, h):
        if only is not None and backbone.step not in only:
            return None
        d = delta(h)
        return None if d is None else h + d.to(h.dtype)

    return backbone.trace(point(module, layer), edit=edit)  # validates the layer index


# =============================================================================== single fact
class GatedEdit:
    """Eq. 10, one fact: h <- h + α · clip(<u, h> / (|u|² + ε), 0, g_max) · d, per token.

    The gate is 1 where h equals the subject key u and 0 where h points away from it; ``g_max``
    (not given in the paper; default 1) caps it on out-of-distribution residuals.
    """

    def __init__(self, u, d, *, alpha, g_max: float = 1.0, eps: float = 1e-6, layer=None, module="resid",
                 key=None):
        u = _finite_matrix(torch.as_tensor(u).reshape(1, -1), "u")[0]
        d = _finite_matrix(torch.as_tensor(d).reshape(1, -1), "d")[0]
        if u.shape != d.shape or u.numel() == 0:
            raise ValueError(f"u and d must be non-empty vectors of one hidden size, got {tuple(u.shape)} "
                             f"and {tuple(d.shape)}")
        self.u, self.d, self.key, self.layer, self.module = u, d, key, layer, module
        self.alpha = _finite(alpha, "alpha")
        self.g_max = _positive(g_max, "g_max")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps={eps!r} must be a number >= 0")
        self.eps = float(eps)
        if float(u @ u) + self.eps <= 0:
            raise ValueError("u is zero and eps = 0: the gate <u, h> / (|u|² + eps) is undefined")

    @property
    def hidden_size(self) -> int:
        return self.u.numel()

    def gate(self, h) -> torch.Tensor:
        dt = torch.float64 if h.dtype == torch.float64 else torch.float32
        u = self.u.to(h.device, dt)
        return ((h.to(dt) @ u) / (float(self.u @ self.u) + self.eps)).clamp(0.0, self.g_max)

    def delta(self, h) -> torch.Tensor:
        """The added term α·g(h)·d for h of shape [..., H]."""
        if h.shape[-1] != self.hidden_size:
            raise ValueError(f"h has hidden size {h.shape[-1]}, the edit {self.hidden_size}")
        g = self.gate(h)
        return (self.alpha * g)[..., None] * self.d.to(h.device, g.dtype)

    def installed(self, backbone, layer=None, module=None, steps=None):
        """Context manager, as `EditMemory.installed`."""
        layer = self.layer if layer is None else layer
        if layer is None:
            raise ValueError("no layer given and the edit was not built at one")
        return install(backbone, self.delta, layer, module or self.module or "resid", steps, self.hidden_size)

    @classmethod
    def build(cls, backbone, fact, layer: int, *, module: str = "resid", target: str = DEFAULT_TARGET,
              alpha, g_max: float = 1.0, eps: float = 1e-6):
        k = capture_keys(backbone, [fact], layer, module=module, target=target)
        return cls(k["U"][0], k["D"][0], alpha=alpha, g_max=g_max, eps=eps, layer=layer, module=module,
                   key=k["fact_ids"][0])


# ================================================================================ the memory
class EditMemory:
    """Eq. 11-12: h <- h + α · Dᵀ TopQ_q(G U h), G = (UUᵀ + λI)⁻¹, at every position.

    ``U``, ``D``: [|F|, H] subject keys and target deltas (kept in float64 on U's device);
    ``keys``: one str/int id per row (default 0..|F|-1; `build` uses fact ids). ``alpha`` and
    ``q`` may be changed later (no refactorisation); ``lam`` is fixed by the factorisation.
    ``timings`` holds ``solve_s`` (and ``capture_s`` after `build`).
    """

    def __init__(self, U, D, *, lam, alpha, q, keys=None, layer=None, module="resid", backbone_id=None,
                 target=None, gram: str = "auto"):
        U, D = _finite_matrix(U, "U"), _finite_matrix(D, "D")
        if U.shape != D.shape:
            raise ValueError(f"U {tuple(U.shape)} and D {tuple(D.shape)} must have the same shape [n_facts, hidden]")
        if U.shape[0] == 0:
            raise ValueError("an edit memory needs at least one fact (U has no rows); "
                             "use EditMemory.empty(hidden_size, ...) to start one for streaming inserts")
        if U.shape[1] == 0:
            raise ValueError("U and D have hidden size 0")
        # U, D are the memory's own copies (`_finite_matrix`): `remove` shifts their rows in place
        self._setup(U, D.to(U.device), keys, lam=lam, alpha=alpha, q=q, layer=layer, module=module,
                    backbone_id=backbone_id, target=target, gram=gram)

    def _setup(self, U, D, keys, *, lam, alpha, q, layer, module, backbone_id, target, gram="auto"):
        self._lam = _positive(lam, "lam")
        self.key_scale = self.lam_relative = None  # mean |u|^2 and lam / it: known after `build`
        if gram not in GRAM_FORMS:
            raise ValueError(f"gram={gram!r}; expected one of {GRAM_FORMS}")
        self.gram_choice = gram
        self.alpha, self.q = alpha, q  # validated by the setters
        if module not in MODULES:
            raise ValueError(f"module={module!r}; expected one of {MODULES}")
        keys = list(range(U.shape[0])) if keys is None else [_key(k) for k in keys]
        if len(keys) != U.shape[0]:
            raise ValueError(f"{len(keys)} keys for {U.shape[0]} facts")
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1}, key=str)[:5]
            raise ValueError(f"fact keys must be unique; repeated: {dup}")
        self.U, self.D, self.keys = U, D, keys
        self._index = {k: i for i, k in enumerate(keys)}
        self.layer, self.module, self.backbone_id, self.target = layer, module, backbone_id, target
        self.skipped: list = []
        t0 = time.perf_counter()
        self._factorise()
        sync(self.U.device)
        self.timings = {"solve_s": time.perf_counter() - t0}

    @classmethod
    def empty(cls, hidden_size: int, *, lam, alpha, q, device="cpu", **meta):
        """A memory with no facts (a no-op until `insert`)."""
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size={hidden_size!r} must be an integer >= 1")
        mem = cls.__new__(cls)
        z = torch.zeros(0, hidden_size, dtype=torch.float64, device=device)
        mem._setup(z, z.clone(), [], lam=lam, alpha=alpha, q=q, layer=meta.get("layer"),
                   module=meta.get("module", "resid"), backbone_id=meta.get("backbone_id"), target=meta.get("target"),
                   gram=meta.get("gram", "auto"))
        return mem

    # --- parameters ----------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        return self._lam

    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value):
        self._alpha = _finite(value, "alpha")
        self._cache = {}

    @property
    def q(self) -> int:
        return self._q

    @q.setter
    def q(self, value):
        self._q = _q(value)
        self._cache = {}

    @property
    def hidden_size(self) -> int:
        return self.U.shape[1]

    def __len__(self):
        return len(self.keys)

    def __contains__(self, key):
        return key in self._index

    def __repr__(self):
        where = f", layer={self.layer}, module={self.module!r}" if self.layer is not None else ""
        return (f"EditMemory(n_facts={len(self)}, hidden={self.hidden_size}, lam={self.lam:g}, "
                f"alpha={self.alpha:g}, q={self.q}{where})")

    # --- factorisation -------------------------------------------------------------------------
    def _factorise(self):
        """Cholesky-factorise the smaller of the two ridge Gram matrices (float64) and precompute
        W = G U. Facts form (|F| <= H): L Lᵀ = UUᵀ + λI_|F|, W = (L Lᵀ)⁻¹U. Hidden form
        (|F| > H): by the dual identity (UUᵀ + λI)⁻¹U = U(UᵀU + λI_H)⁻¹, L Lᵀ = UᵀU + λI_H and
        W = U (L Lᵀ)⁻¹: O(|F|H²) instead of O(|F|²H + |F|³)."""
        n, H = self.U.shape
        self.gram = self.gram_choice if self.gram_choice != "auto" else "facts" if n <= H else "hidden"
        if self.gram == "facts" and not n:
            L, W = self.U.new_zeros(0, 0), self.U.clone()
        else:
            A = self.U @ self.U.T if self.gram == "facts" else self.U.T @ self.U
            A.diagonal().add_(self.lam)
            L, info = torch.linalg.cholesky_ex(A)
            if int(info) != 0:
                raise torch.linalg.LinAlgError(f"the ridge Gram matrix is not numerically positive definite "
                                               f"(lam={self.lam:g}); use a larger lam")
            W = cho_solve(L, self.U) if self.gram == "facts" else cho_solve(L, self.U.T).T
        self._adopt(self.U, self.D, W.contiguous(), L)

    def _adopt(self, U, D, W, L):
        """Take U, D, W, L as they are (fresh tensors): the row buffers are these, full."""
        self._bufs = {"U": U.contiguous(), "D": D.contiguous(), "W": W.contiguous()}
        self.U, self.D, self.W, self.L = self._bufs["U"], self._bufs["D"], self._bufs["W"], L.contiguous()
        self._L_flat, self._L_slot = [None, None], None  # see `_spare_factor`
        self._cache = {}

    def _spare_factor(self, m: int) -> torch.Tensor:
        """An m×m contiguous tensor for the next facts-form factor, in whichever of two reusable flat
        buffers does not hold the current one. (Growing or shrinking L must copy it, since LAPACK's
        solves want it contiguous; a fresh |F|² tensor costs page faults worth ~10× the copy.) The
        caller must make the result the new ``self.L``: the buffer of the previous factor is reused."""
        i = 1 if self._L_slot == 0 else 0
        buf = self._L_flat[i]
        if buf is None or buf.numel() < m * m:
            rows = max(m + m // 8, 16)  # the factor is copied on every insert anyway: little headroom needed
            buf = self._L_flat[i] = self.L.new_empty(rows * rows)
        self._L_slot = i
        return buf[:m * m].view(m, m)

    def _reserve(self, rows: int):
        """Room for ``rows`` rows in the U, D, W buffers: capacity doubles, so appending one fact
        copies them O(1) times amortised. (L stays a contiguous tensor: LAPACK's triangular solves
        are several times slower on a strided view than the O(|F|²) copy that growing it costs.)"""
        n = len(self)
        if self._bufs["U"].shape[0] >= rows:
            return
        cap = max(rows, 2 * self._bufs["U"].shape[0], 16)
        for name in ("U", "D", "W"):
            buf = self.U.new_zeros(cap, self.hidden_size)
            buf[:n] = getattr(self, name)
            self._bufs[name] = buf
        self.U, self.D, self.W = self._bufs["U"][:n], self._bufs["D"][:n], self._bufs["W"][:n]

    def _compiled(self, device, dtype):
        """(W, αD, M or None) in the forward's device/dtype; M = αWᵀD is the dense H×H map."""
        key = (str(device), dtype)
        if key not in self._cache:
            n, H = self.U.shape
            dense = self.q == 0 or self.q >= n
            M = (self.alpha * self.W.T @ self.D).to(device, dtype) if dense and H < 2 * n else None
            self._cache[key] = (self.W.to(device, dtype), (self.alpha * self.D).to(device, dtype), M)
        return self._cache[key]

    # --- the edit ------------------------------------------------------------------------------
    def coefficients(self, h) -> torch.Tensor:
        """c = G U h per token, [..., |F|] (before TopQ)."""
        W, _, _ = self._compiled(h.device, torch.float64 if h.dtype == torch.float64 else torch.float32)
        return h.to(W.dtype) @ W.T

    def delta(self, h) -> torch.Tensor:
        """The added term α Dᵀ TopQ_q(G U h) for h of shape [..., H] (float64 in, float64 out; else float32)."""
        if h.shape[-1] != self.hidden_size:
            raise ValueError(f"h has hidden size {h.shape[-1]}, the memory {self.hidden_size}")
        dt = torch.float64 if h.dtype == torch.float64 else torch.float32
        if not self.keys:
            return torch.zeros(h.shape, dtype=dt, device=h.device)
        W, Da, M = self._compiled(h.device, dt)
        x = h.to(dt)
        if M is not None:
            return x @ M
        c = x @ W.T
        n = c.shape[-1]
        if 0 < self.q < n:  # TopQ: per token, keep the q largest |c|
            val, idx = self._top_q(x, c)
            if 8 * self.q <= n:  # few of many: gather q rows of αD per token, not an |F|-wide matmul
                out = val[..., :1] * Da[idx[..., 0]]
                for j in range(1, self.q):
                    out.add_(val[..., j:j + 1] * Da[idx[..., j]])
                return out
            c = torch.zeros_like(c).scatter_(-1, idx, val)
        return c @ Da

    def _top_q(self, x, c):
        """(values, indices) of the q largest |c| per token. Ranked on float64 coefficients with
        ties to the lower index (a stable sort), so float32 round-off (which varies with the BLAS
        thread count) cannot swap two nearly equal coefficients."""
        rank = c if c.dtype == torch.float64 else x.double() @ self._compiled(x.device, torch.float64)[0].T
        idx = rank.abs().sort(dim=-1, descending=True, stable=True).indices[..., :self.q]
        return c.gather(-1, idx), idx

    def installed(self, backbone, layer=None, module=None, steps=None):
        """Context manager: the edit on ``backbone`` at (layer, module), every position; ``steps``
        None/-1 = every forward, else only forwards with ``backbone.step`` in ``steps``.
        ``layer``/``module`` default to where the memory was built."""
        layer = self.layer if layer is None else layer
        if layer is None:
            raise ValueError("no layer given and the memory was not built at one")
        module = module or self.module or "resid"
        if self.backbone_id and backbone.name and backbone.name != self.backbone_id:
            warnings.warn(f"memory captured on {self.backbone_id!r}, installed on {backbone.name!r}", stacklevel=2)
        # an empty memory returns None: the module output is passed on untouched (exact no_edit)
        return install(backbone, lambda h: self.delta(h) if self.keys else None, layer, module, steps,
                       hidden_size=self.hidden_size)

    # --- streaming -----------------------------------------------------------------------------
    def _fact_vectors(self, u, d):
        """u, d as float64 vectors on the memory's device, validated together (one finiteness check:
        at small H a streaming insert is dominated by per-call overheads, not flops)."""
        u, d = _real(u, "u", "vector"), _real(d, "d", "vector")
        for x, name in ((u, "u"), (d, "d")):
            if x.shape != (self.hidden_size,):
                raise ValueError(f"{name} must have shape ({self.hidden_size},), got {tuple(x.shape)}")
        ud = torch.stack([u.to(self.U.device, torch.float64), d.to(self.U.device, torch.float64)])
        if not torch.isfinite(ud).all():
            raise ValueError(f"{'u' if not torch.isfinite(ud[0]).all() else 'd'} has non-finite entries")
        return ud[0], ud[1]

    def insert(self, u, d, key):
        """Add one fact, updating the factorisation: O(|F|² + |F|H) (facts form) or O(H² + |F|H)
        (hidden form), against O(|F|²H + |F|³) (or O(|F|H²)) for a rebuild. ``U``, ``D``, ``W``
        are views into buffers that grow by doubling (W's rows are updated in place)."""
        key = _key(key)
        if key in self._index:
            raise KeyError(f"fact key {key!r} is already in the memory")
        u, d = self._fact_vectors(u, d)
        n = len(self)
        self._reserve(n + 1)
        if self.gram == "facts":
            # A' = [[A, b], [bᵀ, a]]: L' = [[L, 0], [lᵀ, √s]] with L l = b and s = a - lᵀl (the Schur
            # complement, >= λ exactly); the block inverse of A' gives W' = [W - g rᵀ/s ; rᵀ/s] with
            # g = G b and r = u - Uᵀg.
            b = self.U @ u
            l = torch.linalg.solve_triangular(self.L, b[:, None], upper=False)[:, 0] if n else b
            s = float((u @ u + self.lam - l @ l).clamp_min(self.lam))
            g = torch.linalg.solve_triangular(self.L.T, l[:, None], upper=True)[:, 0] if n else b
            r = u - g @ self.U
            self.W.addr_(g, r, alpha=-1 / s)
            new_w = r / s
            L = self._spare_factor(n + 1)
            L[:n, :n], L[:n, n], L[n, :n], L[n, n] = self.L, 0.0, l, math.sqrt(s)
            self.L = L
        else:
            # K' = K + uuᵀ: Sherman-Morrison with z = K⁻¹u, β = 1 + uᵀz gives W' = [W - (Wu)zᵀ/β ; zᵀ/β]
            w, z = half_solves(self.L, u)
            beta = 1 + float(w @ w)
            self.L = cholesky_rank1(self.L, u, +1, w=w)
            self.W.addr_(self.W @ u, z, alpha=-1 / beta)
            new_w = z / beta
        for name, row in (("U", u), ("D", d), ("W", new_w)):
            self._bufs[name][n] = row
        self.U, self.D, self.W = self._bufs["U"][:n + 1], self._bufs["D"][:n + 1], self._bufs["W"][:n + 1]
        self.keys.append(key)
        self._index[key] = n
        self._cache = {}

    def remove(self, key):
        """Drop one fact, updating the factorisation (same costs as `insert`). The rows after it move
        up by one in the buffers; W is then corrected in place by a rank-1 term."""
        if key not in self._index:
            raise KeyError(f"fact key {key!r} is not in the memory")
        k, n = self._index[key], len(self)
        m = n - 1
        if self.gram == "facts":
            keep = torch.cat([torch.arange(k), torch.arange(k + 1, n)]).to(self.U.device)
            e = self.U.new_zeros(n, 1)
            e[k] = 1.0
            g = cho_solve(self.L, e)[:, 0]  # column k of G
            # G without row/col k is G₋ₖ - g₋ₖ g₋ₖᵀ/γ (γ = G_kk), hence W' = W₋ₖ - g₋ₖ w_kᵀ/γ
            coef, vec, rank1_alpha = g[keep], self.W[k].clone(), -1 / float(g[k])
            # deleting row/col k of L leaves [[L11, 0], [L31, L33']] with L33'L33'ᵀ = L33L33ᵀ + l32 l32ᵀ
            L = self._spare_factor(m)
            L[:k, :k], L[:k, k:], L[k:, :k] = self.L[:k, :k], 0.0, self.L[k + 1:, :k]
            if k < n - 1:
                L[k:, k:] = cholesky_rank1(self.L[k + 1:, k + 1:].contiguous(), self.L[k + 1:, k], +1)
        else:
            # K' = K - uuᵀ (>= λI): z = K⁻¹u, β = 1 - uᵀz > 0, W' = W₋ₖ + (W₋ₖu)zᵀ/β
            u = self.U[k].clone()
            w, z = half_solves(self.L, u)
            coef, vec, rank1_alpha = None, z, 1 / (1 - float(w @ w))
            L = cholesky_rank1(self.L, u, -1, w=w)
        for name in ("U", "D", "W"):  # close the gap (capacity kept)
            buf = self._bufs[name]
            buf[k:m] = buf[k + 1:n].clone()
        self.U, self.D, self.W, self.L = self._bufs["U"][:m], self._bufs["D"][:m], self._bufs["W"][:m], L
        self.W.addr_(self.W @ u if coef is None else coef, vec, alpha=rank1_alpha)
        del self.keys[k]
        self._index = {kk: i for i, kk in enumerate(self.keys)}
        self._cache = {}

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write ``path/memory.safetensors`` (U, D in float64) and ``path/memory.json`` (metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"U": self.U.cpu().contiguous(), "D": self.D.cpu().contiguous()}, str(path / TENSORS_FILE))
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "layer": self.layer, "module": self.module,
                "alpha": self.alpha, "lam": self.lam, "q": self.q, "keys": list(self.keys),
                "backbone": self.backbone_id, "hidden_size": self.hidden_size, "n_facts": len(self),
                "target": self.target, "gram": self.gram_choice, "skipped": list(self.skipped),
                "timings": self.timings}
        (path / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path, backbone=None) -> "EditMemory":
        """Read a saved memory (and refactorise it); with ``backbone``, check it fits that model."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / META_FILE).is_file() or not (path / TENSORS_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a saved edit memory (needs {META_FILE} and {TENSORS_FILE})")
        meta_file, tensors_file = path / META_FILE, path / TENSORS_FILE
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{meta_file}: corrupt edit-memory metadata, not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{meta_file}: not a {FORMAT} v{FORMAT_VERSION} file (format, version = {got!r})")
        missing = [f for f in _META_FIELDS if f not in meta]
        if missing:
            raise ValueError(f"{meta_file}: corrupt edit-memory metadata, missing field(s) {missing}")
        try:
            t = load_file(str(tensors_file))
        except Exception as e:  # safetensors raises its own error types for a truncated/garbled file
            raise ValueError(f"{tensors_file}: corrupt edit-memory tensors ({type(e).__name__}: {e})") from None
        if set(t) != {"U", "D"}:
            raise ValueError(f"{tensors_file}: expected tensors U and D, found {sorted(t)}")
        U, D = t["U"], t["D"]
        n, H = meta["n_facts"], meta["hidden_size"]
        if not isinstance(meta["keys"], list) or len(meta["keys"]) != n:
            raise ValueError(f"{meta_file}: field 'keys' must be a list of n_facts={n!r} fact keys")
        if tuple(U.shape) != (n, H) or tuple(D.shape) != (n, H):
            raise ValueError(f"{path}: U {tuple(U.shape)} / D {tuple(D.shape)} disagree with the metadata "
                             f"({n} facts, hidden size {H})")
        if backbone is not None and backbone.hidden_size != H:
            raise ValueError(f"{path}: the memory has hidden size {H} (captured on {meta['backbone']!r}) but "
                             f"{backbone.name or 'the backbone'} has hidden size {backbone.hidden_size}")
        common = dict(lam=meta["lam"], alpha=meta["alpha"], q=meta["q"], layer=meta["layer"],
                      module=meta["module"], backbone_id=meta["backbone"], target=meta["target"],
                      gram=meta.get("gram", "auto"))
        try:  # a bad value (lam: "abc", module: "x", ...) is the file's fault: say which file
            mem = cls.empty(H, **common) if n == 0 else cls(U, D, keys=meta["keys"], **common)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{meta_file}: {e}") from e
        mem.skipped = list(meta.get("skipped", []))
        return mem

    # --- construction from facts ---------------------------------------------------------------
    @classmethod
    def build(cls, backbone, facts, layer: int, *, module: str = "resid", target: str = DEFAULT_TARGET,
              lam=None, lam_relative=None, alpha, q, batch_size: int = 32,
              skip_unlocatable: bool = False) -> "EditMemory":
        """Capture (Eq. 6-9) then factorise (Eq. 11). ``timings``: capture_s and solve_s.

        Exactly one of ``lam`` (absolute) or ``lam_relative``: λ = lam_relative × ``key_scale``, the
        mean squared key norm ‖u‖² of the captured facts (λ competes with UUᵀ, whose scale differs
        between layers and backbones). Sets ``lam``, ``lam_relative`` (λ / key_scale) and ``key_scale``.
        """
        if (lam is None) == (lam_relative is None):
            raise ValueError(f"pass exactly one of lam= (absolute) or lam_relative= (x mean |u|^2); "
                             f"got lam={lam!r}, lam_relative={lam_relative!r}")
        _positive(lam if lam is not None else lam_relative, "lam" if lam is not None else "lam_relative")
        _finite(alpha, "alpha"), _q(q)  # fail before the capture, not after
        k = capture_keys(backbone, facts, layer, module=module, target=target, batch_size=batch_size,
                         skip_unlocatable=skip_unlocatable)
        key_scale = float(k["U"].pow(2).sum(1).mean())
        if lam is None:
            if not key_scale > 0:
                raise ValueError("lam_relative needs a nonzero key scale, but every captured key is zero")
            lam = lam_relative * key_scale
        mem = cls(k["U"], k["D"], lam=lam, alpha=alpha, q=q, keys=k["fact_ids"], layer=layer, module=module,
                  backbone_id=backbone.name or None, target=target)
        mem.key_scale = key_scale
        mem.lam_relative = (float(lam_relative) if lam_relative is not None
                            else mem.lam / key_scale if key_scale > 0 else float("nan"))
        mem.skipped = k["skipped"]
        mem.timings = {"capture_s": k["capture_s"], "solve_s": mem.timings["solve_s"]}
        return mem
