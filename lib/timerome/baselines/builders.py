"""One way to build every method's edit from the forget set: Table I's rows and the cost table use it.

`build(method, ctx)` returns a `Built`: the backbone to evaluate (the given one for inference-time
and weight-edit methods, an unlearned copy for gradient methods), the edit to enter around the
evaluation (a callable returning a context manager, or None) and whether the run converged.
Which retain facts each method may use is fixed here, so no method sees a scored fact:

* gradient anchors / RMU retain and the steering baselines' retain side: `splits.anchor_facts`
  (facts the model knows that no cell scores);
* early stopping: the validation retain authors (`splits.retain_facts("validation")`);
* TimeROME: its tuned `TimeROMEHParams` (``hparams_file``, written by 02); the steering baselines
  act at its layer (the traced coordinate), the weight editors at their own modules' layers;
* the steering coefficient, unless given, is chosen on the validation forget facts with TimeROME's
  λ rule (`tuning.choose_lambda`: the largest forget drop whose retain drop is within budget).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .cost import KINDS


@dataclass
class Context:
    backbone: Any
    forget: list
    hparams_file: Any = None      # TimeROME's tuned hyperparameters (and its traced layer)
    root: Any = None              # data root
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # per method: keyword overrides of its defaults
    anchor_source: str = "forget10"  # `splits.anchor_facts` source: what the backbone learned
    n_anchor: int = 80
    n_validation: int = 20        # validation forget facts (steering coefficient choice)
    retain_budget: float = 5.0    # nats: the coefficient rule's retain budget
    in_place: bool = False        # gradient methods train the given backbone (the cost benchmark), not a copy
    _cache: dict = field(default_factory=dict)

    def prepare(self, method: str) -> None:
        """Load what ``method``'s build reads, so that a timed build does no file reading."""
        self.anchor, self.validation_retain
        if KINDS[method] == "gradient":
            import peft  # noqa: F401  (imported here: a lazy import would count as the build's memory)
        if method in ("timerome", "act_steer", "rmu_like", "rome", "memit", "alphaedit"):
            self.timerome_hparams
        if method in ("act_steer", "rmu_like") and "coef" not in self.overrides.get(method, {}):
            self.validation_forget

    @property
    def anchor(self) -> list:
        from .. import splits
        if "anchor" not in self._cache:
            self._cache["anchor"] = splits.anchor_facts(self.anchor_source, self.root, max_examples=self.n_anchor)
        return self._cache["anchor"]

    @property
    def validation_retain(self) -> list:
        from .. import splits
        if "val" not in self._cache:
            self._cache["val"] = splits.retain_facts("validation", self.root)
        return self._cache["val"]

    @property
    def validation_forget(self) -> list:
        from .. import splits
        if "val_forget" not in self._cache:
            self._cache["val_forget"] = splits.validation_forget_facts(
                self.n_validation, self.root, split="forget05", exclude=self.forget[0].split)
        return self._cache["val_forget"]

    @property
    def timerome_hparams(self):
        from ..hparams import TimeROMEHParams
        if self.hparams_file is None:
            raise ValueError("this method needs hparams_file (the TimeROMEHParams written by 02_canonical_tofu)")
        if "hp" not in self._cache:
            self._cache["hp"] = TimeROMEHParams.load(self.hparams_file)
        return self._cache["hp"]

    def option(self, method: str, **defaults) -> dict:
        return {**defaults, **self.overrides.get(method, {})}


@dataclass
class Built:
    method: str
    label: str
    backbone: Any
    edit: Callable | None = None
    converged: bool = True
    info: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return KINDS[self.method]


class NotApplicable(ValueError):
    """The method has no defined form on this backbone (e.g. a weight editor of one MLP
    down-projection on a mixture of experts); a table row carries the reason, never a number."""


def build(method: str, ctx: Context) -> Built:
    """``method``'s edit of ``ctx.forget``; raises `NotApplicable` where the method is undefined."""
    if method not in KINDS:
        raise ValueError(f"method={method!r}; expected one of {tuple(KINDS)}")
    return _BUILDERS[KINDS[method] if KINDS[method] == "gradient" else method](method, ctx)


def seed_runs(method: str, make_context: Callable[[int], Context], seeds, train_once: bool = False) -> list:
    """A gradient method's training runs as [(Built, the seeds it is scored at)]: one run per seed,
    scored at that seed, or with ``train_once`` one run at the first seed, scored at every seed
    (its ± is then the estimator's alone, as for the deterministic edits)."""
    seeds = list(seeds)
    if train_once:
        return [(build(method, make_context(seeds[0])), seeds)]
    return [(build(method, make_context(s)), [s]) for s in seeds]


def _timerome(method, ctx):
    o = ctx.option(method, alpha=2.0, q=4)
    mem = ctx.timerome_hparams.build_memory(ctx.backbone, ctx.forget, alpha=o["alpha"], q=o["q"])
    return Built(method, f"TimeROME (α={o['alpha']:g}, q={o['q']})", ctx.backbone,
                 lambda: mem.installed(ctx.backbone), info={"memory": mem})


def _gradient(method, ctx):
    from .unlearn import UnlearnHParams, unlearn

    hp = UnlearnHParams(method, seed=ctx.seed, **ctx.option(method))
    res = unlearn(ctx.backbone, ctx.forget, ctx.anchor, hp, validation_retain=ctx.validation_retain,
                  in_place=ctx.in_place)
    return Built(method, hp.label, res.backbone, None, converged=not res.collapsed(), info={"result": res})


def choose_coefficient(backbone, make, forget_val, retain_val, coefs, retain_budget, *, n_mc: int = 4):
    """Steering coefficient by TimeROME's λ rule on validation facts: ``make(facts)`` builds the
    steering from the validation forget facts, each coefficient is scored, `tuning.choose_lambda`
    picks. Returns (coefficient, sweep frame)."""
    import pandas as pd

    from ..tuning import choose_lambda, validation_lp

    base = validation_lp(backbone, forget_val, retain_val, n_mc=n_mc)
    steer, rows = make(forget_val), []
    for c in coefs:
        s = steer.with_coef(c)
        lp = validation_lp(backbone, forget_val, retain_val, edit=lambda s=s: s.installed(backbone), n_mc=n_mc)
        rows.append({"lam_relative": float(c), "coef": float(c), "d_forget_val": float(lp.forget_val - base.forget_val),
                     "d_retain_val": float(lp.retain_val - base.retain_val)})
    sweep = pd.DataFrame(rows)
    return float(choose_lambda(sweep, retain_budget).coef), sweep.drop(columns="lam_relative")


def _steering(method, ctx):
    from . import steering

    bb, layer = ctx.backbone, ctx.timerome_hparams.layer
    o = ctx.option(method, coefs=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0))  # x mean activation norm
    if method == "act_steer":
        make, label = (lambda facts: steering.ActSteer.build(bb, facts, ctx.anchor, layer)), steering.ActSteer.LABEL
    else:
        make, label = (lambda facts: steering.RMULike.build(bb, facts, layer)), steering.RMULike.LABEL
    info = {}
    if "coef" in o:
        coef = float(o["coef"])
    else:
        coef, info["coef_sweep"] = choose_coefficient(bb, make, ctx.validation_forget, ctx.validation_retain,
                                                      o["coefs"], ctx.retain_budget)
    steer = make(ctx.forget).with_coef(coef)
    return Built(method, label, bb, lambda: steer.installed(bb), info={**info, "coef": coef, "steering": steer, "layer": layer})


def _editor(method, ctx):
    """ROME / MEMIT / AlphaEdit at their own defaults (layers chosen as in their modules: the
    early-to-mid MLPs, ROME's locus), with ``overrides`` as hyperparameter fields."""
    import importlib

    mod = importlib.import_module(f".{method}", __package__)
    hp_cls = {"rome": "ROMEHParams", "memit": "MEMITHParams", "alphaedit": "AlphaEditHParams"}[method]
    hp = getattr(mod, hp_cls)(**ctx.option(method))
    bb = ctx.backbone
    if bb.family.mlp_down is None:  # choosing one expert would be this artifact's method, not the editor's
        raise NotApplicable(f"{EDITOR_LABELS[method]} edits the MLP down-projection of a layer; {bb.name} "
                            f"(family {bb.family.name}) has none: {bb.family.notes}")
    edit = mod.build(bb, ctx.forget, hp)
    layer = getattr(hp, "layer", None)
    layer = layer if layer is not None else "-".join(str(l) for l in hp.layers)
    return Built(method, EDITOR_LABELS[method], bb, lambda: edit.applied(bb), info={"edit": edit, "layer": layer})


EDITOR_LABELS = {"rome": "ROME", "memit": "MEMIT", "alphaedit": "AlphaEdit"}
_BUILDERS = {"timerome": _timerome, "gradient": _gradient, "act_steer": _steering, "rmu_like": _steering,
             "rome": _editor, "memit": _editor, "alphaedit": _editor}
