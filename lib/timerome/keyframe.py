"""Key frames: centring and whitening the edit memory's keys (an extension beyond paper 002).

The memory of Eq. 11-12 scores a residual h against the subject keys by inner products uᵢᵀh.
Residuals share a large common component, so these products partly measure that component rather
than which subject h names. A key frame maps keys and residuals alike by the affine map

    φ(x) = A (x − μ)

before the ridge regression: the coefficients become c = (ŨŨᵀ + λI)⁻¹ Ũ φ(h), Ũ the rows φ(uᵢ),
and the edit α Dᵀ TopQ_q(c) is unchanged otherwise (D is not mapped). μ is the mean of reference
keys (*centring*); A, when given, satisfies AᵀA = Σ⁻¹ with Σ the reference keys' covariance
(*whitening*: ROME's C⁻¹ in the key space), so ũᵢᵀφ(h) = (uᵢ − μ)ᵀ Σ⁻¹ (h − μ). Only AᵀA enters
the coefficients, and A = L⁻¹ from the Cholesky factor Σ = L Lᵀ.

`KeyFrame.from_reference(R, center=, whiten=, shrink=)` estimates the frame from reference keys R
[n, H] (e.g. the subject keys of facts no table cell scores): μ = mean of the rows (with
``center``); Σ = (R − μ)ᵀ(R − μ) / n with ``center``, else the second moment RᵀR / n (ROME's
uncentred C). n keys give Σ rank < n (singular whenever n <= H), so Σ is shrunk toward its mean
eigenvalue: Σ_s = (1 − s) Σ + s (tr Σ / H) I with s = ``shrink`` (0 < s <= 1 needed when Σ is
singular). `KeyFrame.capture` captures R at a coordinate first.

`fold(W)` turns a coefficient map W in the frame into one on raw residuals: c = W φ(h) =
W_eff h − b with W_eff = W A and b = W_eff μ, which is how the memory applies it (one matmul and
a subtraction per token). A memory without a frame (``frame=None``, the default) is the paper's.
"""
from __future__ import annotations

import math

import torch

__all__ = ["KeyFrame"]


def _vector(x, name, H=None):
    x = torch.as_tensor(x)
    if not x.is_floating_point() or x.dim() != 1 or (H is not None and x.numel() != H) or not torch.isfinite(x).all():
        raise ValueError(f"KeyFrame.{name} must be a finite float vector" + (f" of size {H}" if H else "")
                         + f", got dtype {x.dtype}, shape {tuple(x.shape)}")
    return x.to(torch.float64, copy=True)


class KeyFrame:
    """φ(x) = A (x − μ): ``mean`` μ [H] or None, ``whiten`` A [H, H] (lower triangular from
    `from_reference`) or None; at least one is given. Stored in float64 on the device given."""

    def __init__(self, mean=None, whiten=None, *, shrink: float = 0.0, n_reference: int = 0):
        if mean is None and whiten is None:
            raise ValueError("a KeyFrame needs a mean and/or a whitening matrix (frame=None is the identity)")
        H = None
        if whiten is not None:
            whiten = torch.as_tensor(whiten)
            if not whiten.is_floating_point() or whiten.dim() != 2 or whiten.shape[0] != whiten.shape[1] \
                    or not torch.isfinite(whiten).all():
                raise ValueError(f"KeyFrame.whiten must be a finite square float matrix, got {tuple(whiten.shape)}")
            whiten, H = whiten.to(torch.float64, copy=True), whiten.shape[0]
        self.mean = None if mean is None else _vector(mean, "mean", H)
        self.whiten = whiten
        if self.mean is not None and self.whiten is not None and self.mean.device != self.whiten.device:
            raise ValueError("KeyFrame.mean and KeyFrame.whiten are on different devices")
        self.shrink, self.n_reference = float(shrink), int(n_reference)

    @property
    def hidden_size(self) -> int:
        return (self.mean if self.mean is not None else self.whiten).shape[-1]

    @property
    def device(self):
        return (self.mean if self.mean is not None else self.whiten).device

    @property
    def kind(self) -> str:
        return "+".join(k for k, v in (("centred", self.mean), ("whitened", self.whiten)) if v is not None)

    def __repr__(self):
        return f"KeyFrame({self.kind}, hidden={self.hidden_size}, n_reference={self.n_reference}, shrink={self.shrink:g})"

    def to(self, device) -> "KeyFrame":
        return KeyFrame(None if self.mean is None else self.mean.to(device),
                        None if self.whiten is None else self.whiten.to(device),
                        shrink=self.shrink, n_reference=self.n_reference)

    def _check(self, x):
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"the key frame has hidden size {self.hidden_size}, got vectors of size {x.shape[-1]}")

    def apply(self, x) -> torch.Tensor:
        """φ(x) = A (x − μ) for x [..., H], in float64 on the frame's device (a new tensor)."""
        x = torch.as_tensor(x)
        self._check(x)
        x = x.to(self.device, torch.float64)
        x = x - self.mean if self.mean is not None else x
        return x @ self.whiten.T if self.whiten is not None else x

    def fold(self, W) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W_eff, b) with W φ(h) = W_eff h − b for every h: W_eff = W A, b = W_eff μ (None without a mean)."""
        self._check(W)
        W_eff = W @ self.whiten if self.whiten is not None else W
        return W_eff, (None if self.mean is None else W_eff @ self.mean)

    # --- estimation -----------------------------------------------------------------------
    @classmethod
    def from_reference(cls, R, *, center: bool = True, whiten: bool = False, shrink: float = 0.0) -> "KeyFrame":
        """The frame of reference keys R [n, H] (module docstring)."""
        R = torch.as_tensor(R)
        if not R.is_floating_point() or R.dim() != 2 or R.shape[0] < 1 or not torch.isfinite(R).all():
            raise ValueError(f"reference keys must be a finite float matrix [n >= 1, H], got shape {tuple(R.shape)}")
        if not (center or whiten):
            raise ValueError("from_reference: center=False and whiten=False is the identity frame (use frame=None)")
        if isinstance(shrink, bool) or not isinstance(shrink, (int, float)) or not 0 <= shrink <= 1:
            raise ValueError(f"shrink={shrink!r} must be a number in [0, 1]")
        R = R.to(torch.float64)
        n, H = R.shape
        mu = R.mean(0) if center else None
        A = None
        if whiten:
            X = R - mu if center else R
            S = X.T @ X / n
            S = (1 - shrink) * S + shrink * (S.diagonal().sum() / H) * torch.eye(H, dtype=S.dtype, device=S.device)
            L, info = torch.linalg.cholesky_ex(S)
            if int(info) != 0 or not float(S.diagonal().sum()) > 0:
                raise ValueError(f"the reference covariance of {n} keys in {H} dimensions is singular with "
                                 f"shrink={shrink:g}: use 0 < shrink <= 1 (or more reference keys)")
            A = torch.linalg.solve_triangular(L, torch.eye(H, dtype=S.dtype, device=S.device), upper=False)
        return cls(mu, A, shrink=float(shrink) if whiten else 0.0, n_reference=n)

    @classmethod
    def capture(cls, backbone, facts, layer: int, *, module: str = "resid", center: bool = True,
                whiten: bool = False, shrink: float = 0.0, batch_size: int = 32) -> "KeyFrame":
        """`from_reference` on the subject keys u (Eq. 6) of ``facts`` at (layer, module); facts
        whose subject is not in the question are left out."""
        from .capture import capture_keys

        R = capture_keys(backbone, facts, layer, module=module, batch_size=batch_size, skip_unlocatable=True)["U"]
        return cls.from_reference(R, center=center, whiten=whiten, shrink=shrink)

    # --- persistence (`EditMemory.save` / `load`) --------------------------------------------
    def tensors(self) -> dict:
        out = {}
        if self.mean is not None:
            out["frame_mean"] = self.mean.cpu().contiguous()
        if self.whiten is not None:
            out["frame_whiten"] = self.whiten.cpu().contiguous()
        return out

    def meta(self) -> dict:
        return {"kind": self.kind, "shrink": self.shrink, "n_reference": self.n_reference}

    @classmethod
    def from_saved(cls, tensors: dict, meta: dict) -> "KeyFrame":
        shrink = meta.get("shrink", 0.0)
        if not isinstance(shrink, (int, float)) or not math.isfinite(shrink):
            raise ValueError(f"frame shrink {shrink!r} is not a number")
        return cls(tensors.get("frame_mean"), tensors.get("frame_whiten"), shrink=shrink,
                   n_reference=int(meta.get("n_reference", 0)))
