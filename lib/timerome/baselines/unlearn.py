"""Training-time unlearning baselines (GA, GD, NPO, SimNPO, RMU, Adaptive-RMU) with LoRA.

`unlearn` trains LoRA adapters (peft, `timerome.finetune.add_lora`) on a *copy* of the backbone,
merges them and returns the unlearned copy; the given backbone is never touched. The paper's
protocol (§IV-A) is the default: the retain-NLL anchor (GD, NPO, SimNPO carry it as their retain
term; RMU holds retain activations instead; GA is GD without it, so it has none), gradient-norm
clipping at 1.0, and early stopping when the validation RetainLP has drifted by ``drift_stop``
nats -- then the last evaluated state still within budget is kept. ``UnlearnHParams.unmitigated``
is each method as its recipe defines it (open-unlearning: GD, NPO, SimNPO and RMU keep their retain
term at weight 1, GA has none) at a standard learning rate, with clipping and early stopping off:
the run the paper reports collapsing the MDLM. (Dropping the retain term too would make GD's run
GA's, and measure a method nobody uses.)

The NPO reference and RMU's frozen activations are the same model with its adapters disabled, so
no second copy of the weights is held.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field

import torch

from ..backbones import Backbone, point
from ..likelihood import answer_logprob
from . import objectives as obj

METHODS = ("ga", "gd", "npo", "simnpo", "rmu", "adaptive_rmu")
LABELS = {"ga": "GA", "gd": "GD", "npo": "NPO", "simnpo": "SimNPO", "rmu": "RMU", "adaptive_rmu": "Adaptive-RMU"}


@dataclass(frozen=True)
class UnlearnHParams:
    """One gradient baseline's settings. Constants rescaled for the tiny backbones say why below."""
    method: str
    lr: float | None = None      # None: 3e-4, RMU 1e-3 (tiny: 10x the paper's LoRA lr 3e-5, the tiny models
                                 # trained at 3e-3; RMU's published lr is 5x NPO's and it adapts 3 matrices)
    epochs: int = 5              # passes over the forget set (an upper bound under early stopping)
    batch_size: int = 8
    lora_r: int = 8
    lora_alpha: float = 16.0
    targets: tuple | None = None  # Linear names to adapt; None: every Linear but the LM head
    beta: float | None = None    # NPO 0.1, SimNPO 4.5 (open-unlearning's defaults) when None
    gamma: float | None = None   # weight of the forget term: 1, SimNPO 0.125
    delta: float = 0.0           # SimNPO's margin
    retain_weight: float = 1.0   # weight of the retain term (anchor / RMU's alpha)
    clip: float | None = 1.0     # gradient-norm clip; None: off
    drift_stop: float | None = 5.0  # early stop at this validation RetainLP drift (nats); None: off
    eval_every: int = 5          # optimiser steps between validation checks
    layer: int | None = None     # RMU: the steered block (None: the middle one)
    update_layers: tuple | None = None  # RMU: blocks whose MLP down-projection is adapted (None: layer-2..layer)
    steering_coef: float = 4.0   # RMU: c in units of the frozen model's mean activation norm at ``layer``
    adaptive_scale: float = 4.0  # Adaptive-RMU: c = scale x the forget batch's frozen activation norm
    n_mc_val: int = 2            # validation ELBO draws (the same masks at every check: drift is the model's)
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}; expected one of {METHODS}")
        if self.lr is None:
            object.__setattr__(self, "lr", 1e-3 if self.method in ("rmu", "adaptive_rmu") else 3e-4)
        for name in ("lr", "lora_alpha"):
            v = getattr(self, name)
            _check(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, name, v, "> 0")
        for name in ("epochs", "batch_size", "lora_r", "eval_every", "n_mc_val"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, v, "an integer >= 1")
        for name in ("beta", "gamma", "clip", "drift_stop"):
            v = getattr(self, name)
            _check(v is None or (isinstance(v, (int, float)) and math.isfinite(v) and v > 0), name, v, "None or > 0")
        for name in ("retain_weight", "steering_coef", "adaptive_scale"):
            v = getattr(self, name)
            _check(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, name, v, ">= 0")

    @property
    def label(self) -> str:
        return LABELS[self.method]

    @property
    def forget_beta(self) -> float:
        return self.beta if self.beta is not None else {"npo": 0.1, "simnpo": 4.5}.get(self.method, 0.1)

    @property
    def forget_weight(self) -> float:
        return self.gamma if self.gamma is not None else (0.125 if self.method == "simnpo" else 1.0)

    def replace(self, **fields) -> "UnlearnHParams":
        return dataclasses.replace(self, **fields)

    def unmitigated(self, lr: float = 1e-3) -> "UnlearnHParams":
        """The method's own recipe (its retain term at weight 1) at a standard lr (tiny: 10x the
        paper's 1e-4), with no clipping and no early stop."""
        return self.replace(lr=lr, retain_weight=1.0, clip=None, drift_stop=None)


@dataclass
class UnlearnResult:
    backbone: Backbone        # the unlearned copy, adapters merged
    hparams: UnlearnHParams
    history: list = field(default_factory=list)  # per validation check: step, loss, retain_val, drift
    steps: int = 0            # optimiser steps taken
    kept_step: int = 0        # the step whose state was kept (early stopping rolls back to it)
    stopped_early: bool = False
    train_s: float = 0.0

    @property
    def final_drift(self) -> float:
        """Validation RetainLP drift (nats, positive = dropped) of the kept state."""
        kept = [h for h in self.history if h["step"] == self.kept_step]
        return kept[-1]["drift"] if kept else math.nan

    def collapsed(self, budget: float = 5.0) -> bool:
        """The returned model lost ``budget`` nats or more of validation RetainLP, or a loss went
        non-finite (the protocol's own budget: a mitigated run rolls back before it)."""
        finite = all(math.isfinite(h["loss"]) for h in self.history if h["loss"] is not None)
        return not finite or not self.final_drift < budget


def _check(ok, name, value, want):
    if not ok:
        raise ValueError(f"UnlearnHParams.{name}={value!r} must be {want}")


def clone(backbone: Backbone) -> Backbone:
    """A deep copy of the backbone's model behind a new `Backbone` (the same tokenizer)."""
    return Backbone(copy.deepcopy(backbone.model), backbone.tokenizer, backbone.family, mask_id=backbone.mask_id,
                    name=backbone.name, prompt_template=backbone.prompt_template, answer_prefix=backbone.answer_prefix)


@contextlib.contextmanager
def adapters_disabled(model):
    """The frozen model: every peft adapter off inside, back on at exit."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


def retain_lp(backbone, facts, n_mc: int, seed: int = 0) -> float:
    """Mean ELBO log-prob of the facts' answers (the validation RetainLP the early stop watches)."""
    lp = answer_logprob(backbone, [f.question for f in facts], [f.answer for f in facts], n_mc=n_mc, seed=seed)
    return float(lp.mean())


def _rmu_layers(hp, n_layers):
    layer = n_layers // 2 if hp.layer is None else hp.layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"UnlearnHParams.layer={hp.layer} out of range for {n_layers} layers")
    ups = tuple(range(max(0, layer - 2), layer + 1)) if hp.update_layers is None else tuple(hp.update_layers)
    if any(not 0 <= l <= layer for l in ups):
        raise ValueError(f"UnlearnHParams.update_layers={ups}: RMU adapts blocks at or below layer {layer}")
    return layer, ups


def unlearn(backbone: Backbone, forget, retain, hp: UnlearnHParams, *, validation_retain, log=None,
            in_place: bool = False) -> UnlearnResult:
    """Unlearn ``forget`` from a copy of ``backbone`` (``retain``: the anchor / RMU retain facts;
    ``validation_retain``: the facts whose RetainLP drift stops training). Returns the copy;
    ``in_place=True`` trains ``backbone`` itself (what a deployment would do; the cost benchmark
    measures it so, without a second copy of the weights)."""
    from ..finetune import add_lora, merge_lora

    forget, retain, validation_retain = list(forget), list(retain), list(validation_retain)
    if not forget:
        raise ValueError("unlearn: the forget set is empty")
    needs_retain = hp.method in ("gd", "npo", "simnpo", "rmu", "adaptive_rmu") and hp.retain_weight > 0
    if needs_retain and not retain:
        raise ValueError(f"unlearn: {hp.label} with retain_weight={hp.retain_weight} needs retain facts")
    if hp.drift_stop is not None and not validation_retain:
        raise ValueError("unlearn: early stopping needs validation_retain facts")
    is_rmu = hp.method in ("rmu", "adaptive_rmu")
    bb = backbone if in_place else clone(backbone)
    torch.manual_seed(hp.seed)
    rng, gen = random.Random(hp.seed), torch.Generator().manual_seed(hp.seed)
    if is_rmu:
        layer, ups = _rmu_layers(hp, bb.n_layers)
        # RMU updates the MLP down-projections below its layer; in a mixture of experts, every expert's
        down = (bb.family.mlp_down or bb.family.expert_down or "").split(".")[-1]
        if not down:
            raise ValueError(f"{hp.label}: family {bb.family.name!r} names no MLP down-projection to adapt")
        params = add_lora(bb.model, r=hp.lora_r, alpha=hp.lora_alpha, targets=[down], layers=list(ups),
                          blocks=bb.family.blocks)
        at = point("resid", layer)
    else:
        params = add_lora(bb.model, r=hp.lora_r, alpha=hp.lora_alpha, targets=list(hp.targets) if hp.targets else None)
    opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=0.0)
    dev = bb.device
    forget_b = [obj.make_batch(bb, forget[i:i + hp.batch_size]).to(dev) for i in range(0, len(forget), hp.batch_size)]
    retain_b = ([obj.make_batch(bb, retain[i:i + hp.batch_size]).to(dev) for i in range(0, len(retain), hp.batch_size)]
                if retain else [])

    def hidden(batch):  # RMU reads the steered block's output
        with bb.trace(at) as seen:
            bb.forward_logits(batch.ids, None if bool(batch.attention.all()) else batch.attention)
        return seen[at]

    if is_rmu:
        u = obj.control_vector(bb.hidden_size, hp.seed, device=dev)
        if hp.method == "rmu":  # c fixed once: coef x the frozen model's mean activation norm on the forget set
            with torch.no_grad(), adapters_disabled(bb.model):
                norms = [(hidden(b).float().norm(dim=-1)[b.attention.bool()]) for b in forget_b]
            c_fixed = hp.steering_coef * float(torch.cat(norms).mean())

    def loss_of(fb, rb):
        if is_rmu:
            with torch.no_grad(), adapters_disabled(bb.model):
                h_rf = hidden(rb) if rb is not None else None
                c = (obj.adaptive_coefficient(hidden(fb), fb.attention, hp.adaptive_scale)
                     if hp.method == "adaptive_rmu" else c_fixed)
            h_f = hidden(fb)
            if rb is None or hp.retain_weight == 0:
                return obj.rmu_loss(h_f, c * u, fb.attention, h_f[:0], h_f[:0], fb.attention[:0], 0.0)
            return obj.rmu_loss(h_f, c * u, fb.attention, hidden(rb), h_rf, rb.attention, hp.retain_weight)
        draw = None if bb.is_causal else obj.draw_masks(fb, gen)
        lp_f = obj.sequence_logprob(bb, fb, draw)
        if hp.method == "npo":
            with torch.no_grad(), adapters_disabled(bb.model):
                lp_ref = obj.sequence_logprob(bb, fb, draw)  # the same masked draw
            f_loss = obj.npo_loss(lp_f, lp_ref, hp.forget_beta)
        elif hp.method == "simnpo":
            f_loss = obj.simnpo_loss(lp_f, fb.lengths, hp.forget_beta, hp.delta)
        else:  # ga, gd
            f_loss = obj.ga_loss(lp_f)
        loss = hp.forget_weight * f_loss
        if rb is not None and hp.method != "ga" and hp.retain_weight > 0:
            r_draw = None if bb.is_causal else obj.draw_masks(rb, gen)
            loss = loss + hp.retain_weight * obj.nll_loss(obj.sequence_logprob(bb, rb, r_draw))
        return loss

    def check(step, loss):
        if not validation_retain:
            return 0.0
        bb.model.eval()
        v = retain_lp(bb, validation_retain, hp.n_mc_val)
        return v

    t0 = time.perf_counter()
    res = UnlearnResult(bb, hp)
    base = check(0, None)
    res.history.append({"step": 0, "loss": None, "retain_val": base, "drift": 0.0})
    snapshot = [p.detach().clone() for p in params]
    step, stop = 0, False
    for epoch in range(hp.epochs):
        order = list(range(len(forget_b)))
        rng.shuffle(order)
        for i in order:
            bb.model.train()
            rb = retain_b[rng.randrange(len(retain_b))] if retain_b else None
            loss = loss_of(forget_b[i], rb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hp.clip is not None:
                torch.nn.utils.clip_grad_norm_(params, hp.clip)
            opt.step()
            step += 1
            if step % hp.eval_every == 0 or (epoch == hp.epochs - 1 and i == order[-1]):
                v = check(step, loss)
                drift = base - v
                res.history.append({"step": step, "loss": float(loss.detach()), "retain_val": v, "drift": drift})
                if log:
                    log(f"{hp.label} step {step}: loss {float(loss.detach()):.4g}, validation RetainLP {v:.3f} (drift {drift:+.3f})")
                if not math.isfinite(float(loss.detach())) or (hp.drift_stop is not None and drift >= hp.drift_stop):
                    stop = True
                    break
                snapshot, res.kept_step = [p.detach().clone() for p in params], step
        if stop:
            break
    if stop and hp.drift_stop is not None:  # roll back to the last state within budget
        with torch.no_grad():
            for p, s in zip(params, snapshot):
                p.copy_(s)
        res.stopped_early = True
    else:  # ran to the end, or an unmitigated run went non-finite: keep what it reached
        res.kept_step = step
    res.steps = step
    bb.model.eval()
    merge_lora(bb.model)
    res.train_s = time.perf_counter() - t0
    return res
