"""Diffusion-time causal tracing: the Temporal Indirect Effect (TIE) of Eqs. 2-4.

Around it: the saved results and the cache key are `timerome.tie_results`, Eq. 5's coordinate
selection `timerome.selection`, ROME's positional trace for autoregressive models
`timerome.ar_trace`, and the validation facts F_v `splits.validation_facts`.

Paper 002 §III-A/B (Eqs. 2-5), Algorithm 1 stages 1-2. For a fact (a question holding the
subject tokens S, a gold answer o) and K denoising steps:

* clean run: greedy sampling of ``[BOS | prompt | MASK x G]`` (G = |o| + 4) with the
  low-confidence commit rule of `sampler.generate`; the output of every (layer ℓ, module m) on S
  is captured at every step k;
* corrupted run: the same with ``sigma * eps`` added to the input embeddings of S in every forward
  (Eq. 2); one ``eps ~ N(0, I)`` per (fact, seed). ``sigma=None``: 3 x the std of the embedding
  entries of the traced facts' subject tokens (ROME's rule);
* patch run (ℓ, k, m): the corrupted run with the clean output of (ℓ, m) on S spliced into the
  forward of step k only; later steps commit autonomously.

x_k is the state the forward of step k sees (x_0: answer fully masked, x_K: fully committed).

Scoring from trained outputs only. An MDLM is trained to predict masked positions; its outputs at
committed positions are never trained and carry no information about the fact. So log p(o | x_k')
sums, over the gold positions j, log p(o_j) read from the *last forward in which j was still
masked*: the forward on x_k' itself while j is masked there, else the forward of the step that
committed j (under noise in corrupted and patch runs, and under the patch in the patched step).
Each run banks the scores of the positions it commits, so x_K needs no forward of its own. An
output at an unmasked position is never read, by the score or by the commit rule.
TIE(ℓ,k,m,k') = log p(o | x_k'^patch) - log p(o | x_k'^corr) for k' = k+1..K (Eq. 3),
aggregated with weights ∝ exp(-tau (k'-k)) over those k' (Eq. 4). Sampling is greedy, so eps is
the only randomness and the corrupted run and all patch runs of a fact share it (common random
numbers): a TIE is the effect of the patch alone. Patching the last layer at S changes only the
logits at S, which are never read, so its TIE is exactly zero.

Speed. Naively each of the L x M x K patch runs is a trajectory of K forwards. Here the steps
are swept once: the batch of step k holds the L x M patch runs starting at k, all from the
corrupted x_k (the shared prefix is never recomputed), plus one row per distinct state that
earlier patch runs have reached. A forward's outputs and the run's next state depend only on its
state, so runs in one state share a row (each keeps its own bank of committed scores) and a run
back on the corrupted trajectory reuses the corrupted run's forwards. The
values equal a one-trajectory-at-a-time recomputation (tests/test_tracer.py keeps that reference).
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .backbones import MODULES, point
from .hooks import has_hooks
from .rng import stable_seed
from .sampler import commit_mask, num_transfer_tokens, propose
from .tie_results import TIEResult, cache_key

_SENTINEL = "\ue000"  # a private-use character: marks where the question goes in the prompt


class SubjectError(ValueError):
    """A fact whose subject cannot be located (and so corrupted) in the prompt."""


# ----------------------------------------------------------------------------- tokenisation
def subject_positions(backbone, fact) -> tuple[list[int], list[int]]:
    """(prompt ids with BOS if the tokenizer has one, positions S of the subject's tokens in them).

    S is every token whose characters overlap the subject span (a leading-space token counts).
    """
    a, b = fact.subject_span or (0, 0)
    if not fact.subject or fact.subject_in != "question" or fact.question[a:b] != fact.subject:
        raise SubjectError(f"fact {fact.fact_id}: no subject span in the question to corrupt (subject {fact.subject!r}, "
                           f"span {fact.subject_span} in the {fact.subject_in}; question {fact.question!r})")
    tok = backbone.tokenizer
    text = backbone.prompt(fact.question)
    head = backbone.prompt(_SENTINEL).split(_SENTINEL)[0]
    if not text.startswith(head + fact.question):
        raise ValueError(f"cannot find the question inside its prompt {text!r}")
    lo, hi = len(head) + a, len(head) + b
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)  # = backbone.encode(text)
    ids = list(enc["input_ids"])
    bos = [] if tok.bos_token_id is None else [tok.bos_token_id]
    S = [len(bos) + i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < hi and e > lo]
    if not S:
        raise SubjectError(f"fact {fact.fact_id}: subject {fact.subject!r} maps to no prompt token")
    return bos + ids, S


@dataclass(frozen=True)
class TracePrompt:
    """One fact, tokenised: the canvas ``[prompt | MASK x gen_length]``, S and the gold object o."""
    ids: torch.Tensor  # [P + gen_length] long, CPU
    prompt_length: int  # P
    subject: tuple  # S
    gold: tuple  # o: token ids expected at canvas positions P .. P+len(o)-1

    @property
    def gen_length(self) -> int:
        return len(self.ids) - self.prompt_length


def prepare_prompt(backbone, fact, *, gen_length: int | None = None) -> TracePrompt:
    """Tokenise a fact; ``gen_length=None`` leaves 4 free slots after the gold answer (room for EOS)."""
    prompt, S = subject_positions(backbone, fact)
    gold = backbone.answer_ids(fact.answer, what=f"fact {fact.fact_id}: answer")
    G = len(gold) + 4 if gen_length is None else int(gen_length)
    if G < len(gold):
        raise ValueError(f"fact {fact.fact_id}: gen_length={G} is shorter than the gold answer ({len(gold)} tokens)")
    ids = torch.tensor(prompt + [backbone.mask_id] * G, dtype=torch.long)
    return TracePrompt(ids, len(prompt), tuple(S), tuple(gold))


def draw_noise(backbone, fact, prompt: TracePrompt, seed: int = 0) -> torch.Tensor:
    """eps ~ N(0, I), [|S|, H], drawn on the CPU from a seed of (seed, fact): the same on any device."""
    g = torch.Generator().manual_seed(stable_seed(int(seed), fact.fact_id, fact.question, fact.answer, digest_size=7))
    return torch.randn(len(prompt.subject), backbone.hidden_size, generator=g)


def embedding_sigma(backbone, prompts, factor: float = 3.0) -> float:
    """ROME's noise level: factor x the std of the embedding entries of every prompt's subject tokens."""
    w = backbone.embedding.weight.detach()
    ids = torch.tensor([int(p.ids[i]) for p in prompts for i in p.subject], device=w.device)
    return factor * float(w[ids].float().std())


# --------------------------------------------------------------------------- forward engine
def forward_chunks(backbone, x, step, S, noise=None, patches=(), capture=(), batch_size=None, counts=None):
    """Forward the rows of x [B, T] ``batch_size`` at a time (one chunk's vocabulary-sized logits
    alive at once), yielding (lo, hi, logits, captured) per chunk. ``noise`` [|S|, H] is added to the
    input embeddings at S of every row; a patch ``(row, hook point, positions, value)`` replaces that
    row's output there; ``capture``: hook points whose output at S is kept ({point: [rows, |S|, H]})."""
    S = torch.tensor(list(S), dtype=torch.long, device=backbone.device)
    points = sorted({p[1] for p in patches} | set(capture) | ({"embed"} if noise is not None else set()))
    bs = batch_size or len(x)
    for lo in range(0, len(x), bs):
        hi, edits = min(len(x), lo + bs), {}
        for row, name, pos, value in patches:
            if lo <= row < hi:
                edits.setdefault(name, []).append((row - lo, list(pos), value))

        def edit(name, h, edits=edits):
            new = h
            if name == "embed" and noise is not None:
                new = h.clone()
                new[:, S] += noise.to(h)
            for row, pos, value in edits.get(name, ()):
                new = h.clone() if new is h else new
                new[row, pos] = value.to(h)
            return None if new is h else new

        # at_step: edits installed on the model may act at chosen steps only
        with backbone.at_step(step), backbone.trace(points, edit=edit) as seen:
            logits = backbone.logits(x[lo:hi].to(backbone.device))
        if counts is not None:
            counts["forwards"] += hi - lo
            counts["calls"] += 1
        yield lo, hi, logits, {c: seen[c][:, S].clone() for c in capture}


def _token_logp(lg, gold, lse=None) -> np.ndarray:
    """log p(o_j | x) per row and gold position (float64, [B, |o|]); lg [B, |o|, V] the logits at
    the gold positions (``lse``: their logsumexp, when already known)."""
    lse = lg.logsumexp(-1) if lse is None else lse
    idx = torch.tensor(gold, device=lg.device)[None, :, None].expand(len(lg), -1, 1)
    return (lg.gather(-1, idx).squeeze(-1) - lse).double().cpu().numpy()


def answer_logp(lg, gold, lse=None) -> np.ndarray:
    """log p(o | x) per row: the sum of `_token_logp` (every gold position read from one forward)."""
    return _token_logp(lg, gold, lse).sum(-1)


def _masked(state, prompt: "TracePrompt", mask_id: int) -> np.ndarray:
    """Which gold positions (canvas P .. P+|o|-1) of a state [T] are still masked: bool [|o|]."""
    P = prompt.prompt_length
    return (state[P:P + len(prompt.gold)] == mask_id).numpy()


def _score(bank: float, v, was_masked, now_masked) -> tuple[float, float]:
    """One step of the trained-outputs score: ``v`` [n] the forward's log p(o_j) on a state whose
    gold positions ``was_masked``; -> (log p(o | state), the bank after the commit to ``now_masked``).
    The bank holds the scores of the positions committed so far, each from the forward that committed it."""
    return bank + float(v[was_masked].sum()), bank + float(v[was_masked & ~now_masked].sum())


def _commit(backbone, x, lg, lse, n: int, P: int) -> torch.Tensor:
    """`sampler.generate`'s step (one block, temperature 0, low confidence) on the canvas logits lg:
    the n most confident masked positions of each row take their proposal; the confidence is the
    proposal's probability under the full distribution, as in LLaDA (``lse`` is shared with the score)."""
    canvas = x[:, P:].to(lg.device)
    x0 = propose(lg, backbone.mask_id)
    conf = (lg.gather(-1, x0[..., None]).squeeze(-1).double() - lse.double()).exp()
    commit = commit_mask(conf, canvas == backbone.mask_id, torch.full((len(x),), n, device=lg.device))
    out = x.clone()
    out[:, P:] = torch.where(commit, x0, canvas).cpu()
    return out


def _step(backbone, prompt, x, k, schedule, noise, patches=(), capture=(), batch_size=None, counts=None):
    """The forward of step k < K on rows x [B, T]: (log p(o_j | x) [B, |o|], next states [B, T], captured)."""
    lp, nxt, caps, P, n = [], [], {c: [] for c in capture}, prompt.prompt_length, len(prompt.gold)
    for lo, hi, logits, got in forward_chunks(backbone, x, k, prompt.subject, noise, patches, capture, batch_size, counts):
        lg = logits[:, P:].float()  # the canvas; its first n positions score o
        lse = lg.logsumexp(-1)  # shared by the score and the commit confidences
        lp.append(_token_logp(lg[:, :n], prompt.gold, lse[:, :n]))
        nxt.append(_commit(backbone, x[lo:hi], lg, lse, schedule[k], P))
        for c in capture:
            caps[c].append(got[c])
    return np.concatenate(lp), torch.cat(nxt), {c: torch.cat(v) for c, v in caps.items()}


def _schedule(prompt, steps) -> list[int]:
    return num_transfer_tokens(torch.tensor([prompt.gen_length]), steps)[0].tolist()


class Trajectory(NamedTuple):  # one run of `run_trajectory`
    states: torch.Tensor  # [K+1, T]: x_0 .. x_K
    scores: np.ndarray  # [K+1]: log p(o | x_k), from trained outputs only (module docstring)
    token_logp: np.ndarray  # [K, |o|]: log p(o_j) in the forward of step k, at every gold position
    banks: np.ndarray  # [K+1]: the part of scores[k] banked by positions committed before step k
    captured: dict  # hook point -> [K, |S|, H], from the forwards of steps 0..K-1


@torch.no_grad()
def run_trajectory(backbone, prompt: TracePrompt, *, steps: int = 8, noise=None, patches=None, capture=(),
                   counts=None) -> Trajectory:
    """One trajectory of K forwards. ``noise``: [|S|, H], already scaled (None: the clean run);
    ``patches``: {(hook point, step < K): value [|S|, H]} spliced on S (the point may be
    "embed"); ``capture``: hook points recorded on S at steps 0..K-1."""
    schedule, patches = _schedule(prompt, steps), patches or {}
    if any(s >= steps for _, s in patches):
        raise ValueError(f"patches at steps {sorted({s for _, s in patches})}: a trajectory of {steps} steps has "
                         f"forwards at 0..{steps - 1} only")
    x, states, caps, mid = prompt.ids[None], [prompt.ids], {n: [] for n in capture}, backbone.mask_id
    scores, tok, banks, bank = [], [], [0.0], 0.0
    for k in range(steps):
        pt = [(0, name, prompt.subject, v) for (name, s), v in patches.items() if s == k]
        lp, x, got = _step(backbone, prompt, x, k, schedule, noise, pt, capture, counts=counts)
        score, bank = _score(bank, lp[0], _masked(states[-1], prompt, mid), _masked(x[0], prompt, mid))
        scores.append(score)
        banks.append(bank)
        tok.append(lp[0])
        states.append(x[0])
        for n in capture:
            caps[n].append(got[n][0])
    _check_committed(states[-1], prompt, mid)
    return Trajectory(torch.stack(states), np.array(scores + [bank]), np.stack(tok), np.array(banks),
                      {n: torch.stack(v) for n, v in caps.items()})


def _check_committed(state, prompt, mask_id):
    if _masked(state, prompt, mask_id).any():  # the schedule commits every slot in K steps
        raise RuntimeError("a gold position is still masked after the last step; its score would be undefined")


@torch.no_grad()
def trace_fact(backbone, prompt: TracePrompt, noise, *, steps: int = 8, modules=MODULES, source: str = "clean",
               batch_size: int | None = 64, counts=None):
    """Eq. 3 for one fact: (TIE [M, L, K, K+1], NaN where k' <= k; clean and corrupted Trajectory).

    ``source="corrupted"`` splices the corrupted run's own activations: an identity patch (a check:
    every TIE is 0)."""
    K, L, P, mid = steps, backbone.n_layers, prompt.prompt_length, backbone.mask_id
    names = [point(m, l) for m in modules for l in range(L)]
    clean = run_trajectory(backbone, prompt, steps=K, capture=names if source == "clean" else (), counts=counts)
    corr = run_trajectory(backbone, prompt, steps=K, noise=noise, counts=counts,
                          capture=names if source == "corrupted" else ())
    spliced, schedule = (clean if source == "clean" else corr).captured, _schedule(prompt, K)
    key = lambda state: state[P:].numpy().tobytes()  # noqa: E731 (the prompt is the same in every row)
    # known[k]: a state at step k -> (log p(o_j | state) [|o|], the state it commits to); the corrupted run seeds it
    known = [{key(corr.states[k]): (corr.token_logp[k], corr.states[k + 1])} for k in range(K)]
    logp = np.full((len(names), K, K + 1), np.nan)  # log p(o | x_k'^patch) for the run patched at (name, k)
    live = {}  # (name index, patched step) -> (the run's current state, its bank)
    for k in range(K):
        todo = {}  # distinct states that earlier patch runs reached and nobody has scored yet
        for state, _ in live.values():
            if key(state) not in known[k]:
                todo.setdefault(key(state), state)
        rows = [corr.states[k]] * len(names) + list(todo.values())
        patches = [(i, names[i], prompt.subject, spliced[names[i]][k]) for i in range(len(names))]
        lp, nxt, _ = _step(backbone, prompt, torch.stack(rows), k, schedule, noise, patches,
                           batch_size=batch_size, counts=counts)
        known[k].update((kb, (lp[j], nxt[j])) for j, kb in enumerate(todo, start=len(names)))
        for (i, k0), (state, bank) in live.items():
            v, after = known[k][key(state)]
            logp[i, k0, k], bank = _score(bank, v, _masked(state, prompt, mid), _masked(after, prompt, mid))
            live[i, k0] = (after, bank)
        was = _masked(corr.states[k], prompt, mid)
        for i in range(len(names)):  # runs patched at k start from the corrupted x_k and its bank
            _, bank = _score(corr.banks[k], lp[i], was, _masked(nxt[i], prompt, mid))
            live[i, k] = (nxt[i], bank)
    for (i, k0), (state, bank) in live.items():  # x_K: every gold position is committed, the score is the bank
        _check_committed(state, prompt, mid)
        logp[i, k0, K] = bank
    tie = (logp - corr.scores).reshape(len(modules), L, K, K + 1)
    return tie, clean, corr


def aggregate(tie_by_step: np.ndarray, tau: float) -> np.ndarray:
    """Eq. 4: [..., K, K+1] -> [..., K], weights ∝ exp(-tau (k'-k)) over k' = k+1..K, summing to 1."""
    K = tie_by_step.shape[-2]
    d = np.arange(K + 1)[None, :] - np.arange(K)[:, None]  # k' - k
    w = np.where(d > 0, np.exp(-tau * (d - 1.0)), 0.0)  # shifted by one step: it cancels below
    w /= w.sum(1, keepdims=True)
    return np.nansum(tie_by_step * w, axis=-1)


# ------------------------------------------------------------------------------ entry point
def check_facts(facts, modules):
    """(the facts as a non-empty list, the modules as a tuple of distinct `MODULES` names), else ValueError."""
    facts = [facts] if hasattr(facts, "question") else list(facts)  # one Fact, or many
    if not facts:
        raise ValueError("no facts to trace (empty fact list)")
    modules = tuple(modules)
    if not modules or any(m not in MODULES for m in modules) or len(set(modules)) != len(modules):
        raise ValueError(f"modules={modules}: expected distinct names from {MODULES}")
    return facts, modules


def trace_tie(backbone, facts, *, steps: int = 8, sigma: float | None = None, tau: float = 1.0,
              modules=("resid", "attn", "mlp"), seed: int = 0, batch_size: int | None = 64,
              cache_dir=None) -> TIEResult:
    """The TIE of every (layer, step, module) for each fact (Eqs. 2-4); see the module docstring.

    ``batch_size``: rows per model call (memory only). ``cache_dir``: results are stored there as
    ``tie-<cache_key>.npz`` and loaded instead of recomputed (not for a model with hooks
    installed, e.g. an edit: hooks are not part of the key)."""
    if backbone.is_causal:
        raise ValueError(f"{backbone.name or 'this backbone'} is autoregressive: trace_tie needs a masked-diffusion "
                         "model (ar_positional_trace is the AR trace)")
    facts, modules = check_facts(facts, modules)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps={steps} must be a positive integer")
    if sigma is not None and not sigma >= 0:
        raise ValueError(f"sigma={sigma} must be >= 0")
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau={tau} must be a finite number >= 0")
    settings = {"steps": int(steps), "sigma": sigma, "tau": float(tau), "modules": list(modules), "seed": int(seed)}
    path = None
    if cache_dir is not None:
        if has_hooks(backbone.model):
            warnings.warn("the model has forward hooks installed (an edit?); the TIE trace is not cached")
        else:
            path = Path(cache_dir) / f"tie-{cache_key(backbone, facts, settings)}.npz"
            if path.exists():
                return TIEResult.load(path)
    prompts = [prepare_prompt(backbone, f) for f in facts]
    sig = embedding_sigma(backbone, prompts) if sigma is None else float(sigma)
    K, L, M = int(steps), backbone.n_layers, len(modules)
    counts = {"forwards": 0, "calls": 0}
    out = []
    for f, p in zip(facts, prompts):
        noise = (sig * draw_noise(backbone, f, p, seed)).to(backbone.device)
        out.append(trace_fact(backbone, p, noise, steps=K, modules=modules, batch_size=batch_size, counts=counts))
    tie_by_step, clean, corr = (np.stack(v) for v in zip(*[(t, c.scores, x.scores) for t, c, x in out]))
    counts.update(naive_forwards=len(facts) * (M * L * K * K + 2 * K),  # every run from scratch
                  prefix_shared_forwards=len(facts) * (M * L * K * (K + 1) // 2 + 2 * K))
    subject_tokens = [backbone.tokenizer.convert_ids_to_tokens([int(p.ids[i]) for i in p.subject]) for p in prompts]
    res = TIEResult(modules, L, K, [f.fact_id for f in facts], subject_tokens, aggregate(tie_by_step, tau),
                    tie_by_step, clean, corr, {**settings, "sigma": sig, "sigma_arg": sigma, "backbone": backbone.name},
                    counts)
    if path is not None:
        res.save(path)
    return res


