"""One way to build every method's edit from the forget set: Table I's rows and the cost table use it.

`build(method, ctx)` returns a `Built`: the backbone to evaluate (the given one for inference-time
and weight-edit methods, an unlearned copy for gradient methods), the edit to enter around the
evaluation (a callable returning a context manager, or None) and whether the run converged.
Which retain facts each method may use is fixed here, so no method sees a scored fact:

* gradient anchors / RMU retain and the steering baselines' retain side: `splits.anchor_facts`
  (facts the model knows that no cell scores);
* early stopping: the validation retain authors (`splits.retain_facts("validation")`);
* TimeROME: its tuned `TimeROMEHParams` (``hparams_file``, written by 02).
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
    in_place: bool = False        # gradient methods train the given backbone (the cost benchmark), not a copy
    _cache: dict = field(default_factory=dict)

    def prepare(self, method: str) -> None:
        """Load what ``method``'s build reads, so that a timed build does no file reading."""
        self.anchor, self.validation_retain
        if KINDS[method] == "gradient":
            import peft  # noqa: F401  (imported here: a lazy import would count as the build's memory)
        if method in ("timerome", "act_steer", "rmu_like", "rome", "memit", "alphaedit"):
            self.timerome_hparams

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


def build(method: str, ctx: Context) -> Built:
    if method not in KINDS:
        raise ValueError(f"method={method!r}; expected one of {tuple(KINDS)}")
    return _BUILDERS[KINDS[method] if KINDS[method] == "gradient" else method](method, ctx)


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


_BUILDERS = {"timerome": _timerome, "gradient": _gradient}
