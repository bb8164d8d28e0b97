"""Results of a trace and Eq. 5: the saved `TIEResult` / `PositionalResult`, coordinate selection, the cache key.

Eq. 5 picks the coordinate argmax over (ℓ, k, m) of mean_{F_v} |TIE| − β mean_N |TIE|. Objectives
within `TIE_RESOLUTION` nats are ties (batched forwards differ by float round-off far below it),
broken in index order, so the ranking is the same on any machine and thread count. Results are
saved as one .npz (arrays) with a JSON string of every other field, written whole then renamed.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

TIE_RESOLUTION = 1e-4  # nats: Eq. 5 objectives closer than this are ties (float round-off, not effects)


class Saved:
    """Arrays go to an .npz, every other field to a JSON string stored beside them."""

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        meta = {k: v for k, v in values.items() if not isinstance(v, np.ndarray)}
        arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
        tmp = path.with_name(path.name + ".tmp.npz")  # written whole, then renamed: no torn cache files
        np.savez_compressed(tmp, __meta__=json.dumps({"class": type(self).__name__, **meta}), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path):
        with np.load(Path(path)) as z:
            meta = json.loads(str(z["__meta__"]))
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
        if meta.pop("class") != cls.__name__:
            raise ValueError(f"{path} does not hold a {cls.__name__}")
        return cls(**{**meta, "modules": tuple(meta["modules"])}, **arrays)


@dataclass(eq=False)
class TIEResult(Saved):
    """TIE of a set of facts; ``heatmap(module)`` is the mean over facts, [n_layers, steps]."""
    modules: tuple
    n_layers: int
    steps: int
    fact_ids: list
    subject_tokens: list  # per fact: the corrupted tokens
    tie: np.ndarray  # [F, M, L, K]: Eq. 4
    tie_by_step: np.ndarray  # [F, M, L, K, K+1]: Eq. 3 at every k' (NaN where k' <= k)
    logp_clean: np.ndarray  # [F, K+1]: log p(o | x_k) of the clean run (trained outputs only)
    logp_corrupt: np.ndarray  # [F, K+1]: ... of the corrupted run
    settings: dict  # every argument, and the sigma used
    counts: dict  # forwards done, model calls, and the naive counts

    @property
    def axes(self) -> dict:
        return {"layer": np.arange(self.n_layers), "step": np.arange(self.steps)}

    def per_fact(self, module: str) -> np.ndarray:
        """[F, n_layers, steps]."""
        if module not in self.modules:
            raise KeyError(f"module {module!r} was not traced (traced: {self.modules})")
        return self.tie[:, self.modules.index(module)]

    def heatmap(self, module: str = "resid", *, absolute: bool = False) -> np.ndarray:
        """Mean over facts of the TIE (``absolute``: of |TIE|, Eq. 5's objective), [n_layers, steps]."""
        t = self.per_fact(module)
        return (np.abs(t) if absolute else t).mean(0)

    def select(self, neighbours=None, beta: float = 0.0) -> Selection:
        return select_coordinate(self, neighbours, beta)

    def __repr__(self):
        return (f"TIEResult({len(self.fact_ids)} facts, modules={self.modules}, layers={self.n_layers}, "
                f"steps={self.steps}, sigma={self.settings['sigma']:.4g})")


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


def cache_key(backbone, facts, settings: dict) -> str:
    """sha256 (32 hex digits) over the backbone (name, tokenizer, prompt format, and per weight tensor
    its name, shape, dtype, float64 sum and a strided sample), the facts and the settings."""
    weights = hashlib.sha256()
    for name, t in itertools.chain(backbone.model.named_parameters(), backbone.model.named_buffers()):
        flat = t.detach().reshape(-1)
        weights.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{float(flat.sum(dtype=torch.float64))!r}|".encode())
        weights.update(flat[::max(1, flat.numel() // 1024)][:1024].float().cpu().numpy().tobytes())
    desc = {"backbone": backbone.name, "weights": weights.hexdigest(),
            "vocab": len(backbone.tokenizer), "mask_id": backbone.mask_id, "template": backbone.prompt_template,
            "answer_prefix": backbone.answer_prefix, "settings": settings,
            "facts": [[f.fact_id, f.question, f.answer, f.subject, f.subject_span, f.subject_in] for f in facts]}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass(eq=False)
class PositionalResult(Saved):
    """ROME's token x layer trace: IE = log p(o | patched) - log p(o | corrupted), per fact."""
    modules: tuple
    n_layers: int
    fact_ids: list
    tokens: list  # per fact: the prompt's tokens
    subject_positions: list
    ie: np.ndarray  # [F, M, max P, L], NaN beyond a fact's prompt
    logp_clean: np.ndarray  # [F]
    logp_corrupt: np.ndarray  # [F]
    settings: dict

    def heatmap(self, module: str = "mlp", fact: int = 0) -> np.ndarray:
        """[n_prompt_tokens, n_layers] for one fact."""
        return self.ie[fact, self.modules.index(module), :len(self.tokens[fact])]

    def select_layer(self, module: str = "mlp") -> int:
        """ROME's layer: the largest mean IE (over facts) at the last subject token."""
        m = self.modules.index(module)
        return int(np.argmax(np.mean([self.ie[f, m, S[-1]] for f, S in enumerate(self.subject_positions)], 0)))
