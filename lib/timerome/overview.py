"""Fig. 5's overview (paper 002): five dimensions, each TimeROME's number beside its comparator.

`dimensions` reads the tables the other notebooks exported and returns one row per dimension, both
numbers oriented so that larger is better for the edit, plus each divided by the larger of the two
(the radar's radius). The rules, one per dimension:

* **converged baseline** (`table1_canonical_tofu.csv`, `fig5_converged_sweep.csv`): |ΔForgetLP| of
  TimeROME at ``config`` vs the largest forget drop among the sweep runs that did not collapse;
* **cost** (`fig5_cost.csv`): builds per second (1 / build s) of TimeROME vs the converged gradient
  baseline with the largest forget drop (the paper's "strongest converged training-time baseline");
* **ablations** (`fig5_ablations.csv`): |ΔForgetLP| of the reference edit vs the strongest of the
  restricted designs the paper ablates against it (attn or mlp only, one early step, the TIE band);
* **robustness** (`fig5_robustness.csv`): the share of the unattacked ΔForgetLP the edit keeps under
  its worst *informative* attack (`robustness.attack_table`'s ``informative``: the unedited model
  still knows the attacked answers), vs 1 (the unattacked edit); no informative attack: the row is
  "not informative here";
* **utility** (`fig5_utility.csv`): the mean over utility tasks (those not on the forget set) of each
  task's first metric in ``UTILITY_METRICS``, TimeROME at ``config`` vs no_edit.

A table that is not there gives its row NaN numbers and a ``status`` naming the file, a dimension
this backbone cannot read gives a ``status`` saying why; nothing is guessed. A comparator of zero (nothing to compare with) gives NaN radii.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

__all__ = ["DIMENSIONS", "UTILITY_METRICS", "dimensions"]

DIMENSIONS = ("converged baseline", "cost", "ablations", "robustness", "utility")
UTILITY_METRICS = ("acc", "exact_match")  # per task, the first one it reports
ABLATED = (("site", "attn"), ("site", "mlp"), ("steps", "early_only"), ("steps", "tie_band"))
OK = "ok"


class NotInformative(Exception):
    """A dimension the tables hold but this backbone cannot read (the message says why)."""


def _label(alpha, q) -> str:
    return f"TimeROME (α={alpha:g}, q={q})"


def _need(df: pd.DataFrame, cols, name):
    missing = [c for c in cols if c not in df]
    if missing:
        raise ValueError(f"{name}: column(s) {missing} missing (columns: {list(df.columns)})")


def _converged(t, config):
    t1, sweep = t["table1_canonical_tofu.csv"], t["fig5_converged_sweep.csv"]
    _need(t1, ["method", "d_ForgetLP"], "table1_canonical_tofu.csv")
    _need(sweep, ["method", "d_forget_lp", "collapsed"], "fig5_converged_sweep.csv")
    row = t1[t1.method == _label(*config)]
    if row.empty:
        raise ValueError(f"table1_canonical_tofu.csv: no row {_label(*config)!r}")
    ok = sweep[~sweep.collapsed.astype(bool)]
    if ok.empty:
        return -float(row.d_ForgetLP.iloc[0]), math.nan, "no converged run"
    best = ok.loc[ok.d_forget_lp.idxmin()]
    desc = f"best converged {best.method}" + (f" (lr {best.lr:g})" if "lr" in ok else "")
    return -float(row.d_ForgetLP.iloc[0]), max(0.0, -float(best.d_forget_lp)), desc


def _cost(t, config):
    c = t["fig5_cost.csv"]
    _need(c, ["method", "kind", "converged", "install_s", "d_forget_lp"], "fig5_cost.csv")
    ours = c[c.method == "timerome"]
    grad = c[(c.kind == "gradient") & c.converged.astype(bool)]
    if ours.empty or grad.empty:
        raise ValueError("fig5_cost.csv: needs a 'timerome' row and at least one converged gradient row")
    strongest = grad.loc[grad.d_forget_lp.idxmin()]
    return 1.0 / float(ours.install_s.iloc[0]), 1.0 / float(strongest.install_s), f"strongest converged {strongest.label}"


def _ablations(t, config):
    a = t["fig5_ablations.csv"]
    _need(a, ["panel", "variant", "d_forget_lp"], "fig5_ablations.csv")
    a = a.set_index(["panel", "variant"])
    if ("site", "resid") not in a.index:
        raise ValueError("fig5_ablations.csv: no reference row (panel site, variant resid)")
    alts = [k for k in ABLATED if k in a.index]
    if not alts:
        raise ValueError(f"fig5_ablations.csv: none of the ablated designs {ABLATED}")
    strongest = min(alts, key=lambda k: a.loc[k, "d_forget_lp"])
    return -float(a.loc[("site", "resid"), "d_forget_lp"]), max(0.0, -float(a.loc[strongest, "d_forget_lp"])), \
        f"strongest restricted design ({'/'.join(strongest)})"


def _robustness(t, config):
    r = t["fig5_robustness.csv"]
    _need(r, ["attack", "d_forget_lp"], "fig5_robustness.csv")
    r = r.set_index("attack")
    if "none" not in r.index or len(r) < 2:
        raise ValueError("fig5_robustness.csv: needs the 'none' row and at least one attack")
    attacks = r.drop("none")
    if "informative" in attacks:
        attacks = attacks[attacks.informative.astype(bool)]
        if attacks.empty:
            raise NotInformative("not informative here (the unedited model does not know the answers of any attack)")
    kept = attacks.d_forget_lp / r.d_forget_lp["none"]
    return float(kept.min()), 1.0, f"unattacked (worst attack: {kept.idxmin()})"


def _utility(t, config):
    u = t["fig5_utility.csv"]
    _need(u, ["config", "task", "metric", "value"], "fig5_utility.csv")
    u = u[~u.task.str.contains("forget")]
    firsts = {}
    for task, g in u.groupby("task", sort=False):
        m = next((m for m in UTILITY_METRICS if (g.metric == m).any()), None)
        if m is not None:
            firsts[task] = m
    if not firsts:
        raise ValueError(f"fig5_utility.csv: no utility task reports any of {UTILITY_METRICS}")
    pick = u[[firsts.get(task) == m for task, m in zip(u.task, u.metric)]]
    mean = lambda cfg: float(pick[pick.config == cfg].value.mean())  # noqa: E731
    ours = f"TimeROME (alpha={config[0]:g}, q={config[1]})"
    if not (pick.config == ours).any() or not (pick.config == "no_edit").any():
        raise ValueError(f"fig5_utility.csv: needs rows for 'no_edit' and {ours!r}")
    return mean(ours), mean("no_edit"), f"no_edit (mean of {len(firsts)} tasks)"


RULES = {"converged baseline": (_converged, ("table1_canonical_tofu.csv", "fig5_converged_sweep.csv"), "|ΔForgetLP| (nats)"),
         "cost": (_cost, ("fig5_cost.csv",), "builds per second"),
         "ablations": (_ablations, ("fig5_ablations.csv",), "|ΔForgetLP| (nats)"),
         "robustness": (_robustness, ("fig5_robustness.csv",), "share of ΔForgetLP kept"),
         "utility": (_utility, ("fig5_utility.csv",), "mean accuracy")}


def dimensions(tables_dir, *, config=(2.0, 4)) -> pd.DataFrame:
    """One row per `DIMENSIONS` entry: dimension, quantity, timerome, comparator, comparator_name,
    r_timerome, r_comparator (each / the larger of the two), sources, status (module docstring)."""
    tables_dir = Path(tables_dir)
    rows = []
    for dim in DIMENSIONS:
        rule, files, quantity = RULES[dim]
        row = {"dimension": dim, "quantity": quantity, "timerome": math.nan, "comparator": math.nan,
               "comparator_name": "", "r_timerome": math.nan, "r_comparator": math.nan, "sources": ", ".join(files)}
        absent = [f for f in files if not (tables_dir / f).exists()]
        if absent:
            rows.append(row | {"status": f"not measured yet ({', '.join(absent)} not written)"})
            continue
        try:
            ours, other, name = rule({f: pd.read_csv(tables_dir / f) for f in files}, config)
        except NotInformative as why:
            rows.append(row | {"status": str(why)})
            continue
        top = max(ours, other) if not (math.isnan(ours) or math.isnan(other)) else math.nan
        rows.append(row | {"timerome": ours, "comparator": other, "comparator_name": name, "status": OK,
                           "r_timerome": ours / top if top > 0 else math.nan,
                           "r_comparator": other / top if top > 0 else math.nan})
    return pd.DataFrame(rows)
