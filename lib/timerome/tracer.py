"""Diffusion-time causal tracing: the Temporal Indirect Effect (TIE) and coordinate selection.

Paper 002 (TimeROME-DLM) §III-A/B, Algorithm 1 stages 1-2.

Entry points
------------
* `trace_tie(backbone, facts, *, steps=8, sigma=None, tau=1.0, modules=("resid", "attn", "mlp"),
  seed=0, gen_length=None, ...)` -> `TIEResult`; ``result.heatmap(module)`` is the mean TIE over
  facts, ``[n_layers, steps]`` (axes in ``result.axes``). ``cache_dir=`` caches results on disk.
* `select_coordinate(result, neighbours=None, beta=0.0)` (also ``result.select(...)``) ->
  `Selection`: Eq. 5's argmax (ℓ*, k*, m*), the full ranking, the paper's downstream choice
  (m = resid, k* = -1 meaning every step, ℓ* = best resid layer) and per-fact best coordinates.
* `ar_positional_trace(backbone, facts, ...)` -> `PositionalResult`: ROME's token x layer trace
  (the "AR positional" ablation), ``[n_prompt_tokens, n_layers]`` per fact and module.
* Building blocks (public for tests and notebooks): `prepare_prompt`, `subject_positions`,
  `draw_noise`, `resolve_sigma`, `run_trajectory`, `score_object`, `weights_fingerprint`.

Definitions (the choices this implementation makes)
---------------------------------------------------
Tokens. Exactly as the sampler and `likelihood.encode_example` prompt the backbone:
``prompt = [BOS if the tokenizer has one] + backbone.encode(backbone.prompt(question))`` and
``gold = backbone.encode(backbone.answer_prefix + answer)`` (no EOS).

Canvas. ``x_0 = [prompt | MASK x G]`` with ``G = gen_length`` (default ``len(gold) + gen_slack``,
gen_slack = 4; an int gives a fixed G, which must be >= len(gold)). One block (no semi-AR
blocks), greedy (temperature 0) with a deterministic remasking rule (default
``low_confidence``): the commit rule of `sampler.generate` (mask token never a candidate, only
canvas masks compete, ``sampler.num_transfer_tokens(G, K)`` commits per step, stable argsort),
so a trajectory here is token-for-token the trajectory `generate` produces (tested).

Subject positions S. The fact's subject character span must lie in the question
(``fact.subject_in == "question"``); otherwise `SubjectError` names the fact (or, with
``skip_unlocatable=True``, the fact is skipped and listed in ``result.skipped``). The question's
offset inside ``backbone.prompt(question)`` is found with a sentinel question (fallback: the
first occurrence of the question text); the prompt string is tokenised with
``return_offsets_mapping=True`` (a fast tokenizer is required) and S is every token whose
character range overlaps the subject span (a leading-space token such as "Ġalice" counts; a
token made only of the space before the subject does not). Positions include the BOS shift.

Gold object o. The gold answer tokens at the first ``len(gold)`` canvas positions
``P .. P+len(gold)-1``; slots after them are free (the model may fill them with anything).

Steps. ``x_k`` is the state seen by the forward of step k (k = 0 .. K-1; ``x_0`` fully masked
answer); that forward's commits give ``x_{k+1}``; ``x_K`` is the fully committed final state.
``log p(o | x_k)`` is read from the logits of the forward on ``x_k`` -- for k < K the very
forward that drives the step-k commits, for k = K one extra forward on the final state. Every
forward of the corrupted and patched runs (scoring forwards included) carries the noise on S.

Scored positions (``score=``). ``"all"`` (default): ``log p(o|x) = sum_j log softmax(logits[P+j])[o_j]``
over every gold position, committed or not (a committed position is scored by the model's
logits at that position like any other; note that MDLMs are trained on masked positions only,
so those logits are the model's but not a trained conditional). ``"masked"``: only gold
positions still masked in x (then ``log p(o|x_K) = 0`` and the k' = K term of every TIE is 0).

Corruption (Eq. 2). ``e_i <- e_i + sigma * eps_i`` for i in S, at every forward of the corrupted
and patch runs, with one draw ``eps ~ N(0, I)`` of shape ``[|S|, H]`` per fact (the same eps at
every step), seeded from ``(seed, fact_id, question, answer)`` on the CPU, so a fact's noise does
not depend on the other facts, their order, or the device. ``sigma=None`` gives ROME's rule
``noise_scale (3) x std`` of the embedding-matrix entries of the subject tokens of all traced
facts (pooled, with multiplicity); a float is used as is (``result.settings["sigma"]`` holds the
value used -- pass it when tracing a neighbour set so both use the same noise level).

Patch (Eq. 3). At one coordinate (ℓ, k, m) the corrupted forward of step k has its module
output on S replaced by the clean run's output at (ℓ, k, m) on S; every other forward is the
corrupted one, and later steps commit autonomously. Modules: ``resid`` = block output, ``attn``
/ ``mlp`` = sub-layer outputs before the residual add (see `Backbone.hook_module`).

TIE. ``TIE(ℓ,k,m,k') = log p(o | x_k'^patch) - log p(o | x_k'^corr)`` for k' = k+1 .. K
(``result.tie_by_step[f, m, ℓ, k, k']``, NaN where k' <= k), aggregated (Eq. 4) with weights
``w_{k,k'} = exp(-tau (k'-k)) / sum_{j=k+1..K} exp(-tau (j-k))`` (they sum to 1; tau = 0 is the
plain mean) into ``result.tie[f, m, ℓ, k]``.

Common random numbers. Sampling is deterministic (temperature 0), so eps is the only randomness:
the corrupted run and all patch runs of a fact share it, and a TIE is the effect of the patch
alone.

Speed (what is computed, exactly)
---------------------------------
Per fact: the clean run and the corrupted run (K + 1 forwards each: K steps + the final scoring
forward). Then the steps are swept once, k = 0 .. K: the forward batch of step k holds
(a) the L x |modules| patched forwards that start at step k, all starting from the corrupted
state ``x_k^corr`` (the corrupted prefix is shared, never recomputed), and (b) one row per
*distinct* state reached at step k by patch runs started earlier. A patch run's future after its
patched step is a deterministic function of its state, so a run whose state equals the corrupted
run's state (the patch did not change any commit) reuses the corrupted run's scores from then on,
and runs that reach the same state share one row: no forward is computed twice. Values equal a
one-trajectory-at-a-time recomputation (up to float round-off of batched matmuls; tested to
1e-5). ``result.counts`` gives the sequence-forwards done (``n_forwards``; ``patch_forwards``
of them for the patch runs), the model calls (``n_forward_calls``), and the naive counts:
``naive_patch_forwards = L x |modules| x sum_{k<K} (K - k + 1)`` (every patch run from its step
to the final scoring forward: L x K x 3 x the average remaining forwards) and
``from_scratch_forwards`` (every patch run from step 0). The patched forwards themselves are
unavoidable, so ``patch_forwards / naive_patch_forwards`` lies between ``K / sum_k (K-k+1)``
(0.18 at K = 8: no patch changes a commit) and 1 (every patch changes its step's commits and no
two patch runs ever meet); on tiny random models (2-3 layers, K = 4 or 8) it measured 0.20-0.40.
It depends on how often a single-coordinate splice flips a commit, i.e. on the model.

Selection (Eq. 5)
-----------------
``objective[m, ℓ, k] = mean_{F_v} |TIE_z| - beta mean_N |TIE_z'|``; `Selection.best` is its
argmax (ties: module order, then layer, then step), `Selection.ranking` every coordinate best
first, `Selection.paper` the choice used downstream in the paper (m = resid, k* = -1 = every
step, ℓ* = argmax_ℓ max_k objective[resid, ℓ, k]; `Selection.layer_profile` is that max), and
`Selection.per_fact` each fact's own argmax of |TIE_z|.

AR positional trace
-------------------
ROME's trace on one forward: for a causal backbone the teacher-forced ``log p(o | prompt)``
(input ``[prompt | gold]``, logits at i predict i+1); for a masked-diffusion backbone the
fully-masked canvas ``[prompt | MASK x len(gold)]`` (i.e. step 0 of the diffusion trace only).
Corruption as above (same eps for the same fact and seed). Patch: the clean output of module m
at one prompt token t and layer ℓ (ROME's ``window`` rule: the w layers max(0, ℓ - w//2) ..
min(L, ℓ + ceil(w/2)) - 1; ROME uses w = 10 for attn/mlp, default here 1). IE = log p(o | patched)
- log p(o | corrupted) (log-probabilities, like the TIE; ROME itself reports probabilities).
`PositionalResult.select_layer(module)` is ROME's layer: the largest mean IE at the last subject
token.

Cache
-----
``cache_dir=`` stores each result as ``tie-<key>.npz``, key = sha256 over the backbone's name,
`weights_fingerprint` (names, shapes, dtypes, float64 sums and a strided sample of every
parameter and buffer), tokenizer size, mask id, prompt template and answer prefix, the facts
(ids, questions, answers, subject spans) and every setting. A model with forward hooks installed
(an edit) is never cached (a warning says so): hooks are not part of the key.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .backbones import KINDS
from .hooks import edit_outputs
from .sampler import _confidence, _step_clock, num_transfer_tokens

__all__ = ["trace_tie", "select_coordinate", "ar_positional_trace", "TIEResult", "Selection", "Coordinate",
           "PositionalResult", "TracePrompt", "Trajectory", "SubjectError", "prepare_prompt", "subject_positions",
           "draw_noise", "resolve_sigma", "run_trajectory", "score_object", "weights_fingerprint", "cache_key"]

FORMAT_VERSION = 1
REMASKING = ("low_confidence", "entropy", "topk_margin", "maskgit_plus")  # deterministic at temperature 0
SCORES = ("all", "masked")
_SENTINEL = "\ue000"


class SubjectError(ValueError):
    """A fact whose subject cannot be located (and so corrupted) in the prompt."""


# =============================================================================== tokenisation
@dataclass(frozen=True)
class TracePrompt:
    """One fact, tokenised: the canvas, the subject positions S and the gold object o."""
    fact_id: str
    ids: torch.Tensor  # [P + gen_length] long (CPU): [prompt | MASK x gen_length]
    prompt_length: int  # P
    subject: tuple[int, ...]  # S, positions in ids
    gold: tuple[int, ...]  # o, token ids at canvas positions P .. P+len(gold)-1
    gen_length: int
    tokens: tuple[str, ...]  # the prompt's tokens (display only)

    @property
    def gold_positions(self) -> range:
        return range(self.prompt_length, self.prompt_length + len(self.gold))


def _question_offset(backbone, question: str, text: str) -> int:
    probe = backbone.prompt(_SENTINEL)
    if probe.count(_SENTINEL) == 1:
        i = probe.index(_SENTINEL)
        if text[i:i + len(question)] == question:
            return i
    i = text.find(question)
    if i < 0:
        raise SubjectError(f"the question {question!r} does not occur in its prompt {text!r}")
    return i


def subject_positions(backbone, fact) -> tuple[list[int], list[int]]:
    """(prompt ids with BOS, subject token positions S in them) for a fact whose subject is in the question."""
    fid = getattr(fact, "fact_id", "?")
    if fact.subject_in != "question" or fact.subject_span is None or not fact.subject:
        where = ("no subject" if not fact.subject else "no subject span" if fact.subject_span is None
                 else f"subject {fact.subject!r} is in the {fact.subject_in}")
        raise SubjectError(f"fact {fid}: {where}; only a subject inside the question can be corrupted in the "
                           f"prompt (question: {fact.question!r}); pass skip_unlocatable=True to skip such facts")
    a, b = fact.subject_span
    if fact.question[a:b] != fact.subject:
        raise SubjectError(f"fact {fid}: subject_span {fact.subject_span} gives {fact.question[a:b]!r}, "
                           f"not the subject {fact.subject!r}")
    tok = backbone.tokenizer
    if not getattr(tok, "is_fast", False):
        raise TypeError(f"{type(tok).__name__} is not a fast tokenizer; subject positions need offset mappings")
    text = backbone.prompt(fact.question)
    off = _question_offset(backbone, fact.question, text)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if ids != list(backbone.encode(text)):
        raise ValueError(f"fact {fid}: tokenizer(...) and backbone.encode disagree on the prompt {text!r}")
    bos = tok.bos_token_id
    shift = int(bos is not None)
    lo, hi = off + a, off + b
    S = [i + shift for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < hi and e > lo]
    if not S:
        raise SubjectError(f"fact {fid}: subject {fact.subject!r} maps to no prompt token")
    return ([bos] if bos is not None else []) + ids, S


def prepare_prompt(backbone, fact, *, gen_length: int | None = None, gen_slack: int = 4,
                   canvas: str = "mask") -> TracePrompt:
    """Tokenise a fact: canvas ``[prompt | MASK x G]`` (``canvas="gold"``: ``[prompt | gold]``, no slack)."""
    prompt, S = subject_positions(backbone, fact)
    gold = list(backbone.encode(backbone.answer_prefix + fact.answer))
    if not gold:
        raise ValueError(f"fact {fact.fact_id}: answer {fact.answer!r} encodes to no tokens")
    if canvas == "gold":
        G, tail = len(gold), gold
    else:
        G = len(gold) + int(gen_slack) if gen_length is None else int(gen_length)
        if G < len(gold):
            raise ValueError(f"fact {fact.fact_id}: gen_length={G} is shorter than the gold answer "
                             f"({len(gold)} tokens)")
        tail = [backbone.mask_id] * G
    ids = torch.tensor(prompt + tail, dtype=torch.long)
    tokens = tuple(backbone.tokenizer.convert_ids_to_tokens(prompt))
    return TracePrompt(fact.fact_id, ids, len(prompt), tuple(S), tuple(gold), G, tokens)


# ======================================================================================= noise
def _fact_seed(seed: int, fact) -> int:
    key = json.dumps([int(seed), fact.fact_id, fact.question, fact.answer], ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def draw_noise(backbone, fact, prompt: TracePrompt, seed: int = 0) -> torch.Tensor:
    """eps ~ N(0, I) of shape [|S|, H] (unscaled), one draw per (fact, seed), drawn on the CPU."""
    g = torch.Generator().manual_seed(_fact_seed(seed, fact))
    return torch.randn(len(prompt.subject), backbone.hidden_size, generator=g, dtype=torch.float32)


def resolve_sigma(backbone, prompts, sigma=None, noise_scale: float = 3.0) -> float:
    """``sigma`` if given, else noise_scale x std of the embedding entries of every prompt's subject tokens."""
    if sigma is not None:
        if not sigma >= 0:
            raise ValueError(f"sigma={sigma} must be >= 0")
        return float(sigma)
    ids = [int(p.ids[i]) for p in prompts for i in p.subject]
    w = backbone.embedding.weight.detach()
    emb = w[torch.tensor(ids, device=w.device)].float()
    return float(noise_scale * emb.std().item()) if emb.numel() > 1 else 0.0


# ============================================================================ forward engine
class _Counter:
    def __init__(self):
        self.rows = 0
        self.calls = 0


def _forward(backbone, x, *, step=None, noise=None, noise_pos=(), patches=(), capture=(), capture_pos=(),
             counter=None, batch_size=None, reduce=None):
    """Logits [B, T, V] of rows x [B, T] with hooks (``reduce``: ``reduce(logits, rows)`` per chunk
    instead, results concatenated, so the logits of only one chunk are alive at a time).

    noise: [len(noise_pos), H] added to the input embeddings at noise_pos of every row.
    patches: (row, hook name, positions, value [len(positions), H]): that row's module output there
    is replaced. capture: hook names whose output at capture_pos is returned ({name: [B, n, H]}).
    Rows run ``batch_size`` at a time; ``backbone.step`` is ``step`` during the forward.
    """
    B = x.shape[0]
    bs = B if not batch_size else int(batch_size)
    dev = backbone.device
    by_row: dict[int, list] = {}
    for p in patches:
        by_row.setdefault(p[0], []).append(p)
    names = {"embed"} if noise is not None else set()
    names.update(p[1] for p in patches)
    names.update(capture)
    npos = torch.as_tensor(list(noise_pos), dtype=torch.long, device=dev)
    cpos = torch.as_tensor(list(capture_pos), dtype=torch.long, device=dev)
    out_logits, caps = [], {n: [] for n in capture}
    with _step_clock(backbone):
        backbone.step = step
        for lo in range(0, B, bs):
            hi = min(B, lo + bs)
            edits: dict[str, list] = {}
            for r in range(lo, hi):
                for _, name, pos, val in by_row.get(r, ()):
                    edits.setdefault(name, []).append((r - lo, pos, val))

            def fn(name, h):
                new = None
                if name == "embed" and noise is not None:
                    new = h.clone()
                    new[:, npos] = new[:, npos] + noise.to(device=h.device, dtype=h.dtype)
                for r, pos, val in edits.get(name, ()):
                    if new is None:
                        new = h.clone()
                    new[r, torch.as_tensor(list(pos), dtype=torch.long, device=h.device)] = \
                        val.to(device=h.device, dtype=h.dtype)
                if name in caps:
                    caps[name].append((h if new is None else new)[:, cpos].detach().clone())
                return new

            modules = {n: backbone.hook_point(n) for n in sorted(names)}
            with edit_outputs(modules, fn):
                logits = backbone.logits(x[lo:hi].to(dev))
            out_logits.append(logits if reduce is None else reduce(logits, x[lo:hi]))
            del logits
            if counter is not None:
                counter.rows += hi - lo
                counter.calls += 1
    caps = {n: torch.cat(v) for n, v in caps.items()}
    if reduce is None:
        return torch.cat(out_logits), caps
    return tuple(_cat(parts) for parts in zip(*out_logits)), caps


def _cat(parts):
    return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else torch.cat(parts)


def score_object(logits, x, prompt: TracePrompt, score: str = "all", *, mask_id: int | None = None,
                 causal: bool = False) -> np.ndarray:
    """log p(o | x) per row (float64 [B]): the gold tokens' log-softmax at the gold positions, summed.

    Masked-diffusion canvas: position P+j scores o_j (``score="masked"``: only where x still holds
    ``mask_id``). ``causal``: teacher forcing, logits at P-1+j score o_j.
    """
    n, P = len(prompt.gold), prompt.prompt_length
    sl = (logits[:, P - 1:P - 1 + n] if causal else logits[:, P:P + n]).float()
    gold = torch.as_tensor(prompt.gold, dtype=torch.long, device=sl.device)
    tok = (sl.gather(-1, gold[None, :, None].expand(sl.shape[0], n, 1)).squeeze(-1) - sl.logsumexp(-1)).double()
    if score == "masked" and not causal:
        still = x[:, P:P + n].to(tok.device) == mask_id
        tok = torch.where(still, tok, torch.zeros_like(tok))
    return tok.sum(-1).cpu().numpy()


def _scores(logits, x, prompt, score, mask_id, causal=False) -> np.ndarray:
    return score_object(logits, x, prompt, score, mask_id=mask_id, causal=causal)


def _commit(backbone, x, logits, n: int, P: int, remasking: str) -> torch.Tensor:
    """`sampler.generate`'s commit rule for one block covering the whole canvas (temperature 0)."""
    x = x.to(logits.device)
    canvas = x[:, P:]
    lg = logits[:, P:]
    masked = canvas == backbone.mask_id
    cand = lg.float().clone()
    cand[..., backbone.mask_id] = -torch.inf  # the mask token is never a candidate
    x0 = cand.argmax(-1)
    conf = _confidence(lg, x0, remasking, 0.0, None).float()
    conf = torch.where(masked, conf, torch.full_like(conf, -torch.inf))
    order = conf.argsort(dim=1, descending=True, stable=True)
    take = (torch.arange(canvas.shape[1], device=x.device)[None, :] < n).expand_as(order)
    rows = torch.arange(x.shape[0], device=x.device)
    commit = torch.zeros_like(masked)
    commit[rows[:, None].expand_as(order)[take], order[take]] = True
    out = x.clone()
    out[:, P:] = torch.where(commit, x0, canvas)
    return out.cpu()


@dataclass
class Trajectory:
    """One diffusion trajectory: states x_0..x_K, log p(o | x_k) for k = 0..K, captured activations."""
    states: torch.Tensor  # [K+1, T] long (CPU)
    scores: np.ndarray  # [K+1] float64
    captured: dict  # hook name -> [K, |S|, H] (forwards of steps 0..K-1)


def _schedule(prompt, steps):
    return num_transfer_tokens(torch.tensor([prompt.gen_length]), steps)[0].tolist()


@torch.no_grad()
def run_trajectory(backbone, prompt: TracePrompt, *, steps: int = 8, noise=None, patches=None, capture=(),
                   remasking: str = "low_confidence", score: str = "all", counter=None) -> Trajectory:
    """One trajectory of K steps plus the final scoring forward.

    noise: [|S|, H], already scaled (sigma x eps), added on S at every forward (None: clean).
    patches: {(hook name, step): value [|S|, H]} replacing that module's output on S at that step
    (e.g. ``("resid.3", 2)``, or ``("embed", k)`` for input embeddings). capture: hook names.
    """
    patches = patches or {}
    sched = _schedule(prompt, steps)
    x = prompt.ids[None].clone()
    P = prompt.prompt_length
    states, scores, caps = [x[0].clone()], [], {n: [] for n in capture}
    for k in range(steps + 1):
        pt = [(0, name, prompt.subject, v) for (name, s), v in patches.items() if s == k]
        logits, got = _forward(backbone, x, step=k, noise=noise, noise_pos=prompt.subject, patches=pt,
                               capture=capture if k < steps else (), capture_pos=prompt.subject, counter=counter)
        scores.append(float(_scores(logits, x, prompt, score, backbone.mask_id)[0]))
        if k < steps:
            for n in capture:
                caps[n].append(got[n][0])
            x = _commit(backbone, x, logits, sched[k], P, remasking)
            states.append(x[0].clone())
    return Trajectory(torch.stack(states), np.array(scores), {n: torch.stack(v) for n, v in caps.items()})


# ============================================================================== the tracer
def _hook_name(module: str, layer: int) -> str:
    return f"{module}.{layer}"


@torch.no_grad()
def _trace_fact(backbone, prompt, noise, *, steps, modules, remasking, score, patch_source, batch_size):
    """-> (tie_by_step [M, L, K, K+1], clean Trajectory, corrupted Trajectory, patch_rows, calls)."""
    K, L, M, P = steps, backbone.n_layers, len(modules), prompt.prompt_length
    names = [_hook_name(m, l) for m in modules for l in range(L)]
    cnt = _Counter()
    clean = run_trajectory(backbone, prompt, steps=K, capture=names if patch_source == "clean" else (),
                           remasking=remasking, score=score, counter=cnt)
    corr = run_trajectory(backbone, prompt, steps=K, noise=noise, capture=names if patch_source == "corrupted" else (),
                          remasking=remasking, score=score, counter=cnt)
    base_rows, base_calls = cnt.rows, cnt.calls
    source = (clean if patch_source == "clean" else corr).captured
    sched = _schedule(prompt, K)
    key = lambda st: st[P:].numpy().tobytes()
    # memo[s]: state at step s -> (log p(o | state), state at s+1) -- seeded with the corrupted run
    memo = [{key(corr.states[s]): (float(corr.scores[s]), corr.states[s + 1] if s < K else None)}
            for s in range(K + 1)]
    patch_logp = np.full((M, L, K, K + 1), np.nan)
    chains: list[tuple[int, int, int, torch.Tensor]] = []  # (module idx, layer, start step, state now)
    coords = [(mi, l) for mi in range(M) for l in range(L)]
    for s in range(K + 1):
        need: dict[bytes, torch.Tensor] = {}
        for *_, st in chains:
            kb = key(st)
            if kb not in memo[s] and kb not in need:
                need[kb] = st
        rows, patches = [], []
        if s < K:  # patch runs starting at s: all from the corrupted state x_s (shared prefix)
            for r, (mi, l) in enumerate(coords):
                rows.append(corr.states[s])
                patches.append((r, _hook_name(modules[mi], l), prompt.subject, source[_hook_name(modules[mi], l)][s]))
        n_new = len(rows)
        rows.extend(need.values())
        if rows:
            x = torch.stack(rows)

            def reduce(logits, xc):
                sc = _scores(logits, xc, prompt, score, backbone.mask_id)
                return sc, (_commit(backbone, xc, logits, sched[s], P, remasking) if s < K else xc)

            (sc, nxt), _ = _forward(backbone, x, step=s, noise=noise, noise_pos=prompt.subject, patches=patches,
                                    counter=cnt, batch_size=batch_size, reduce=reduce)
            nxt = nxt if s < K else None
            for j, kb in enumerate(need, start=n_new):
                memo[s][kb] = (float(sc[j]), nxt[j] if nxt is not None else None)
        new_chains = []
        for mi, l, k0, st in chains:
            val, after = memo[s][key(st)]
            patch_logp[mi, l, k0, s] = val
            if s < K:
                new_chains.append((mi, l, k0, after))
        if s < K:
            new_chains.extend((mi, l, s, nxt[r]) for r, (mi, l) in enumerate(coords))
        chains = new_chains
    tie = patch_logp - corr.scores[None, None, None, :]
    return tie, clean, corr, cnt.rows - base_rows, cnt.rows, cnt.calls


def _aggregate(tie_by_step: np.ndarray, tau: float) -> np.ndarray:
    """Eq. 4: [..., K, K+1] -> [..., K] with w_{k,k'} ∝ exp(-tau (k'-k)) over k' = k+1..K."""
    K = tie_by_step.shape[-2]
    w = np.zeros((K, K + 1))
    for k in range(K):
        d = np.arange(1, K - k + 1)
        e = np.exp(-tau * (d - 1))  # shift for stability; normalised below
        w[k, k + 1:] = e / e.sum()
    return np.nansum(tie_by_step * w, axis=-1)


def _naive_counts(L, M, K):
    per = M * L
    return {"naive_patch_forwards": per * sum(K - k + 1 for k in range(K)),
            "from_scratch_forwards": per * K * (K + 1) + 2 * (K + 1)}


# ================================================================================== results
class _Result:
    """Arrays go to an .npz, everything else to a JSON string stored beside them."""

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays, meta = {}, {"class": type(self).__name__, "format_version": FORMAT_VERSION}
        for f in fields(self):
            if not f.init or f.name == "from_cache":
                continue
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                arrays[f.name] = v
            else:
                meta[f.name] = v
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, __meta__=np.array(json.dumps(meta)), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path):
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
        if meta.pop("class") != cls.__name__:
            raise ValueError(f"{path} does not hold a {cls.__name__}")
        if meta.pop("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format version")
        meta["modules"] = tuple(meta["modules"])
        return cls(**meta, **arrays)


class Coordinate(NamedTuple):
    module: str
    layer: int
    step: int  # -1: every step
    score: float


@dataclass(eq=False)  # holds arrays: == is identity
class Selection:
    """Eq. 5's selection over a `TIEResult`."""
    best: Coordinate  # argmax over (ℓ, k, m) of the objective
    ranking: list  # every Coordinate, best first (ties: module order, then layer, then step)
    paper: Coordinate | None  # m = resid, k* = -1 (every step), ℓ* = argmax_ℓ max_k objective[resid]
    objective: np.ndarray  # [M, L, K]: mean_Fv |TIE| - beta mean_N |TIE|
    layer_profile: np.ndarray | None  # [L]: max over k of the resid objective (ℓ* is its argmax)
    per_fact: list  # per fact: {fact_id, module, layer, step, tie} at argmax |TIE_z|
    modules: tuple
    beta: float

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.ranking, columns=Coordinate._fields)


@dataclass(eq=False)  # holds arrays: == is identity
class TIEResult(_Result):
    """TIE heatmaps of a set of facts (see the module docstring for every definition)."""
    modules: tuple
    n_layers: int
    steps: int
    fact_ids: list
    questions: list
    answers: list
    subject_positions: list  # per fact: S
    subject_tokens: list  # per fact: the tokens at S
    tie: np.ndarray  # [F, M, L, K]: Eq. 4's aggregated TIE
    tie_by_step: np.ndarray  # [F, M, L, K, K+1]: Eq. 3 at every k' (NaN where k' <= k)
    logp_clean: np.ndarray  # [F, K+1]: log p(o | x_k) on the clean run
    logp_corrupt: np.ndarray  # [F, K+1]: ... on the corrupted run
    clean_answer: list  # per fact: the clean run's final canvas (token ids)
    corrupt_answer: list  # per fact: the corrupted run's final canvas
    settings: dict
    counts: dict
    skipped: list = field(default_factory=list)
    from_cache: bool = field(default=False, compare=False)

    # --- axes & heatmaps
    @property
    def axes(self) -> dict:
        return {"layer": np.arange(self.n_layers), "step": np.arange(self.steps)}

    def _mi(self, module):
        if module not in self.modules:
            raise KeyError(f"module {module!r} was not traced (traced: {self.modules})")
        return self.modules.index(module)

    def per_fact(self, module: str) -> np.ndarray:
        """[F, n_layers, steps] aggregated TIE per fact."""
        return self.tie[:, self._mi(module)]

    def heatmap(self, module: str = "resid", *, absolute: bool = False) -> np.ndarray:
        """Mean over facts of the aggregated TIE (``absolute``: of |TIE|), [n_layers, steps]."""
        t = self.per_fact(module)
        return (np.abs(t) if absolute else t).mean(0)

    def select(self, neighbours=None, beta: float = 0.0) -> Selection:
        return select_coordinate(self, neighbours=neighbours, beta=beta)

    def __repr__(self):
        return (f"TIEResult({len(self.fact_ids)} facts, modules={self.modules}, layers={self.n_layers}, "
                f"steps={self.steps}, sigma={self.settings.get('sigma')}, forwards={self.counts.get('n_forwards')})")


def select_coordinate(result: TIEResult, neighbours=None, beta: float = 0.0) -> Selection:
    """Eq. 5: argmax over (ℓ, k, m) of mean_{F_v} |TIE| - beta mean_N |TIE|.

    ``neighbours``: a `TIEResult` over the neighbour set N (traced with the same modules, layers,
    steps -- and best the same sigma), or an array [N, M, L, K]. beta > 0 needs neighbours.
    """
    if beta < 0:
        raise ValueError(f"beta={beta} must be >= 0")
    obj = np.abs(result.tie).mean(0)
    if neighbours is not None:
        nt = neighbours.tie if isinstance(neighbours, TIEResult) else np.asarray(neighbours, dtype=float)
        if isinstance(neighbours, TIEResult) and tuple(neighbours.modules) != tuple(result.modules):
            raise ValueError(f"neighbour modules {neighbours.modules} != {result.modules}")
        if nt.ndim != 4 or nt.shape[1:] != result.tie.shape[1:] or nt.shape[0] == 0:
            want = ", ".join(map(str, result.tie.shape[1:]))
            raise ValueError(f"neighbour TIE of shape {nt.shape}; expected [N>0, {want}]")
        obj = obj - beta * np.abs(nt).mean(0)
    elif beta > 0:
        raise ValueError("beta > 0 needs a neighbour set (neighbours=)")
    M, L, K = obj.shape
    flat = [(float(obj[mi, l, k]), mi, l, k) for mi in range(M) for l in range(L) for k in range(K)]
    order = sorted(range(len(flat)), key=lambda i: -flat[i][0])  # stable: ties keep module/layer/step order
    ranking = [Coordinate(result.modules[flat[i][1]], flat[i][2], flat[i][3], flat[i][0]) for i in order]
    paper, profile = None, None
    if "resid" in result.modules:
        profile = obj[result.modules.index("resid")].max(1)
        lstar = int(np.argmax(profile))
        paper = Coordinate("resid", lstar, -1, float(profile[lstar]))
    per_fact = []
    for f, fid in enumerate(result.fact_ids):
        a = np.abs(result.tie[f])
        mi, l, k = np.unravel_index(int(np.argmax(a)), a.shape)
        per_fact.append({"fact_id": fid, "module": result.modules[mi], "layer": int(l), "step": int(k),
                         "tie": float(result.tie[f, mi, l, k])})
    return Selection(ranking[0], ranking, paper, obj, profile, per_fact, tuple(result.modules), float(beta))


# ==================================================================================== cache
def weights_fingerprint(model) -> str:
    """sha256 over every parameter/buffer's name, shape, dtype, float64 sum and a strided sample."""
    h = hashlib.sha256()
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        t = t.detach()
        flat = t.reshape(-1)
        stride = max(1, flat.numel() // 1024)
        sample = flat[::stride][:1024].float().cpu().numpy()
        total = float(t.sum(dtype=torch.float64)) if t.is_floating_point() else float(t.double().sum())
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{total!r}|".encode())
        h.update(sample.tobytes())
    return h.hexdigest()


def _hooked(model) -> list[str]:
    return [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def cache_key(backbone, facts, settings: dict, kind: str = "tie", fingerprint: str | None = None) -> str:
    """The cache key: sha256 (32 hex digits) over backbone identity + weights, facts and settings."""
    facts_desc = [[f.fact_id, f.question, f.answer, f.subject, list(f.subject_span or []), f.subject_in]
                  for f in facts]
    desc = {"kind": kind, "version": FORMAT_VERSION, "backbone": backbone.name,
            "weights": fingerprint or weights_fingerprint(backbone.model), "vocab": len(backbone.tokenizer),
            "mask_id": backbone.mask_id, "template": backbone.prompt_template,
            "answer_prefix": backbone.answer_prefix, "facts": facts_desc, "settings": settings}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:32]


# ============================================================================= entry points
def _prepare(backbone, facts, skip_unlocatable, **kw):
    from .data import Fact

    if isinstance(facts, Fact):
        facts = [facts]
    facts = list(facts)
    if not facts:
        raise ValueError("no facts to trace (empty fact list)")
    kept, prompts, skipped = [], [], []
    for f in facts:
        try:
            p = prepare_prompt(backbone, f, **kw)
        except SubjectError:
            if not skip_unlocatable:
                raise
            skipped.append(f.fact_id)
            continue
        kept.append(f)
        prompts.append(p)
    if not kept:
        raise SubjectError(f"no traceable facts: every fact was skipped ({', '.join(skipped)})")
    return facts, kept, prompts, skipped


def _check_modules(modules):
    modules = tuple(modules)
    bad = [m for m in modules if m not in KINDS]
    if not modules or bad or len(set(modules)) != len(modules):
        raise ValueError(f"modules={modules}: expected distinct names from {KINDS}")
    return modules


def trace_tie(backbone, facts, *, steps: int = 8, sigma: float | None = None, tau: float = 1.0,
              modules=("resid", "attn", "mlp"), seed: int = 0, gen_length: int | None = None, gen_slack: int = 4,
              noise_scale: float = 3.0, score: str = "all", remasking: str = "low_confidence",
              skip_unlocatable: bool = False, batch_size: int = 64, cache_dir=None,
              patch_source: str = "clean") -> TIEResult:
    """Trace the Temporal Indirect Effect of every (layer, step, module) for each fact (Eqs. 2-4).

    Returns a `TIEResult`; ``result.heatmap(module)`` is the mean TIE over facts, [n_layers, steps].
    ``patch_source="corrupted"`` splices the corrupted run's own activations (an identity patch,
    a sanity check: every TIE is 0). ``batch_size``: rows per model call (memory only, so it is not
    part of the cache key). See the module docstring for every definition.
    """
    if backbone.is_causal:
        raise ValueError(f"{backbone.name or 'this backbone'} is autoregressive: trace_tie needs a masked-diffusion "
                         "model; use ar_positional_trace for the AR positional trace")
    modules = _check_modules(modules)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps={steps} must be a positive integer")
    steps = int(steps)
    if score not in SCORES:
        raise ValueError(f"score={score!r}; expected one of {SCORES}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking={remasking!r}; tracing needs a deterministic rule, one of {REMASKING}")
    if patch_source not in ("clean", "corrupted"):
        raise ValueError(f"patch_source={patch_source!r}; expected 'clean' or 'corrupted'")
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau={tau} must be a finite number >= 0")
    facts, kept, prompts, skipped = _prepare(backbone, facts, skip_unlocatable, gen_length=gen_length,
                                             gen_slack=gen_slack)
    settings = {"steps": steps, "sigma_arg": sigma, "noise_scale": float(noise_scale), "tau": float(tau),
                "modules": list(modules), "seed": int(seed), "gen_length": gen_length, "gen_slack": int(gen_slack),
                "score": score, "remasking": remasking, "patch_source": patch_source,
                "skip_unlocatable": bool(skip_unlocatable)}
    path, fp = None, weights_fingerprint(backbone.model)
    if cache_dir is not None:
        if _hooked(backbone.model):
            warnings.warn("the model has forward hooks installed (an edit?); the TIE trace is not cached")
        else:
            path = Path(cache_dir) / f"tie-{cache_key(backbone, facts, settings, fingerprint=fp)}.npz"
            if path.exists():
                res = TIEResult.load(path)
                res.from_cache = True
                return res
    sig = resolve_sigma(backbone, prompts, sigma, noise_scale)
    L, M, K = backbone.n_layers, len(modules), steps
    ties, lp_clean, lp_corr, ans_clean, ans_corr = [], [], [], [], []
    per_fact_patch, n_rows, n_calls = [], 0, 0
    for f, p in zip(kept, prompts):
        noise = (sig * draw_noise(backbone, f, p, seed)).to(backbone.device)
        tie_k, clean, corr, patch_rows, rows, calls = _trace_fact(
            backbone, p, noise, steps=K, modules=modules, remasking=remasking, score=score,
            patch_source=patch_source, batch_size=batch_size)
        ties.append(tie_k)
        lp_clean.append(clean.scores)
        lp_corr.append(corr.scores)
        ans_clean.append(clean.states[-1, p.prompt_length:].tolist())
        ans_corr.append(corr.states[-1, p.prompt_length:].tolist())
        per_fact_patch.append(patch_rows)
        n_rows += rows
        n_calls += calls
    tie_by_step = np.stack(ties)
    naive = _naive_counts(L, M, K)
    nf = len(kept)
    counts = {"n_forwards": n_rows, "n_forward_calls": n_calls, "clean_corrupt_forwards": nf * 2 * (K + 1),
              "patch_forwards": int(sum(per_fact_patch)), "patch_forwards_per_fact": per_fact_patch,
              "naive_patch_forwards": nf * naive["naive_patch_forwards"],
              "from_scratch_forwards": nf * naive["from_scratch_forwards"]}
    counts["patch_ratio"] = counts["patch_forwards"] / counts["naive_patch_forwards"]
    counts["total_ratio_from_scratch"] = n_rows / counts["from_scratch_forwards"]
    settings.update({"sigma": sig, "gen_lengths": [p.gen_length for p in prompts], "backbone": backbone.name,
                     "weights": fp})
    res = TIEResult(modules=modules, n_layers=L, steps=K, fact_ids=[f.fact_id for f in kept],
                    questions=[f.question for f in kept], answers=[f.answer for f in kept],
                    subject_positions=[list(p.subject) for p in prompts],
                    subject_tokens=[[p.tokens[i] for i in p.subject] for p in prompts],
                    tie=_aggregate(tie_by_step, tau), tie_by_step=tie_by_step, logp_clean=np.stack(lp_clean),
                    logp_corrupt=np.stack(lp_corr), clean_answer=ans_clean, corrupt_answer=ans_corr,
                    settings=settings, counts=counts, skipped=skipped)
    if path is not None:
        res.save(path)
    return res


# ==================================================================== AR positional trace
@dataclass(eq=False)  # holds arrays: == is identity
class PositionalResult(_Result):
    """ROME's token x layer trace per fact: IE = log p(o | patched) - log p(o | corrupted)."""
    modules: tuple
    n_layers: int
    fact_ids: list
    tokens: list  # per fact: the prompt tokens
    subject_positions: list
    prompt_lengths: list
    ie: np.ndarray  # [F, M, max P, L], NaN beyond a fact's prompt
    logp_clean: np.ndarray  # [F]
    logp_corrupt: np.ndarray  # [F]
    settings: dict
    counts: dict
    skipped: list = field(default_factory=list)
    from_cache: bool = field(default=False, compare=False)

    def heatmap(self, module: str = "mlp", fact: int = 0) -> np.ndarray:
        """[n_prompt_tokens, n_layers] for one fact."""
        return self.ie[fact, self.modules.index(module), :self.prompt_lengths[fact]]

    def last_subject(self, module: str = "mlp") -> np.ndarray:
        """[F, n_layers]: the IE at each fact's last subject token."""
        mi = self.modules.index(module)
        return np.stack([self.ie[f, mi, s[-1]] for f, s in enumerate(self.subject_positions)])

    def select_layer(self, module: str = "mlp") -> int:
        """ROME's choice: the layer with the largest mean IE at the last subject token."""
        return int(np.argmax(self.last_subject(module).mean(0)))


@torch.no_grad()
def ar_positional_trace(backbone, facts, *, sigma: float | None = None, noise_scale: float = 3.0,
                        modules=("resid", "attn", "mlp"), seed: int = 0, window: int = 1,
                        skip_unlocatable: bool = False, batch_size: int = 64) -> PositionalResult:
    """ROME's positional causal trace (token x layer), for the "AR positional" ablation.

    Causal backbones: teacher-forced log p(o | prompt); masked-diffusion backbones: one forward on
    the fully-masked canvas. Patches one prompt token at a time (layers ℓ-w//2 .. ℓ+w//2).
    """
    modules = _check_modules(modules)
    if window < 1:
        raise ValueError(f"window={window} must be >= 1")
    causal = backbone.is_causal
    facts, kept, prompts, skipped = _prepare(backbone, facts, skip_unlocatable, gen_length=None, gen_slack=0,
                                             canvas="gold" if causal else "mask")
    sig = resolve_sigma(backbone, prompts, sigma, noise_scale)
    L = backbone.n_layers
    Pmax = max(p.prompt_length for p in prompts)
    ie = np.full((len(kept), len(modules), Pmax, L), np.nan)
    lp_clean, lp_corr = [], []
    cnt = _Counter()
    for fi, (f, p) in enumerate(zip(kept, prompts)):
        P = p.prompt_length
        x = p.ids[None]
        noise = (sig * draw_noise(backbone, f, p, seed)).to(backbone.device)
        names = [_hook_name(m, l) for m in modules for l in range(L)]
        logits, clean_h = _forward(backbone, x, capture=names, capture_pos=range(P), counter=cnt)
        lp_clean.append(float(_scores(logits, x, p, "all", backbone.mask_id, causal)[0]))
        logits, _ = _forward(backbone, x, noise=noise, noise_pos=p.subject, counter=cnt)
        base = float(_scores(logits, x, p, "all", backbone.mask_id, causal)[0])
        lp_corr.append(base)
        for mi, m in enumerate(modules):
            patches, cells = [], []
            for t in range(P):
                for l in range(L):
                    r = len(cells)
                    for ll in range(max(0, l - window // 2), min(L, l - (-window // 2))):
                        patches.append((r, _hook_name(m, ll), (t,), clean_h[_hook_name(m, ll)][0, t:t + 1]))
                    cells.append((t, l))
            xs = x.expand(len(cells), -1)
            (sc,), _ = _forward(backbone, xs, noise=noise, noise_pos=p.subject, patches=patches, counter=cnt,
                                batch_size=batch_size,
                                reduce=lambda lg, xc: (_scores(lg, xc, p, "all", backbone.mask_id, causal),))
            for r, (t, l) in enumerate(cells):
                ie[fi, mi, t, l] = sc[r] - base
    settings = {"sigma": sig, "sigma_arg": sigma, "noise_scale": float(noise_scale), "modules": list(modules),
                "seed": int(seed), "window": int(window), "causal": causal, "backbone": backbone.name,
                "objective": "teacher-forced log p(o|prompt)" if causal else "log p(o | fully masked canvas)"}
    return PositionalResult(modules=modules, n_layers=L, fact_ids=[f.fact_id for f in kept],
                            tokens=[list(p.tokens) for p in prompts],
                            subject_positions=[list(p.subject) for p in prompts],
                            prompt_lengths=[p.prompt_length for p in prompts], ie=ie, logp_clean=np.array(lp_clean),
                            logp_corrupt=np.array(lp_corr), settings=settings,
                            counts={"n_forwards": cnt.rows, "n_forward_calls": cnt.calls}, skipped=skipped)
