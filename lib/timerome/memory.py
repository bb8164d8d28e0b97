"""The edit memory: a multi-fact, low-rank, inference-time residual edit (paper 002 §III-C/D).

Edit (Eq. 12). U, D ∈ R^{|F|×H} hold one subject key and one target delta per fact (captured by
`timerome.capture`, Eq. 6-9). A forward computes c = W h with W = (UUᵀ + λI)⁻¹U (|F|·H per
token; W comes from the ridge factor of `timerome.ridge`, Eq. 11), keeps the q largest |c| per
token (TopQ_q; q = 0: dense), and adds α Dᵀ c. For the dense map (q = 0, or q >= |F|) the whole
edit is one H×H matrix α WᵀD, used when H < 2|F|. ``alpha`` and ``q`` change without
refactorising; ``lam`` is fixed by the factor.

Streaming. `EditMemory.insert` / `remove` update the factor and W exactly (see `timerome.ridge`)
and keep D's rows alongside in a row buffer of the same kind; fact keys (str or int ids) map to
rows. An empty memory is a no-op: its hook returns the module output untouched, so the logits
equal no_edit bitwise.

Install. `installed(backbone, layer, module, steps)` is a context manager that adds the edit to
the module's output at every position of every forward (``steps=None`` or ``-1``: the paper's
k* = -1), or only in forwards whose denoising step ``backbone.step`` (set by `sampler.generate`
and the tracer) is in ``steps``. A step-restricted edit does not fire in forwards outside a
sampler (``backbone.step`` is None, e.g. likelihood scoring). `GatedEdit` is the single-fact
edit of Eq. 10, installed the same way.

Key frame (an extension, default off). ``frame=`` a `timerome.keyframe.KeyFrame` φ(x) = A(x − μ)
regresses on centred / whitened keys: c = (ŨŨᵀ + λI)⁻¹ Ũ φ(h) with Ũ = φ(U), applied as
c = W_eff h − b (`KeyFrame.fold`). ``U`` stays the captured keys; ``U_frame`` is φ(U). Without a
frame every computation is the paper's Eq. 11-12, unchanged.

Persistence. `save` writes U, D (and the frame) and the metadata; `load` refactorises them.

The module is over 400 lines because the memory's own surface (validation, the TopQ forward,
installation, persistence, construction from facts) stays with it; the factor and the capture
are in their own modules.
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
from .ridge import GRAM_FORMS, RidgeFactor, RowBuffer

FORMAT = "timerome-edit-memory"
FORMAT_VERSION = 1
TENSORS_FILE, META_FILE = "memory.safetensors", "memory.json"
_META_FIELDS = ("layer", "module", "alpha", "lam", "q", "keys", "backbone", "hidden_size", "n_facts", "target")


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
    ``backbone.step`` may also be a tuple, one step per batch row (likelihood scoring with a step
    clock, `likelihood.ELBOOptions.step_clock`): then only the rows whose step is in ``steps`` are
    edited, the others pass through untouched. ``delta(h)`` may return None (no edit). On exit,
    also by exception, the hook is removed.
    """
    if module not in MODULES:
        raise ValueError(f"module={module!r}; an edit is installed at one of {MODULES}")
    if hidden_size is not None and hidden_size != backbone.hidden_size:
        raise ValueError(f"the edit has hidden size {hidden_size} but {backbone.name or 'the backbone'} has "
                         f"hidden size {backbone.hidden_size}: it was captured on another model")
    only = _steps(steps)

    def edit(_point, h):
        if only is not None:
            step = backbone.step
            if isinstance(step, tuple):  # one denoising step per batch row
                if len(step) != h.shape[0]:
                    raise ValueError(f"backbone.step has {len(step)} per-row steps for a batch of {h.shape[0]} rows")
                rows = [i for i, k in enumerate(step) if k in only]
                if not rows:
                    return None
                if len(rows) < len(step):
                    idx = torch.as_tensor(rows, device=h.device)
                    d = delta(h[idx])
                    if d is None:
                        return None
                    out = h.clone()
                    out[idx] = h[idx] + d.to(h.dtype)
                    return out
            elif step not in only:
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
    ``timings`` holds ``solve_s`` (and ``capture_s`` after `build`). ``frame``: a
    `timerome.keyframe.KeyFrame` the keys and residuals are mapped by (module docstring; None: the paper's).
    """

    def __init__(self, U, D, *, lam, alpha, q, keys=None, layer=None, module="resid", backbone_id=None,
                 target=None, gram: str = "auto", frame=None):
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
                    backbone_id=backbone_id, target=target, gram=gram, frame=frame)

    def _setup(self, U, D, keys, *, lam, alpha, q, layer, module, backbone_id, target, gram="auto", frame=None):
        self._lam = _positive(lam, "lam")
        if frame is not None:
            from .keyframe import KeyFrame

            if not isinstance(frame, KeyFrame):
                raise TypeError(f"frame must be a timerome.keyframe.KeyFrame or None, not {type(frame).__name__}")
            if frame.hidden_size != U.shape[1]:
                raise ValueError(f"the key frame has hidden size {frame.hidden_size}, the keys {U.shape[1]}")
            frame = frame.to(U.device)
        self.frame = frame
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
        self.keys = keys
        self._index = {k: i for i, k in enumerate(keys)}
        self.layer, self.module, self.backbone_id, self.target = layer, module, backbone_id, target
        self.skipped: list = []
        t0 = time.perf_counter()
        self._raw = None if frame is None else RowBuffer(U)  # with a frame: the captured keys, as given
        self._factor = RidgeFactor(U if frame is None else frame.apply(U), self._lam, gram)  # Eq. 11: L and W = G U
        self._D = RowBuffer(D)  # D's rows, indexed like the factor's U and W
        sync(U.device)
        self.timings = {"solve_s": time.perf_counter() - t0}
        self._cache = {}

    @classmethod
    def empty(cls, hidden_size: int, *, lam, alpha, q, device="cpu", **meta):
        """A memory with no facts (a no-op until `insert`)."""
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size={hidden_size!r} must be an integer >= 1")
        mem = cls.__new__(cls)
        z = torch.zeros(0, hidden_size, dtype=torch.float64, device=device)
        mem._setup(z, z.clone(), [], lam=lam, alpha=alpha, q=q, layer=meta.get("layer"),
                   module=meta.get("module", "resid"), backbone_id=meta.get("backbone_id"), target=meta.get("target"),
                   gram=meta.get("gram", "auto"), frame=meta.get("frame"))
        return mem

    # --- parameters ----------------------------------------------------------------------------
    lam = property(lambda self: self._lam, doc="λ (fixed by the factorisation)")

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
        frame = "" if self.frame is None else f", frame={self.frame.kind}"
        return (f"EditMemory(n_facts={len(self)}, hidden={self.hidden_size}, lam={self.lam:g}, "
                f"alpha={self.alpha:g}, q={self.q}{where}{frame})")

    # --- the factor (Eq. 11, `timerome.ridge`: U, W, L, gram) and the deltas D -----------------
    U = property(lambda self: self._factor.U if self._raw is None else self._raw.view,
                 doc="[|F|, H] subject keys (float64), row i for ``keys[i]``")
    U_frame = property(lambda self: self._factor.U, doc="[|F|, H] the keys the ridge regression sees: φ(U) (U without a frame)")
    D = property(lambda self: self._D.view, doc="[|F|, H] target deltas (float64), row i for ``keys[i]``")
    L = property(lambda self: self._factor.L, doc="the Cholesky factor of the ridge Gram matrix (see ``gram``)")
    gram = property(lambda self: self._factor.gram, doc='the factorised Gram form, "facts" or "hidden"')

    @property
    def W(self) -> torch.Tensor:
        """[|F|, H] W = (UUᵀ + λI)⁻¹U, the coefficient map c = W h (with a frame: Ũ for U and c = W φ(h))."""
        return self._factor.W

    @W.setter
    def W(self, value):
        self._factor.W = value
        self._cache = {}

    def _compiled(self, device, dtype):
        """(W, αD, M or None, b or None, bαD or None) in the forward's device/dtype: c = W h − b; M = αWᵀD is
        the dense H×H map. b (the frame's offset, `KeyFrame.fold`) is None without a frame's mean."""
        key = (str(device), dtype)
        if key not in self._cache:
            n, H = self.U.shape
            dense = self.q == 0 or self.q >= n
            W, b = (self.W, None) if self.frame is None else self.frame.fold(self.W)
            M = (self.alpha * W.T @ self.D).to(device, dtype) if dense and H < 2 * n else None
            bD = None if b is None else (self.alpha * b @ self.D).to(device, dtype)
            self._cache[key] = (W.to(device, dtype), (self.alpha * self.D).to(device, dtype), M,
                                None if b is None else b.to(device, dtype), bD)
        return self._cache[key]

    # --- the edit ------------------------------------------------------------------------------
    def coefficients(self, h) -> torch.Tensor:
        """c = G U h per token, [..., |F|] (before TopQ; with a frame c = G Ũ φ(h))."""
        W, _, _, b, _ = self._compiled(h.device, torch.float64 if h.dtype == torch.float64 else torch.float32)
        c = h.to(W.dtype) @ W.T
        return c if b is None else c - b

    def delta(self, h) -> torch.Tensor:
        """The added term α Dᵀ TopQ_q(G U h) for h of shape [..., H] (float64 in, float64 out; else float32)."""
        if h.shape[-1] != self.hidden_size:
            raise ValueError(f"h has hidden size {h.shape[-1]}, the memory {self.hidden_size}")
        dt = torch.float64 if h.dtype == torch.float64 else torch.float32
        if not self.keys:
            return torch.zeros(h.shape, dtype=dt, device=h.device)
        W, Da, M, b, bD = self._compiled(h.device, dt)
        x = h.to(dt)
        if M is not None:
            return x @ M if b is None else x @ M - bD
        c = x @ W.T
        if b is not None:
            c = c - b
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
        if c.dtype == torch.float64:
            rank = c
        else:
            W64, _, _, b64, _ = self._compiled(x.device, torch.float64)
            rank = x.double() @ W64.T if b64 is None else x.double() @ W64.T - b64
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
        U = self._factor.U
        for x, name in ((u, "u"), (d, "d")):
            if x.shape != (U.shape[1],):
                raise ValueError(f"{name} must have shape ({U.shape[1]},), got {tuple(x.shape)}")
        ud = torch.stack([u.to(U.device, torch.float64), d.to(U.device, torch.float64)])
        if not torch.isfinite(ud).all():
            raise ValueError(f"{'u' if not torch.isfinite(ud[0]).all() else 'd'} has non-finite entries")
        return ud[0], ud[1]

    def insert(self, u, d, key):
        """Add one fact, updating the factor (`RidgeFactor.insert`): O(|F|² + |F|H) (facts form) or
        O(H² + |F|H) (hidden form), against O(|F|²H + |F|³) (or O(|F|H²)) for a rebuild. ``U``, ``D``,
        ``W`` are views into buffers that grow by doubling (W's rows are updated in place)."""
        key = _key(key)
        if key in self._index:
            raise KeyError(f"fact key {key!r} is already in the memory")
        u, d = self._fact_vectors(u, d)
        if self.frame is None:
            self._factor.insert(u)
        else:
            self._factor.insert(self.frame.apply(u))
            self._raw.append(u)
        self._D.append(d)
        self._index[key] = len(self.keys)
        self.keys.append(key)
        self._cache = {}

    def remove(self, key):
        """Drop one fact, updating the factor (`RidgeFactor.remove`, same costs as `insert`). The rows
        after it move up by one."""
        if key not in self._index:
            raise KeyError(f"fact key {key!r} is not in the memory")
        k = self._index[key]
        self._factor.remove(k)
        if self._raw is not None:
            self._raw.remove(k)
        self._D.remove(k)
        del self.keys[k]
        self._index = {kk: i for i, kk in enumerate(self.keys)}
        self._cache = {}

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write ``path/memory.safetensors`` (U, D in float64, and the frame's tensors) and ``path/memory.json``
        (metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"U": self.U.cpu().contiguous(), "D": self.D.cpu().contiguous()}
        save_file(tensors if self.frame is None else {**tensors, **self.frame.tensors()}, str(path / TENSORS_FILE))
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "layer": self.layer, "module": self.module,
                "alpha": self.alpha, "lam": self.lam, "q": self.q, "keys": list(self.keys),
                "backbone": self.backbone_id, "hidden_size": self.hidden_size, "n_facts": len(self),
                "target": self.target, "gram": self.gram_choice, "skipped": list(self.skipped),
                "timings": self.timings}
        if self.frame is not None:  # absent without a frame: files stay as before
            meta["frame"] = self.frame.meta()
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
        frame_meta = meta.get("frame")
        want = {"U", "D"} | ({"frame_mean", "frame_whiten"} & set(t) if frame_meta is not None else set())
        if set(t) != want or (frame_meta is not None and want == {"U", "D"}):
            raise ValueError(f"{tensors_file}: expected tensors U and D" + (" and the key frame's" if frame_meta else "")
                             + f", found {sorted(t)}")
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
            if frame_meta is not None:
                from .keyframe import KeyFrame

                if not isinstance(frame_meta, dict):
                    raise ValueError(f"field 'frame' must be a mapping, got {frame_meta!r}")
                common["frame"] = KeyFrame.from_saved(t, frame_meta)
            mem = cls.empty(H, **common) if n == 0 else cls(U, D, keys=meta["keys"], **common)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{meta_file}: {e}") from e
        mem.skipped = list(meta.get("skipped", []))
        return mem

    # --- construction from facts ---------------------------------------------------------------
    @classmethod
    def build(cls, backbone, facts, layer: int, *, module: str = "resid", target: str = DEFAULT_TARGET,
              lam=None, lam_relative=None, alpha, q, batch_size: int = 32,
              skip_unlocatable: bool = False, frame=None) -> "EditMemory":
        """Capture (Eq. 6-9) then factorise (Eq. 11). ``timings``: capture_s and solve_s.

        Exactly one of ``lam`` (absolute) or ``lam_relative``: λ = lam_relative × ``key_scale``, the
        mean squared key norm ‖u‖² of the captured facts (λ competes with UUᵀ, whose scale differs
        between layers and backbones; with a ``frame``, of the mapped keys φ(u)). Sets ``lam``,
        ``lam_relative`` (λ / key_scale) and ``key_scale``. ``target``: one string, or one per fact
        (`capture.capture_keys`).
        """
        if (lam is None) == (lam_relative is None):
            raise ValueError(f"pass exactly one of lam= (absolute) or lam_relative= (x mean |u|^2); "
                             f"got lam={lam!r}, lam_relative={lam_relative!r}")
        _positive(lam if lam is not None else lam_relative, "lam" if lam is not None else "lam_relative")
        _finite(alpha, "alpha"), _q(q)  # fail before the capture, not after
        k = capture_keys(backbone, facts, layer, module=module, target=target, batch_size=batch_size,
                         skip_unlocatable=skip_unlocatable)
        key_scale = float((k["U"] if frame is None else frame.apply(k["U"])).pow(2).sum(1).mean())
        if lam is None:
            if not key_scale > 0:
                raise ValueError("lam_relative needs a nonzero key scale, but every captured key is zero")
            lam = lam_relative * key_scale
        mem = cls(k["U"], k["D"], lam=lam, alpha=alpha, q=q, keys=k["fact_ids"], layer=layer, module=module,
                  backbone_id=backbone.name or None, target=target if isinstance(target, str) else list(target),
                  frame=frame)
        mem.key_scale = key_scale
        mem.lam_relative = (float(lam_relative) if lam_relative is not None
                            else mem.lam / key_scale if key_scale > 0 else float("nan"))
        mem.skipped = k["skipped"]
        mem.timings = {"capture_s": k["capture_s"], "solve_s": mem.timings["solve_s"]}
        return mem
