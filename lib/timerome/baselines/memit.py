"""MEMIT (Meng et al. 2023) over a window of down-projections, adapted to MDLMs (`editing`).

All facts at once. At the window's last layer L the target residual is z = h_L + δ (δ from
`editing.optimize_delta` at L; adding δ to the MLP output of L adds it to the block's output h_L,
the residual stream). Then for each layer l of the window in order, with the layers before it
already edited: keys K at l (rows, one per fact), the residual still missing at L,
R = (z - h_L) / (layers left, l included), and

    ΔW_l = Rᵀ K (λ C_l + Kᵀ K)⁻¹,

the least-squares fit of ΔW_l K ≈ R regularised by λ·C_l (MEMIT's Eq. 14 with mom2_update_weight λ).
`window_edit` runs that loop for any per-layer solver (AlphaEdit uses it with its own).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..capture import DEFAULT_TARGET
from .editing import (Edit, VHParams, check_layers, check_positive, compute_keys, context_prefixes, corpus_texts,
                      optimize_delta, prepare_requests, read_at, second_moments, timer, value_canvas, weights_applied)


@dataclass(frozen=True)
class MEMITHParams(VHParams):
    """MEMIT's settings: the target-value fields of `editing.VHParams`, the window and λ."""
    layers: tuple = (0, 1, 2)  # 3 layers ending at the early-to-mid MLP (the last layer cannot carry a fact: see tracer)
    mom2_update_weight: float = 1000.0  # λ; MEMIT's 15000 (GPT-J) rescaled, see below
    clamp_norm_factor: float = 4.0  # ROME's 4: δ is bounded by the MLP output here, not MEMIT's residual (0.75)
    # λ weighs C = E[kkᵀ] (a per-token mean) against KᵀK (a sum over the edited facts), so its scale
    # depends on the key scale and the batch size; MEMIT's 15000 leaves the tiny models' ΔW near zero.
    # 1000 is TimeROME's λ rule applied to MEMIT on the half-decade grid 30..3000: the largest ForgetLP
    # drop with a RetainLP drop <= 5 nats, on the validation facts (`splits.validation_forget_facts(20)`,
    # forget05 authors outside forget01) and 40 validation-retain facts of tiny-mdlm.

    def __post_init__(self):
        self._check_v()
        object.__setattr__(self, "layers", check_layers(self, "layers"))
        check_positive(self, "mom2_update_weight")


def memit_update(K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """ΔW [out, in] = Rᵀ K (λC + KᵀK)⁻¹ in float64 (K [n, in] keys, R [n, out] residuals)."""
    K, R, C = K.double(), R.double(), C.double()
    return torch.linalg.solve(lam * C + K.T @ K, K.T @ R).T  # the system matrix is symmetric


def window_edit(bb, reqs, layers, hp, prefixes, solver, *, batch_size: int = 32):
    """MEMIT's layer loop -> ({layer: ΔW float64 CPU}, info). ``solver(i, layer, K, R)`` returns ΔW for
    the i-th layer of the window from keys K [n, in] and residuals R [n, out]."""
    L = layers[-1]
    vstars = [optimize_delta(bb, r, L, hp, prefixes) for r in reqs]
    z_point = f"blocks.{L}.resid_post"
    seqs, pos = [value_canvas(bb, r) for r in reqs], [r.last for r in reqs]  # where δ was optimised
    z = read_at(bb, z_point, seqs, pos, batch_size=batch_size) + torch.stack([v.delta for v in vstars])
    deltas, z_error = {}, []
    for i, l in enumerate(layers):
        with weights_applied(bb, dict(deltas)):
            K = compute_keys(bb, reqs, l, prefixes, batch_size=batch_size)
            cur = read_at(bb, z_point, seqs, pos, batch_size=batch_size)
        z_error.append(float((z - cur).norm(dim=1).mean()))
        R = (z - cur) / (len(layers) - i)  # spread what is still missing over the layers left
        deltas[l] = solver(i, l, K, R)
    with weights_applied(bb, dict(deltas)):
        z_error.append(float((z - read_at(bb, z_point, seqs, pos, batch_size=batch_size)).norm(dim=1).mean()))
    info = dict(z_error=z_error, n_prefixes=len(prefixes),
                per_fact=[dict(fact_id=r.fact_id, nll_init=v.nll_init, nll=v.nll, kl=v.kl, steps=v.steps,
                               delta_norm=float(v.delta.norm()), h_norm=float(v.h.norm())) for r, v in zip(reqs, vstars)])
    return deltas, info


def prepare_batch(bb, facts, hp, cls, target, corpus, skip_unlocatable, cache_dir, batch_size, requests=None):
    """(requests, skipped, {layer: C}, prefixes) of a window editor, its hyperparameters checked."""
    if not isinstance(hp, cls):
        raise TypeError(f"hp must be a {cls.__name__}, not {type(hp).__name__}")
    if hp.layers[-1] >= bb.n_layers:
        raise ValueError(f"{cls.__name__}.layers={hp.layers}: {bb.name} has {bb.n_layers} layers")
    reqs, skipped = prepare_requests(bb, facts, target, skip_unlocatable=skip_unlocatable, requests=requests)
    texts = corpus_texts() if corpus is None else list(corpus)
    C = second_moments(bb, hp.layers, n_samples=hp.mom2_n_samples, texts=texts, seed=hp.seed, cache_dir=cache_dir,
                       masking=hp.mom2_masking, batch_size=batch_size)
    prefixes = context_prefixes(bb, hp.n_prefixes, words=hp.prefix_words, seed=hp.seed, corpus=texts)
    return reqs, skipped, C, prefixes


def build(bb, facts=None, hp: MEMITHParams | None = None, *, target: str = DEFAULT_TARGET, cache_dir=None, corpus=None,
          skip_unlocatable: bool = True, batch_size: int = 32, requests=None) -> Edit:
    """One MEMIT batch edit of ``facts`` towards ``target`` -> `editing.Edit` (a ΔW per window layer).
    Arguments as `rome.build`; the backbone is left as it was."""
    hp = MEMITHParams() if hp is None else hp
    clock = timer()
    reqs, skipped, C, prefixes = prepare_batch(bb, facts, hp, MEMITHParams, target, corpus, skip_unlocatable, cache_dir,
                                        batch_size, requests)
    deltas, info = window_edit(bb, reqs, hp.layers, hp, prefixes,
                               lambda i, l, K, R: memit_update(K, R, C[l], hp.mom2_update_weight),
                               batch_size=batch_size)
    return Edit("memit", bb.name, deltas, tuple(r.fact_id for r in reqs), tuple(skipped), hp, target,
                clock(bb.device), info)
