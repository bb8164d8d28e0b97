"""Pieces of the design-space ablations (paper 002 §IV-E, Fig. 5) that are not a memory switch.

The switches themselves live where the edit does: the site (``module`` of `EditMemory.build`),
the steps (``steps`` of `EditMemory.installed`, scored with `likelihood.ELBOOptions.step_clock`),
TopQ (``q``), the target (``target``, one string or one per fact), the coordinate
(`selection.select_coordinate` with ``beta``, `tuning.random_layer`, `ar_trace`) and the key frame
(`timerome.keyframe`). This module adds:

* `other_author_targets`: a counterfactual target per fact, the answer another author gives to the
  same question position (TOFU asks every author its questions in one order), drawn from a pool of
  facts no table cell scores;
* `per_fact_layers` / `per_fact_memories` / `installed_all`: per-fact coordinates (the paper's
  limitation 4): each fact goes to the layer of its own largest |TIE| (at any step), one memory per
  layer, all installed together;
* `effect`: one row of an ablation table, an edit's evaluation frame against the unedited one:
  per role the mean log-probability, the change Δ (mean over facts of the per-fact change averaged
  over seeds, with a percentile-bootstrap CI over facts), the paired t-test over seeds, and the
  selectivity ΔForgetLP / ΔRetainLP with its bootstrap CI (`stats.selectivity_ci`);
* `Variant` / `effect_table`: the rows of Fig. 5's design-space panel, each a named set of memories
  and the steps they act at, scored once per distinct edit (a panel's reference row repeats the
  same edit, so it is scored once and shows the same numbers in every panel).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections import defaultdict

import numpy as np

from .rng import stable_seed

__all__ = ["other_author_targets", "per_fact_layers", "per_fact_memories", "installed_all", "effect", "Variant",
           "effect_table"]


def other_author_targets(facts, pool, *, seed: int = 0) -> list[str]:
    """Per fact: the answer of the fact at the same question position (its rank among its author's
    facts in ``facts``) of an author of ``pool`` other than its own, the author drawn with
    `rng.stable_seed` of (seed, fact_id); position modulo that author's number of pool facts."""
    facts, pool = list(facts), list(pool)
    for f in facts + pool:
        if f.entity_id is None:
            raise ValueError(f"other_author_targets: fact {f.fact_id} has no entity_id (author)")
    by_author = defaultdict(list)
    for f in pool:
        by_author[f.entity_id].append(f)
    seen = defaultdict(int)
    out = []
    for f in facts:
        pos = seen[f.entity_id]
        seen[f.entity_id] += 1
        others = sorted(a for a in by_author if a != f.entity_id)
        if not others:
            raise ValueError(f"other_author_targets: the pool has no author other than {f.entity_id} (fact {f.fact_id})")
        a = random.Random(stable_seed(seed, f.fact_id)).choice(others)
        out.append(by_author[a][pos % len(by_author[a])].answer)
    return out


def per_fact_layers(result, module: str = "resid") -> dict:
    """``{fact_id: layer}``: the layer of each traced fact's largest |TIE| of ``module`` over (layer,
    step); objectives within `selection.TIE_RESOLUTION` tie, to the lower layer."""
    from .selection import TIE_RESOLUTION

    t = np.abs(result.per_fact(module)).max(2)  # [F, L]: best step per layer
    return {fid: int(np.argmax(np.round(row / TIE_RESOLUTION))) for fid, row in zip(result.fact_ids, t)}


def per_fact_memories(backbone, facts, layers: dict, hp, *, batch_size: int = 32) -> list:
    """One memory per layer of ``layers`` (`per_fact_layers`) holding that layer's facts, each built
    by ``hp.build_memory`` (its module, relative λ, α, q, target) at that layer. Facts without a
    layer (not traced, e.g. no subject in the question) are left out."""
    groups = defaultdict(list)
    for f in facts:
        if f.fact_id in layers:
            groups[layers[f.fact_id]].append(f)
    if not groups:
        raise ValueError("per_fact_memories: none of the facts has a traced layer")
    return [hp.build_memory(backbone, groups[l], layer=l, batch_size=batch_size) for l in sorted(groups)]


@contextlib.contextmanager
def installed_all(backbone, memories, steps=None):
    """Every memory of ``memories`` installed at its own (layer, module) at once."""
    with contextlib.ExitStack() as stack:
        for m in memories:
            stack.enter_context(m.installed(backbone, steps=steps))
        yield memories


def effect(frame, base, *, n_boot: int = 2000, seed: int = 0, roles=("forget", "retain")) -> dict:
    """An edit's `metrics.evaluate` frame against the unedited ``base`` (same facts and seeds): per
    role r (``forget`` -> prefix forget_lp, ``retain`` -> retain_lp): ``<r>`` (mean log-prob),
    ``d_<r>``, ``d_<r>_lo``, ``d_<r>_hi`` (bootstrap 95% CI over facts), ``p_<r>`` (paired t over
    seeds; NaN with one seed or no change); with both roles ``selectivity``, ``selectivity_lo``, ``selectivity_hi``."""
    from . import metrics, stats

    out, deltas = {}, {}
    for role in roles:
        pre = f"{role}_lp"
        d = metrics.fact_deltas(frame, base, role).to_numpy(dtype=float)
        deltas[role] = d
        a = frame[frame.role == role].groupby("seed").logprob.mean().sort_index()
        b = base[base.role == role].groupby("seed").logprob.mean().sort_index()
        out[pre] = float(a.mean())
        out[f"d_{pre}"] = float(d.mean())
        out[f"d_{pre}_lo"], out[f"d_{pre}_hi"] = stats.bootstrap_ci(d, n_resamples=n_boot, seed=seed)
        out[f"p_{pre}"] = stats.paired_t(a.to_numpy(), b.to_numpy())[1] if len(a) > 1 else math.nan
    if {"forget", "retain"} <= set(roles):
        out["selectivity"], out["selectivity_lo"], out["selectivity_hi"] = stats.selectivity_ci(
            deltas["forget"], deltas["retain"], n_resamples=n_boot, seed=seed)
    return out


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ablation row: ``panel`` (site, steps, coordinate, ...), ``name`` (the row's label, the
    ledger's ``variant``), the memories installed together, and the denoising steps they act at
    (None: every step). ``reference``: the panel's unablated edit; ``extension``: beyond the paper."""
    panel: str
    name: str
    memories: tuple
    steps: tuple | None = None
    reference: bool = False
    extension: bool = False
    note: str = ""

    def __post_init__(self):
        if not self.memories:
            raise ValueError(f"Variant {self.panel}/{self.name}: no memory to install")
        object.__setattr__(self, "memories", tuple(self.memories))
        if self.steps is not None:
            object.__setattr__(self, "steps", tuple(sorted(set(int(k) for k in self.steps))))

    @property
    def edit_key(self) -> tuple:
        """Two variants with one key install the same edit."""
        return tuple(id(m) for m in self.memories), self.steps

    def installed(self, backbone):
        return installed_all(backbone, self.memories, self.steps)

    def describe(self) -> dict:
        ms = self.memories
        one = lambda vals: vals[0] if len(set(vals)) == 1 else "-".join(map(str, vals))  # noqa: E731
        return {"panel": self.panel, "variant": self.name, "reference": self.reference, "extension": self.extension,
                "layer": one([m.layer for m in ms]), "module": one([m.module for m in ms]),
                "steps": "all" if self.steps is None else "-".join(map(str, self.steps)),
                "alpha": one([m.alpha for m in ms]), "q": one([m.q for m in ms]),
                "lam_relative": one([m.lam_relative for m in ms]), "n_facts": sum(len(m) for m in ms),
                "frame": one([m.frame.kind if m.frame is not None else "none" for m in ms]),
                "note": self.note}


def effect_table(backbone, variants, score, base, **effect_kw):
    """One row per variant: `Variant.describe` and `effect` of ``score(edit)`` (a callable taking an
    ``edit`` context factory and returning a `metrics.evaluate` frame) against ``base``; each
    distinct edit is scored once. Variant names must be unique within a panel."""
    import pandas as pd

    seen, cache, rows = set(), {}, []
    for v in variants:
        if (v.panel, v.name) in seen:
            raise ValueError(f"effect_table: variant {v.name!r} appears twice in panel {v.panel!r}")
        seen.add((v.panel, v.name))
        if v.edit_key not in cache:
            cache[v.edit_key] = effect(score(lambda v=v: v.installed(backbone)), base, **effect_kw)
        rows.append(v.describe() | cache[v.edit_key])
    return pd.DataFrame(rows)
