"""Eq. 5: the coordinate (ℓ, k, m) to edit, chosen from a traced `TIEResult`.

Paper 002 §III-B, Algorithm 1 stage 2. The coordinate is the argmax over (ℓ, k, m) of
mean_{F_v} |TIE| − β mean_N |TIE|: the mean absolute TIE over the validation facts F_v, less β
times that over a neighbour set N (β = 0: no neighbour set is needed). The paper's downstream
choice restricts Eq. 5 to m = resid and edits at every step (k* = −1), at the layer whose best step
scores highest. `band_steps` reads the *TIE band*'s steps off a ranking (the steps of the cells of one
module whose objective reaches a fraction of that module's maximum), for the steps ablation.

Ties. Objectives within `TIE_RESOLUTION` nats are ties (batched forwards differ by float round-off
far below it), broken in index order (module, then layer, then step), so the ranking is the same
on any machine and thread count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .tie_results import TIEResult

__all__ = ["TIE_RESOLUTION", "Coordinate", "Selection", "select_coordinate", "band_steps"]

TIE_RESOLUTION = 1e-4  # nats: Eq. 5 objectives closer than this are ties (float round-off, not effects)


class Coordinate(NamedTuple):
    module: str
    layer: int
    step: int  # -1: every step
    score: float


@dataclass(eq=False)
class Selection:
    """Eq. 5 over a `TIEResult`."""
    best: Coordinate  # argmax over (ℓ, k, m) of the objective
    ranking: list  # every Coordinate, best first (ties: module order, then layer, then step)
    paper: Coordinate | None  # the paper's downstream choice: m = resid, every step, ℓ* = argmax_ℓ max_k objective
    objective: np.ndarray  # [M, L, K]: mean_Fv |TIE| - beta mean_N |TIE|
    per_fact: list  # per fact: {fact_id, module, layer, step, tie} at its own argmax |TIE|
    beta: float

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.ranking, columns=Coordinate._fields)


def select_coordinate(result: TIEResult, neighbours=None, beta: float = 0.0) -> Selection:
    """Eq. 5: argmax over (ℓ, k, m) of mean_{F_v} |TIE| - beta mean_N |TIE|.

    ``neighbours``: a `TIEResult` over the neighbour set N (same modules, layers and steps; trace it
    with ``sigma=result.settings["sigma"]``) or an array [N, M, L, K]; beta > 0 needs it."""
    if not beta >= 0:
        raise ValueError(f"beta={beta} must be >= 0")
    if beta > 0 and neighbours is None:
        raise ValueError("beta > 0 needs a neighbour set (neighbours=)")
    objective = np.abs(result.tie).mean(0)
    if neighbours is not None:
        if isinstance(neighbours, TIEResult) and neighbours.modules != result.modules:
            raise ValueError(f"neighbour modules {neighbours.modules} != {result.modules}")
        nt = neighbours.tie if isinstance(neighbours, TIEResult) else np.asarray(neighbours, dtype=float)
        if nt.ndim != 4 or nt.shape[1:] != result.tie.shape[1:] or len(nt) == 0:
            raise ValueError(f"neighbour TIE of shape {nt.shape}; expected [N>0, {', '.join(map(str, objective.shape))}]")
        objective = objective - beta * np.abs(nt).mean(0)
    # objectives within TIE_RESOLUTION nats tie (batched forwards differ by float round-off far below
    # it), and ties go in index order: the ranking is the same on any machine and thread count
    grid = np.round(objective / TIE_RESOLUTION)
    cells = sorted(np.ndindex(objective.shape), key=lambda c: -grid[c])
    ranking = [Coordinate(result.modules[m], l, k, float(objective[m, l, k])) for m, l, k in cells]
    paper = None
    if "resid" in result.modules:  # Eq. 5 restricted to m = resid, then k* = -1 (every step)
        profile = objective[result.modules.index("resid")].max(1)
        best = int(np.argmax(np.round(profile / TIE_RESOLUTION)))  # near-ties as in the ranking
        paper = Coordinate("resid", best, -1, float(profile[best]))
    per_fact = []
    for fid, t in zip(result.fact_ids, result.tie):
        m, l, k = np.unravel_index(int(np.argmax(np.abs(t))), t.shape)
        per_fact.append({"fact_id": fid, "module": result.modules[m], "layer": int(l), "step": int(k),
                         "tie": float(t[m, l, k])})
    return Selection(ranking[0], ranking, paper, objective, per_fact, float(beta))


def band_steps(ranking, module: str = "resid", fraction: float = 0.5) -> tuple[int, ...]:
    """The denoising steps of the TIE band: sorted steps k of the cells (ℓ, k) of ``module`` whose
    Eq. 5 objective is at least ``fraction`` × that module's largest (the band `01_tie_heatmaps`
    reports). ``ranking``: a frame with columns module, layer, step and ``objective`` (or ``score``,
    as `Selection.frame`), e.g. ``tables/tie_layer_ranking.csv``."""
    import pandas as pd

    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must lie in (0, 1]")
    if not isinstance(ranking, pd.DataFrame):
        raise TypeError(f"ranking must be a pandas DataFrame, not {type(ranking).__name__}")
    col = "objective" if "objective" in ranking else "score"
    missing = [c for c in ("module", "layer", "step", col) if c not in ranking]
    if missing:
        raise ValueError(f"band_steps: the ranking lacks column(s) {missing}")
    cells = ranking[ranking["module"] == module]
    if cells.empty:
        raise ValueError(f"band_steps: no {module!r} cells in the ranking (modules: {sorted(set(ranking['module']))})")
    if (cells["step"] < 0).any():
        raise ValueError("band_steps: the ranking has step -1 rows (a downstream choice), not traced cells")
    top = float(cells[col].max())
    if not top > 0:
        raise ValueError(f"band_steps: the largest {module} objective is {top:g}; no band")
    return tuple(sorted({int(k) for k in cells.loc[cells[col] >= fraction * top, "step"]}))
