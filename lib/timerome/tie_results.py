"""Saved results of a trace, and the key under which `tracer.trace_tie` caches one.

`TIEResult` holds the TIE of Eqs. 3-4 for a set of facts (Eq. 5's selection over it is
`timerome.selection`); `PositionalResult` holds ROME's token x layer trace (`timerome.ar_trace`).
Each is saved as one .npz: its arrays, plus a JSON string of every other field, written whole then
renamed, so an interrupted save never leaves a torn cache file.

The cache key hashes what determines a trace's values: the backbone (name, tokenizer, prompt
format, and a fingerprint of every weight tensor), the facts and the settings. Forward hooks are
not part of it, so `trace_tie` does not cache a model with hooks installed.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .selection import Selection

__all__ = ["Saved", "TIEResult", "PositionalResult", "cache_key"]


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
        """Eq. 5 over this result: `selection.select_coordinate`."""
        from .selection import select_coordinate  # selection imports this module

        return select_coordinate(self, neighbours, beta)

    def __repr__(self):
        return (f"TIEResult({len(self.fact_ids)} facts, modules={self.modules}, layers={self.n_layers}, "
                f"steps={self.steps}, sigma={self.settings['sigma']:.4g})")


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
