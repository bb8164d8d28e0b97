"""ROME (Meng et al. 2022) on the MLP down-projection, adapted to MDLMs (`editing`).

One fact at a time, applied sequentially (each fact is keyed and optimised on the model that
already holds the previous facts' updates): with the key k (`editing.compute_keys`), the target
output v* = W k + δ (`editing.optimize_delta`) and C = E[k kᵀ] of the layer's keys,

    ΔW = (v* - W k) (C⁻¹ k)ᵀ / (kᵀ C⁻¹ k),

the minimum-‖ΔW‖_C update with (W + ΔW) k = v* (ROME's Eq. 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..capture import DEFAULT_TARGET
from .editing import (Edit, VHParams, check_positive, compute_keys, context_prefixes, corpus_texts,
                      optimize_delta, prepare_requests, second_moments, timer, weights_applied)


@dataclass(frozen=True)
class ROMEHParams(VHParams):
    """ROME's settings: the target-value fields of `editing.VHParams` and the edited layer."""
    layer: int = 1  # the second of the tiny models' 4 layers: ROME's early-to-mid MLP (layer 5 of GPT-J's 28)

    def __post_init__(self):
        self._check_v()
        check_positive(self, "layer", kind=int, allow_zero=True)


def rank_one_update(W: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """ROME's closed form in float64: ΔW = (v - W k - b)(C⁻¹k)ᵀ / (kᵀC⁻¹k), W [out, in], k [in], v [out]."""
    W, k, v, C = (t.double() for t in (W, k, v, C))
    u = torch.linalg.solve(C, k)  # C⁻¹k without forming C⁻¹
    r = v - W @ k - (0 if bias is None else bias.double())
    return torch.outer(r, u) / (k @ u)


def build(bb, facts=None, hp: ROMEHParams | None = None, *, target: str = DEFAULT_TARGET, cache_dir=None, corpus=None,
          skip_unlocatable: bool = True, batch_size: int = 32, requests=None) -> Edit:
    """Sequential ROME edits of ``facts`` towards ``target`` -> `editing.Edit` (one layer, the summed ΔW).

    ``corpus``: (question, answer) pairs for C and the context prefixes (default: the tiny world).
    ``requests``: ready-made `editing.Request` objects instead of ``facts`` and ``target``.
    The backbone is left as it was (edits during the build are applied through
    `editing.weights_applied` and undone)."""
    hp = ROMEHParams() if hp is None else hp
    if not isinstance(hp, ROMEHParams):
        raise TypeError(f"hp must be a ROMEHParams, not {type(hp).__name__}")
    clock = timer()
    l = hp.layer
    if l >= bb.n_layers:
        raise ValueError(f"ROMEHParams.layer={l}: {bb.name} has {bb.n_layers} layers")
    reqs, skipped = prepare_requests(bb, facts, target, skip_unlocatable=skip_unlocatable, requests=requests)
    texts = corpus_texts() if corpus is None else list(corpus)
    C = second_moments(bb, [l], n_samples=hp.mom2_n_samples, texts=texts, seed=hp.seed, cache_dir=cache_dir,
                       masking=hp.mom2_masking, batch_size=batch_size)[l]
    prefixes = context_prefixes(bb, hp.n_prefixes, words=hp.prefix_words, seed=hp.seed, corpus=texts)
    lin = bb.down_proj(l)
    W0 = lin.weight.detach().double().cpu()
    bias = None if lin.bias is None else lin.bias.detach().double().cpu()
    total = torch.zeros_like(W0)
    per_fact = []
    for r in reqs:
        with weights_applied(bb, {l: total}):  # the previous facts' updates
            k = compute_keys(bb, [r], l, prefixes, batch_size=batch_size)[0]
            vs = optimize_delta(bb, r, l, hp, prefixes)
        W = W0 + total
        v_star = W @ k + (0 if bias is None else bias) + vs.delta
        total = total + rank_one_update(W, k, v_star, C, bias)
        per_fact.append(dict(fact_id=r.fact_id, nll_init=vs.nll_init, nll=vs.nll, kl=vs.kl, steps=vs.steps,
                             delta_norm=float(vs.delta.norm()), h_norm=float(vs.h.norm()), key=k, v_star=v_star))
    return Edit("rome", bb.name, {l: total}, tuple(r.fact_id for r in reqs), tuple(skipped), hp, target,
                clock(bb.device), dict(per_fact=per_fact, n_prefixes=len(prefixes)))
