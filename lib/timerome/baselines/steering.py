"""Inference-time baselines (paper 002 §IV-A): activation steering at one layer, every denoising step.

Both act at the hook point of ``module`` (default ``resid``, the block output) of one ``layer``,
at every position of every forward (so every denoising step of `sampler.generate`, and every
likelihood forward), through `memory.install`. ``coef`` is in units of ``scale``, a mean
per-token activation norm ‖h‖ at that point, so one coefficient means the same on any backbone.

* `ActSteer` (RepE / CAA mean-difference steering). Per fact, the mean hooked output over its
  [prompt ; answer] positions at step 0 (nothing masked); then
  r = mean over forget facts − mean over retain facts, r̂ = r / ‖r‖,
  s = mean ‖h‖ over every [prompt ; answer] token of the forget and retain facts, and installed
  h -> h − c·s·r̂. With c > 0 every state is pushed away from the forget side (towards the
  retain side); c = 0 is the unedited model.
* `RMULike`: the paper names "rmu_like" without defining it; this is **this artifact's reading**.
  RMU's fixed random control vector u (uniform in [0, 1)^H, unit length, seeded) is added at
  inference time instead of being trained in: h -> h + c·s·g(h)·u, with s = mean ‖h‖ over the
  forget facts' [prompt ; answer] tokens and a per-position gate on how much h resembles a forget
  subject key u_z (`capture.capture_keys`):
  sim(h) = max_z cos(h, u_z), g(h) = clamp((sim − τ) / (1 − τ), 0, 1).
  A position equal to a forget key gets the whole vector; one with cosine ≤ τ to every key gets
  nothing. τ = 0.8 by default (our choice: residual states share a large common component, so a
  lower threshold would fire on most tokens).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from ..backbones import MODULES, point
from ..likelihood import encode_example
from ..memory import install


# =============================================================================== validation
def _check_coef(coef):
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not math.isfinite(coef) or coef < 0:
        raise ValueError(f"coef={coef!r} must be a finite number >= 0")
    return float(coef)


def _check_tau(tau):
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 <= tau < 1:
        raise ValueError(f"tau={tau!r} must be a number in [0, 1)")
    return float(tau)


def _check_site(backbone, layer, module):
    if module not in MODULES:
        raise ValueError(f"module={module!r}; steering acts at one of {MODULES}")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer={layer!r} must be an integer")
    try:
        backbone.site(point(module, layer))
    except IndexError as e:  # the backbone says IndexError; the baselines' API says ValueError
        raise ValueError(f"layer={layer}: {e}") from None


def _facts(facts, what):
    facts = list(facts)
    if not facts:
        raise ValueError(f"no {what} facts: the list is empty")
    return facts


# ============================================================================= activations
@torch.no_grad()
def fact_activations(backbone, facts, layer: int, module: str = "resid", batch_size: int = 32):
    """([n, H] float64 per-fact mean of the hooked output over its [prompt ; answer] positions,
    [total tokens] float64 per-token norms ‖h‖), at step 0 with nothing masked."""
    from ..sampler import left_pad

    at = point(module, layer)
    seqs = [sum(encode_example(backbone, f.question, f.answer), []) for f in facts]
    means, norms = [], []
    with backbone.at_step(0):
        for i in range(0, len(seqs), batch_size):
            ids, att = left_pad(seqs[i:i + batch_size], backbone.pad_id, backbone.device)
            with backbone.trace(at, stop_after=at) as seen:  # nothing after the point is needed
                backbone.logits(ids, None if bool(att.all()) else att)
            h, m = seen[at].double(), att.bool()
            means.append((h * m[..., None]).sum(1) / m.sum(1, keepdim=True))
            norms.append(h.norm(dim=-1)[m])
    return torch.cat(means), torch.cat(norms)


# =============================================================================== ActSteer
@dataclass(frozen=True, eq=False)
class ActSteer:
    """Mean-difference steering h -> h − coef·scale·r̂ (module docstring). Build with
    `ActSteer.build`; sweep the coefficient with `with_coef` (no rebuild)."""
    LABEL = "act_steer"
    direction: torch.Tensor  # [H] float64 unit vector r̂
    scale: float             # mean per-token ‖h‖ of the forget and retain facts
    layer: int
    module: str = "resid"
    coef: float = 1.0
    build_s: float = 0.0

    @classmethod
    def build(cls, backbone, forget_facts, retain_facts, layer: int, *, module: str = "resid",
              coef: float = 1.0) -> "ActSteer":
        forget_facts, retain_facts = _facts(forget_facts, "forget"), _facts(retain_facts, "retain")
        coef = _check_coef(coef)
        _check_site(backbone, layer, module)
        t0 = time.perf_counter()
        f, nf = fact_activations(backbone, forget_facts, layer, module)
        r, nr = fact_activations(backbone, retain_facts, layer, module)
        d = f.mean(0) - r.mean(0)
        if not d.norm() > 0:
            raise ValueError("the forget and retain mean activations coincide: there is no direction")
        scale = float(torch.cat([nf, nr]).mean())
        return cls(d / d.norm(), scale, layer, module, coef, time.perf_counter() - t0)

    def with_coef(self, coef: float) -> "ActSteer":
        return dataclasses.replace(self, coef=_check_coef(coef))

    def delta(self, h) -> torch.Tensor:
        """The added term −coef·scale·r̂ (the same at every position), shaped like h."""
        return ((-self.coef * self.scale) * self.direction.to(h.device, torch.float64)).expand(h.shape)

    def installed(self, backbone):
        """Context manager: the steering is active at every forward; hooks removed on exit."""
        return install(backbone, self.delta, self.layer, self.module, hidden_size=self.direction.numel())


# ================================================================================ RMULike
def control_vector(hidden_size: int, seed: int = 0) -> torch.Tensor:
    """RMU's fixed random direction: uniform in [0, 1)^H, unit length ([H] float64, seeded)."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    return u / u.norm()


@dataclass(frozen=True, eq=False)
class RMULike:
    """This artifact's reading of the paper's rmu_like: h -> h + coef·scale·g(h)·u (module
    docstring). Build with `RMULike.build`; sweep with `with_coef`."""
    LABEL = "rmu_like (this artifact's reading)"
    keys: torch.Tensor     # [n, H] float64 unit forget subject keys
    control: torch.Tensor  # [H] float64 unit control vector u
    scale: float           # mean per-token ‖h‖ of the forget facts
    layer: int
    module: str = "resid"
    coef: float = 1.0
    tau: float = 0.8
    seed: int = 0
    build_s: float = 0.0

    @classmethod
    def build(cls, backbone, forget_facts, layer: int, *, module: str = "resid", coef: float = 1.0,
              tau: float = 0.8, seed: int = 0) -> "RMULike":
        from ..capture import capture_keys

        forget_facts = _facts(forget_facts, "forget")
        coef, tau = _check_coef(coef), _check_tau(tau)
        _check_site(backbone, layer, module)
        t0 = time.perf_counter()
        # facts whose subject is not in the question have no key; they still count towards scale
        U = capture_keys(backbone, forget_facts, layer, module=module, skip_unlocatable=True)["U"]
        _, norms = fact_activations(backbone, forget_facts, layer, module)
        keys = U / U.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return cls(keys, control_vector(U.shape[1], seed).to(U.device), float(norms.mean()), layer, module,
                   coef, tau, int(seed), time.perf_counter() - t0)

    def with_coef(self, coef: float) -> "RMULike":
        return dataclasses.replace(self, coef=_check_coef(coef))

    def gate(self, h) -> torch.Tensor:
        """[...] float64 in [0, 1] for h [..., H]: clamp((max_z cos(h, u_z) − τ) / (1 − τ), 0, 1)."""
        hd = h.double()
        cos = hd @ self.keys.to(hd.device).T / hd.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return ((cos.amax(-1) - self.tau) / (1 - self.tau)).clamp(0, 1)

    def delta(self, h) -> torch.Tensor:
        """The added term coef·scale·g(h)·u, shaped like h (float64)."""
        return (self.coef * self.scale) * self.gate(h)[..., None] * self.control.to(h.device)

    def installed(self, backbone):
        """Context manager: the gated vector is added at every forward; hooks removed on exit."""
        return install(backbone, self.delta, self.layer, self.module, hidden_size=self.control.numel())
