"""Table II (paper 002 §IV-B): one edit configuration across a family of MDLM backbones.

Each backbone is traced on its own (Eq. 5 on the validation facts, with the downstream rule of
`01_tie_heatmaps`: m = resid, every step, the layer whose best step scores highest) and edited with
the *same* α, q and relative λ (× that backbone's mean ‖u‖² of the forget keys at its traced
layer): no per-backbone tuning, as the paper claims. Its baselines are built by
`baselines.builders` as in Table I; a method undefined on a backbone (a weight editor on a mixture
of experts) gets a status, never a number. `tuned_lambda` gives the second table: what 02's
validation rule would have chosen on each backbone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

NO_EDIT = "no_edit"


@dataclass(frozen=True)
class Column:
    """One backbone of Table II: ``name`` (a tiny model or a checkpoint) and its retain twin
    ``retain`` (the same recipe without the forget split: the KS reference), standing for the
    paper's column ``paper``. ``finetune``: LoRA fine-tune on TOFU before editing (the paper's
    r=128, 10 epochs; keyword arguments of `finetune.finetune_lora`), None for the tiny models,
    which were trained on the world."""
    name: str
    retain: str
    paper: str
    load_kwargs: dict = field(default_factory=dict)
    finetune: dict | None = None

    @classmethod
    def parse(cls, d, where: str = "backbones") -> "Column":
        if not isinstance(d, dict):
            raise ValueError(f"{where}: each entry must be a mapping with name, retain, paper; got {d!r}")
        unknown = sorted(set(d) - {"name", "retain", "paper", "load_kwargs", "finetune"})
        missing = [k for k in ("name", "retain", "paper") if not d.get(k)]
        if unknown or missing:
            raise ValueError(f"{where}: entry {d.get('name', d)!r}: " + "; ".join(
                ([f"unknown key(s) {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])))
        return cls(d["name"], d["retain"], d["paper"], dict(d.get("load_kwargs") or {}), d.get("finetune"))


def load(column: Column, *, retain: bool = False, forget_split: str = "forget01", root=None, log=print):
    """The backbone (or its retain twin), fine-tuned on TOFU first where ``column.finetune`` says so
    (the twin on TOFU without ``forget_split``)."""
    import timerome
    from . import data

    bb = timerome.load_backbone(column.retain if retain else column.name, **column.load_kwargs)
    if column.finetune is not None:
        from .finetune import finetune_lora

        full = data.load_tofu("full", root, on_missing_subject="keep")
        drop = {f.question for f in data.load_tofu(forget_split, root)} if retain else set()
        finetune_lora(bb, [f for f in full if f.question not in drop], log=log, **column.finetune)
    return bb


def trace_layer(bb, facts, *, steps: int = 8, seed: int = 0, batch_size: int = 64, cache_dir=None):
    """(layer, `selection.Selection`): the resid layer Eq. 5's downstream rule picks on ``facts``."""
    from . import tracer

    sel = tracer.trace_tie(bb, facts, steps=steps, seed=seed, batch_size=batch_size, cache_dir=cache_dir).select()
    return sel.paper.layer, sel


@dataclass
class BackboneRun:
    """One column's results: per method the per-seed `metrics.summarize` frame, or a status."""
    column: Column
    family: str
    n_layers: int
    layer: int
    selection: object
    per_seed: dict
    status: dict
    memory: object
    seconds: dict


def run_backbone(column: Column, hp, methods, *, forget_split: str = "forget01", trace_facts, seeds=(0, 1, 2),
                 n_mc: int = 8, max_examples: int | None = None, trace_steps: int = 8, batch_size: int = 64,
                 root=None, context: dict | None = None, train_once: bool = False, log=print) -> BackboneRun:
    """Trace ``column``'s backbone, build TimeROME (``hp``: the shared `TimeROMEHParams`, moved to
    the traced layer) and each baseline of ``methods``, and score no_edit and every method on the
    forget split (KS p against the retain twin) and the retain test authors. A gradient baseline is
    trained once per seed and scored at that seed, or with ``train_once`` trained at the first seed
    and scored at every seed (its ± is then the estimator's, as for the deterministic edits)."""
    import time

    from . import data, metrics
    from .baselines import builders

    t0 = time.perf_counter()
    bb = load(column, forget_split=forget_split, root=root, log=log)
    layer, sel = trace_layer(bb, trace_facts, steps=trace_steps, batch_size=batch_size)
    seconds = {"trace": time.perf_counter() - t0}
    forget = data.load_tofu(forget_split, root)
    eval_kw = dict(seeds=list(seeds), n_mc=n_mc, rouge=False, with_truth_ratio=[forget_split],
                   max_examples=max_examples, batch_size=batch_size, root=root)
    splits_ = [forget_split, "retain"]
    retain_ref = metrics.evaluate(load(column, retain=True, forget_split=forget_split, root=root, log=log),
                                  [forget_split], **eval_kw)
    per_seed = {NO_EDIT: metrics.summarize(metrics.evaluate(bb, splits_, **eval_kw), retain_ref)}
    status, memory = {}, None
    ctx = dict(context or {})
    for method in methods:
        t = time.perf_counter()
        if method == "timerome":
            memory = hp.build_memory(bb, forget, layer=layer)
            label = f"TimeROME (α={hp.alpha:g}, q={hp.q})"
            frame = metrics.evaluate(bb, splits_, edit=lambda: memory.installed(bb), **eval_kw)
        elif builders.KINDS[method] == "gradient":
            runs = builders.seed_runs(method, lambda s: builders.Context(bb, forget, seed=s, root=root, **ctx), seeds,
                                      train_once)
            label = runs[0][0].label
            frame = pd.concat([metrics.evaluate(r.backbone, splits_, **{**eval_kw, "seeds": ss})
                               for r, ss in runs], ignore_index=True)
        else:
            try:
                b = builders.build(method, builders.Context(bb, forget, root=root, **ctx))
            except builders.NotApplicable as e:
                status[builders.EDITOR_LABELS.get(method, method)] = f"not applicable: {e}"
                continue
            label, frame = b.label, metrics.evaluate(b.backbone, splits_, edit=b.edit, **eval_kw)
        per_seed[label] = metrics.summarize(frame, retain_ref)
        seconds[label] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return BackboneRun(column, bb.family.name, bb.n_layers, layer, sel, per_seed, status, memory, seconds)


def table(runs, order) -> pd.DataFrame:
    """Table II, one row per (backbone, method) in ``order`` (labels; a status row where a method
    was not applicable): forget_lp / retain_lp (mean, std), ks_p, Δ vs no_edit with paired-t p,
    ``ks_below_no_edit`` (the paper's "sub-noise" KS p: below that backbone's no_edit) and
    ``ks_below_every_backbone`` (the method's KS p is below no_edit's on every backbone)."""
    from . import stats

    rows = []
    for r in runs:
        t = stats.compare_to_baseline(r.per_seed, ["ForgetLP", "RetainLP", "KS_p"], NO_EDIT,
                                      paired=["ForgetLP", "RetainLP"]).set_index("method")
        for label in order:
            row = {"backbone": r.column.name, "paper_backbone": r.column.paper, "family": r.family,
                   "layer": r.layer, "depth": r.layer / r.n_layers, "method": label, "status": "measured"}
            if label in t.index:
                s = t.loc[label]
                row |= {"forget_lp": s.ForgetLP, "forget_lp_std": s.ForgetLP_std, "ks_p": s.KS_p,
                        "retain_lp": s.RetainLP, "retain_lp_std": s.RetainLP_std,
                        "d_forget_lp": s.d_ForgetLP, "p_forget_lp": s.p_ForgetLP,
                        "d_retain_lp": s.d_RetainLP, "p_retain_lp": s.p_RetainLP,
                        "ks_below_no_edit": bool(s.KS_p < t.loc[NO_EDIT, "KS_p"]) if label != NO_EDIT else False}
                if label.startswith("TimeROME") and r.memory is not None:
                    row |= {"lam_relative": r.memory.lam_relative, "lam": r.memory.lam}
            elif label in r.status:
                row["status"] = r.status[label]
            else:
                raise ValueError(f"table: backbone {r.column.name!r} has no row {label!r} (methods: {sorted(t.index)})")
            rows.append(row)
    df = pd.DataFrame(rows)
    measured = df[df.status == "measured"]
    every = measured.groupby("method").ks_below_no_edit.all() & (
        measured.groupby("method").size() == len(runs))  # a status row on some backbone: not every one
    df["ks_below_every_backbone"] = df.method.map(every).fillna(False).astype(bool)
    return df


def tuned_lambda(bb, layer: int, shared: float, val_facts, retain_val, *, lam_grid, retain_budget: float,
                 seeds=(0,), n_mc: int = 8, batch_size: int = 64, target=None) -> dict:
    """What 02's validation rule would choose on this backbone at its traced layer, next to the
    shared λ (both × this backbone's mean ‖u‖²): the chosen λ and both validation drops."""
    from . import tuning

    grid = sorted(set(lam_grid) | {shared})
    choice = tuning.tune_lambda(bb, val_facts, retain_val, layer, lam_grid=grid, retain_budget=retain_budget,
                                seeds=seeds, n_mc=n_mc, batch_size=batch_size, target=target)
    sw = choice.sweep.set_index("lam_relative")
    return {"layer": layer, "key_scale": choice.key_scale, "lam_shared": shared, "lam_tuned": choice.lam_relative,
            "d_forget_val_shared": sw.d_forget_val[shared], "d_retain_val_shared": sw.d_retain_val[shared],
            "d_forget_val_tuned": sw.d_forget_val[choice.lam_relative],
            "d_retain_val_tuned": sw.d_retain_val[choice.lam_relative], "same": choice.lam_relative == shared}
