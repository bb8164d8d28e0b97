"""Tuning the ridge λ of the edit memory on validation facts only (paper 002 Eq. 11).

λ competes with UUᵀ in G = (UUᵀ + λI)⁻¹, and the key scale differs between layers and backbones,
so candidates are *relative*: λ = lam_relative × mean ‖u‖² of the captured validation keys.

`lambda_sweep` measures, for each candidate, the change in mean summed log-probability (nats) of
the validation forget facts (``d_forget_val``) and of the validation retain facts
(``d_retain_val``) when the memory of the validation forget facts (α, q fixed) is installed,
against the unedited backbone. `choose_lambda` is the rule, a pure function of that frame: the
largest ForgetLP drop among candidates whose RetainLP drop is at most ``retain_budget`` nats;
if none is, the smallest RetainLP drop. `tune_lambda` does both at one coordinate. ``frame``: the
memory's `timerome.keyframe.KeyFrame` (centring / whitening extension); λ is then relative to the
mean ‖φ(u)‖² of the mapped keys.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pandas as pd

__all__ = ["LambdaChoice", "lambda_sweep", "validation_lp", "choose_lambda", "tune_lambda", "rule_text", "random_layer"]

SWEEP_COLUMNS = ("lam_relative", "d_forget_val", "d_retain_val")


@dataclass(frozen=True)
class LambdaChoice:
    """The chosen λ (absolute and × key_scale), the key scale, the whole sweep and the rule in words."""
    lam: float
    lam_relative: float
    key_scale: float
    sweep: pd.DataFrame
    rule: str


def rule_text(retain_budget: float, alpha: float = 1.0, q: int = 2) -> str:
    return (f"largest validation ForgetLP drop with RetainLP drop <= {retain_budget:g} nats at alpha={alpha:g}, "
            f"q={q} (else the smallest RetainLP drop)")


def choose_lambda(sweep: pd.DataFrame, retain_budget: float) -> pd.Series:
    """The row of ``sweep`` the rule picks (ties: the first such row). Drops are negative deltas."""
    if not isinstance(sweep, pd.DataFrame) or sweep.empty:
        raise ValueError("choose_lambda: the sweep is empty (no λ candidate was measured)")
    missing = [c for c in SWEEP_COLUMNS if c not in sweep]
    if missing:
        raise ValueError(f"choose_lambda: the sweep lacks column(s) {missing}")
    if sweep[["d_forget_val", "d_retain_val"]].isna().any().any():
        raise ValueError("choose_lambda: the sweep has NaN deltas")
    if isinstance(retain_budget, bool) or not isinstance(retain_budget, (int, float)) \
            or not math.isfinite(retain_budget) or retain_budget < 0:
        raise ValueError(f"retain_budget={retain_budget!r} must be a finite number of nats >= 0")
    sweep = sweep.reset_index(drop=True)  # a concatenated sweep may repeat index labels
    ok = sweep[-sweep.d_retain_val <= retain_budget]
    return sweep.loc[ok.d_forget_val.idxmin()] if len(ok) else sweep.loc[sweep.d_retain_val.idxmax()]


def validation_lp(backbone, forget_val, retain_val, *, edit=None, seeds=(0,), n_mc: int = 4,
                  batch_size: int = 32) -> pd.Series:
    """Mean summed log-probability of the validation facts, indexed forget_val / retain_val."""
    from .metrics import evaluate

    frame = evaluate(backbone, {"forget_val": list(forget_val), "retain_val": list(retain_val)}, edit=edit,
                     seeds=seeds, n_mc=n_mc, rouge=False, with_truth_ratio=False, batch_size=batch_size)
    return frame.groupby("split").logprob.mean()


def lambda_sweep(backbone, forget_val, retain_val, layer: int, *, module: str = "resid", target: str | None = None,
                 lam_grid, seeds=(0,), n_mc: int = 4, batch_size: int = 32, alpha: float = 1.0, q: int = 2,
                 base: pd.Series | None = None, frame=None) -> pd.DataFrame:
    """One row per lam_relative in ``lam_grid``: layer, alpha, q, lam_relative, lam, key_scale, d_forget_val,
    d_retain_val, forget_over_retain (d_forget_val / d_retain_val). The keys of ``forget_val`` are
    captured once; ``base`` (a `validation_lp` of the unedited backbone) may be passed to reuse it."""
    from .capture import DEFAULT_TARGET, capture_keys
    from .memory import EditMemory

    grid = list(lam_grid)
    if not grid or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0 for r in grid):
        raise ValueError(f"lam_grid={lam_grid!r} must be a non-empty list of numbers > 0 (x mean |u|^2)")
    kw = dict(seeds=seeds, n_mc=n_mc, batch_size=batch_size)
    if base is None:
        base = validation_lp(backbone, forget_val, retain_val, **kw)
    keys = capture_keys(backbone, forget_val, layer, module=module, target=target or DEFAULT_TARGET,
                        batch_size=batch_size)
    scale = float((keys["U"] if frame is None else frame.apply(keys["U"])).pow(2).sum(1).mean())
    rows = []
    for rel in grid:
        mem = EditMemory(keys["U"], keys["D"], lam=rel * scale, alpha=alpha, q=q, layer=layer, module=module,
                         frame=frame)
        lp = validation_lp(backbone, forget_val, retain_val, edit=lambda: mem.installed(backbone), **kw)
        d_f, d_r = float(lp.forget_val - base.forget_val), float(lp.retain_val - base.retain_val)
        rows.append({"layer": layer, "alpha": alpha, "q": q, "lam_relative": float(rel), "lam": rel * scale, "key_scale": scale,
                     "d_forget_val": d_f, "d_retain_val": d_r,
                     "forget_over_retain": d_f / d_r if d_r != 0 else math.nan})
    return pd.DataFrame(rows)


def tune_lambda(backbone, forget_val, retain_val, layer: int, *, module: str = "resid", target: str | None = None,
                lam_grid, retain_budget: float, seeds=(0,), n_mc: int = 4, batch_size: int = 32,
                alpha: float = 1.0, q: int = 2, frame=None) -> LambdaChoice:
    """`lambda_sweep` at one coordinate, then `choose_lambda`."""
    choose_lambda(pd.DataFrame({c: [0.0] for c in SWEEP_COLUMNS}), retain_budget)  # a bad budget fails first
    sweep = lambda_sweep(backbone, forget_val, retain_val, layer, module=module, target=target, lam_grid=lam_grid,
                         seeds=seeds, n_mc=n_mc, batch_size=batch_size, alpha=alpha, q=q, frame=frame)
    row = choose_lambda(sweep, retain_budget)
    return LambdaChoice(lam=float(row.lam), lam_relative=float(row.lam_relative), key_scale=float(row.key_scale),
                        sweep=sweep, rule=rule_text(retain_budget, alpha, q))


def random_layer(n_layers: int, traced: int, seed: int = 0) -> int:
    """The random_layer control's layer (Table I, Fig. 4): one of the other layers, drawn with ``seed``."""
    others = [layer for layer in range(n_layers) if layer != traced]
    if not others:
        raise ValueError(f"a backbone with {n_layers} layer(s) has no layer other than the traced one ({traced})")
    return random.Random(seed).choice(others)
