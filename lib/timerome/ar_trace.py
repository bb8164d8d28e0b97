"""ROME's positional causal trace (token x layer), for the "AR positional" ablation.

One forward per cell: a causal backbone scores the gold answer teacher-forced on ``[prompt | o]``,
a masked-diffusion backbone on the fully masked canvas (step 0 of the diffusion trace). The noise
is the diffusion trace's (`tracer.draw_noise`, `tracer.embedding_sigma`).
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from .backbones import point
from .tie_results import PositionalResult
from .tracer import answer_logp, check_facts, draw_noise, embedding_sigma, forward_chunks, prepare_prompt


def _window(layer: int, window: int, n_layers: int) -> range:
    """The layers a restore "at layer ℓ" splices: ``window`` of them centred on ℓ, cut at the ends."""
    return range(max(0, layer - window // 2), min(n_layers, layer + (window + 1) // 2))


def _clean_and_corrupt(backbone, f, p, modules, sig, seed, counts):
    """One fact's two reference runs: (input x, first scoring slot g, noise, the clean outputs of every
    module's layer at the prompt positions, clean log p(gold), corrupted log p(gold))."""
    P, n, causal = p.prompt_length, len(p.gold), backbone.is_causal
    g = P - int(causal)  # the logits at g + j score o_j (causal: teacher forcing, shifted by one)
    x = torch.cat([p.ids[:P], torch.tensor(p.gold)]) if causal else p.ids
    noise = (sig * draw_noise(backbone, f, p, seed)).to(backbone.device)
    names = [point(m, l) for m in modules for l in range(backbone.n_layers)]
    [(_, _, logits, clean)] = forward_chunks(backbone, x[None], None, range(P), capture=names, counts=counts)
    clean_lp = answer_logp(logits[:, g:g + n].float(), p.gold)[0]
    [(_, _, logits, _)] = forward_chunks(backbone, x[None], None, p.subject, noise, counts=counts)
    return x, g, noise, clean, clean_lp, answer_logp(logits[:, g:g + n].float(), p.gold)[0]


@torch.no_grad()
def ar_positional_trace(backbone, facts, *, sigma: float | None = None, modules=("resid", "attn", "mlp"),
                        seed: int = 0, window: int = 1, batch_size: int | None = 64, counts=None,
                        prompts=None) -> PositionalResult:
    """ROME's positional causal trace (token x layer), for the "AR positional" ablation.

    One forward per cell: a causal backbone scores the gold answer teacher-forced on ``[prompt | o]``;
    a masked-diffusion backbone scores it on the fully masked canvas (step 0 of the diffusion trace).
    Noise as in `trace_tie`. Cell (t, ℓ) splices the clean output of m at prompt token t into the
    ``window`` layers max(0, ℓ - window//2) .. (ROME uses 10 for attn / mlp). ``prompts``: one
    `tracer.TracePrompt` per fact instead of `tracer.prepare_prompt`'s (e.g. a cloze whose prompt
    ends inside the answer, `counterfact.trace_prompt`); the object is read at its ``gold`` slots."""
    facts, modules = check_facts(facts, modules)
    if window < 1:
        raise ValueError(f"window={window} must be >= 1")
    causal, L = backbone.is_causal, backbone.n_layers
    if prompts is None:
        prompts = [prepare_prompt(backbone, f) for f in facts]
    elif len(prompts) != len(facts):
        raise ValueError(f"{len(prompts)} prompts for {len(facts)} facts")
    sig = embedding_sigma(backbone, prompts) if sigma is None else float(sigma)
    ie = np.full((len(facts), len(modules), max(p.prompt_length for p in prompts), L), np.nan)
    lp_clean, lp_corr = [], []
    for i, (f, p) in enumerate(zip(facts, prompts)):
        P, n = p.prompt_length, len(p.gold)
        x, g, noise, clean, clean_lp, corr_lp = _clean_and_corrupt(backbone, f, p, modules, sig, seed, counts)
        lp_clean.append(clean_lp)
        lp_corr.append(corr_lp)
        for mi, m in enumerate(modules):
            cells = list(itertools.product(range(P), range(L)))
            patches = [(r, point(m, j), [t], clean[point(m, j)][0, t:t + 1]) for r, (t, l) in enumerate(cells)
                       for j in _window(l, window, L)]
            chunks = forward_chunks(backbone, x.expand(len(cells), -1), None, p.subject, noise, patches,
                                    batch_size=batch_size, counts=counts)
            lp = np.concatenate([answer_logp(lg[:, g:g + n].float(), p.gold) for _, _, lg, _ in chunks])
            ie[i, mi, :P] = (lp - lp_corr[-1]).reshape(P, L)
    tok = backbone.tokenizer
    return PositionalResult(modules, L, [f.fact_id for f in facts],
                            [tok.convert_ids_to_tokens(p.ids[:p.prompt_length].tolist()) for p in prompts],
                            [list(p.subject) for p in prompts], ie, np.array(lp_clean), np.array(lp_corr),
                            {"sigma": sig, "sigma_arg": sigma, "seed": int(seed), "window": int(window),
                             "causal": causal, "backbone": backbone.name})


@torch.no_grad()
def restore_effect(backbone, facts, prompts, positions, *, sigma: float | None = None, modules=("resid", "attn", "mlp"),
                   seed: int = 0, window: int = 1, batch_size: int | None = 64, counts=None) -> dict:
    """The indirect effect of restoring module m at layer ℓ at a *set* of prompt positions at once.

    Same runs as `ar_positional_trace` (noise on every subject token of ``prompts[i]``, the object
    read at its gold slots), but cell (m, ℓ) splices the clean output of m at all of
    ``positions[i]`` (e.g. the last token of each mention of the subject, where a weight edit of
    that layer acts) into the ``window`` layers around ℓ (`ar_positional_trace`'s rule). Returns
    {"ie": [facts, modules, layers], "logp_clean",
    "logp_corrupt": [facts], "sigma"}."""
    facts, modules = check_facts(facts, modules)
    if not len(prompts) == len(positions) == len(facts):
        raise ValueError(f"{len(facts)} facts, {len(prompts)} prompts and {len(positions)} position sets")
    if window < 1:
        raise ValueError(f"window={window} must be >= 1")
    L = backbone.n_layers
    sig = embedding_sigma(backbone, prompts) if sigma is None else float(sigma)
    ie = np.full((len(facts), len(modules), L), np.nan)
    lp_clean, lp_corr = [], []
    for i, (f, p, pos) in enumerate(zip(facts, prompts, positions)):
        P, n, pos = p.prompt_length, len(p.gold), sorted(int(t) for t in pos)
        if not pos or pos[0] < 0 or pos[-1] >= P:
            raise ValueError(f"fact {f.fact_id}: positions {pos} must be non-empty and inside its {P}-token prompt")
        x, g, noise, clean, clean_lp, corr_lp = _clean_and_corrupt(backbone, f, p, modules, sig, seed, counts)
        lp_clean.append(clean_lp)
        lp_corr.append(corr_lp)
        cells = list(itertools.product(modules, range(L)))
        patches = [(r, point(m, j), pos, clean[point(m, j)][0, pos]) for r, (m, l) in enumerate(cells)
                   for j in _window(l, window, L)]
        chunks = forward_chunks(backbone, x.expand(len(cells), -1), None, p.subject, noise, patches,
                                batch_size=batch_size, counts=counts)
        lp = np.concatenate([answer_logp(lg[:, g:g + n].float(), p.gold) for _, _, lg, _ in chunks])
        ie[i] = (lp - lp_corr[-1]).reshape(len(modules), L)
    return {"ie": ie, "logp_clean": np.array(lp_clean), "logp_corrupt": np.array(lp_corr), "sigma": sig}
