"""log p(answer | question) under a backbone: the masked-diffusion ELBO, or exact AR teacher forcing.

Entry points
------------
* `answer_logprob(backbone, questions, answers, *, n_mc=16, seed=0, batch_size=32)` -> float64
  CPU tensor ``[N]`` of summed log-probabilities (nats) of each answer given its question.
* `answer_logprob_details(...)` -> `AnswerLogprob(total, per_token, n_tokens, stderr)`, all ``[N]``
  CPU tensors (float64; ``n_tokens`` int64).
* `exact_elbo(backbone, question, answer)`: the MDLM ELBO computed exhaustively (every mask count
  and every mask subset) -- the expectation that both Monte-Carlo estimators target; for tests and
  small-answer references. `elbo_terms` gives every value a single sample can take, by mask count
  (hence the estimators' exact variances).

Tokenisation (what is scored, what is context)
----------------------------------------------
Exactly as the sampler and `metrics.generate_answers` prompt the backbone::

    prompt = [BOS if the tokenizer has one] + backbone.encode(backbone.prompt(question))
    answer = backbone.encode(backbone.answer_prefix + answer)           # no EOS
    context = [prompt | answer | EOS]   (eos_tail=True, the default)
              [prompt | answer]         (eos_tail=False: LLaDA's ``get_log_likelihood``)

Only the answer tokens are masked and scored (TOFU-style metrics score the answer text, not the
stop token), so ``n_tokens`` is the answer length without EOS. The EOS after the answer is
visible context, never masked: every MDLM of this artifact (the tiny recipe and the paper
profile's fine-tune, `finetune`) is trained on ``answer + EOS fill``, so an answer that simply
stops at the end of the sequence is a context it has never seen. Measured on tiny-mdlm (forget10
facts 0-39): without the tail, the log-probability of a token masked alone with the rest of its
answer visible is far off -- summed over the answer, -9.37 nats with no tail vs -2.83 with one
EOS (-2.02 with four), the spread of the ``l = 1`` samples 18.8 vs 5.0 nats -- so the tail gives a
tighter bound (all 400 forget10 answers: mean ELBO -5.79 vs -10.09 nats) and a 2.1x smaller i.i.d.
standard error (``python -m timerome.bench likelihood [--no-eos-tail]``). ``eos_tail=False`` keeps
LLaDA's protocol for base models scored on text continuations.

Masked diffusion (``backbone.is_causal`` False): Monte-Carlo ELBO
-----------------------------------------------------------------
The prompt is never masked. For an answer of ``L`` tokens, one sample masks exactly ``l``
answer tokens chosen uniformly without replacement and scores
``(L / l) * sum_{masked i} log p(x_i | unmasked)``; the estimate averages ``n_mc`` samples
(weighted by stratum width when stratified, below). With ``l`` uniform on ``1..L`` its expectation is the ELBO
``E_l E_S [(L/l) sum_{i in S} log p(x_i | x_{not S})]`` = the expected any-order
autoregressive log-likelihood over uniformly random orders, which by Jensen is a lower bound on
the log of the order-mixture likelihood ``log E_order p_order(answer | question)`` (tight when
the model's conditionals agree across orders, e.g. when they are context-free).

* ``stratified=True`` (default): stratified sampling of the mask ratio ``t = l / L``. The ratio
  axis ``(0, 1]`` is cut into ``n_mc`` strata ``[e_j, e_{j+1})``; sample ``j`` draws its own uniform
  offset ``u_j`` and sits at ``t_j = e_j + u_j (e_{j+1} - e_j)``, ``l_j = floor(t_j L) + 1``, and the
  estimate is ``sum_j (e_{j+1} - e_j) * (L / l_j) * sum_{masked i} log p(...)``: each stratum is
  sampled uniformly and weighted by its probability, so the estimate is unbiased, and a model
  whose sample value does not depend on ``l`` (context-free, equal token probabilities) is still
  scored exactly. ``shared_offset=True``: one offset ``u`` for all strata (LLaDA's systematic
  sampling: its ``forward_process`` draws one integer offset and spreads the counts evenly). The
  expected score typically falls as ``t`` grows (less of the answer visible), and a shared
  offset moves every sample the same way along that trend, so their errors add up; independent
  offsets let them cancel (tiny-mdlm, 400 forget10 answers, 20 seeds: SE/i.i.d. 0.655 vs 0.686).
  ``strata=None``: even strata ``e_j = j / n_mc``. (LLaDA rounds ``linspace(k, k + (n-1) L/n)``
  half-to-even, so when ``L/n`` has a fractional .5 its counts are not uniform over 1..L: for
  ``L=4, n_mc=8`` they are 1,2,3,4 with frequencies 1/8, 3/8, 1/8, 3/8 -- a small bias; the
  continuous offsets avoid that.) ``strata=(a, b)`` (default `DEFAULT_STRATA` = (0.6, 0.8)): the
  ``e_j`` are the ``j / n_mc`` quantiles of a Beta(a, b) density, i.e. a Neyman-style allocation.
  Why: a sample with few masked tokens scores few tokens and weighs each by ``L / l``, so its
  spread is by far the largest (on tiny-mdlm's forget10 answers, ``L`` about 40, the mean
  per-sample variance at ``l = 1`` is ~40x that at ``l = 20``), and near ``t = 1`` the expected value
  changes fastest as the last context tokens disappear; the U-shaped Beta(0.6, 0.8) puts more,
  narrower strata at both ends and fewer, wider ones in the middle. The parameters were chosen
  from per-count variances of tiny-mdlm on forget10 facts 100-199 (a in 0.5-0.6, b in 0.8-1.0
  are equally good, also with independent offsets); ``python -m timerome.bench likelihood``
  measures every 100-fact block of forget10.
* ``balanced`` (default: on with ``stratified``): the positions are balanced across the samples
  too. One uniform permutation of the answer positions is drawn per example and sample ``j``
  masks a window of ``l_j`` consecutive entries of it, the windows laid end to end around the
  permutation; every position is then masked by about the same number of samples (weighted by
  ``L / l_j``), instead of some positions by many samples and others by none. A window of a
  uniform permutation is a uniform ``l_j``-subset, so each sample has exactly the distribution
  above and the estimate stays unbiased; only the samples' errors become negatively correlated
  (systematic sampling of the positions).
* ``stratified=False``: each sample draws ``l`` uniformly from ``1..L`` and its own uniform
  subset of positions, independently of the others (plain i.i.d.; ``balanced`` off by default;
  ``strata`` unused).

Variance: a sample's variance is the spread of ``E[sample | l]`` over ``l`` (between) plus the
spread over which ``l`` tokens are masked (within). Even strata remove most of the between part
(all of it when ``L`` divides ``n_mc``) and leave the within part unchanged, so they help most
when the expected value depends strongly on how much answer context is visible (trained models)
and hardly at all for a model whose predictions ignore context; the Beta strata also cut the
within part by giving the high-variance ends more samples. Balancing the positions
attacks the within part: a sample with few masked tokens weighs each by ``L / l``, and its error
is how far those tokens are from the answer's average, which the other samples' windows, covering
the remaining positions, partly cancel. `mc_variance` computes the variances of the estimators
with independent positions (``balanced=False``) exactly from `elbo_terms`; the balanced
estimator's variance is measured (``python -m timerome.bench likelihood``).

``stderr`` is the naive standard error of the weighted mean over the ``n_mc`` samples,
``sqrt(n/(n-1) * sum_j w_j^2 (Y_j - total)^2)`` with ``w_j`` the stratum widths (``1/n`` for
i.i.d. and even strata: ``std(ddof=1) / sqrt(n_mc)``; NaN for ``n_mc == 1``). It ignores the
stratification, so it usually over-states the error.

Random numbers: every example gets its own ``torch.Generator`` seeded from a hash of
``(seed, question, answer)``. An example's estimate is therefore a deterministic function of
``(backbone, question, answer, n_mc, seed)`` and the estimator options: it does not depend on the other
examples, its position in the list, or ``batch_size`` (up to float round-off from different
padding). Two backbones with the same tokenizer (e.g. a model and its edited copy) see the same
masks for the same example -- common random numbers, which lowers the variance of differences.
Duplicated (question, answer) pairs get identical estimates.

Causal backbones (``is_causal`` True): the exact teacher-forced log-probability
``sum_j log p(a_j | prompt, a_<j)``, where logits at position ``i`` predict token ``i + 1`` (the
AR convention; `Backbone.logits` only re-aligns shifted *diffusion* models). ``n_mc``, ``seed``, the
estimator options and ``eos_tail`` (nothing after the answer changes its causal scores) are ignored
and ``stderr`` is 0.

Batching and padding
--------------------
Each (example, sample) pair is one row; rows are sorted by length and run ``batch_size`` rows
per forward. Rows are left-padded with the pad id and an ``attention_mask`` marks the padding,
as `sampler.left_pad` does for generation; the embedded TinyLM makes padding invisible (padding
keys are masked out and positions count real tokens only). For backbones whose remote code
ignores ``attention_mask`` pass ``group_by_length=True``: each forward then holds rows of a single
length only, no padding at all, and no attention mask is passed.

Everything runs under ``torch.no_grad``. Log-softmax is taken in float32 from the backbone's
logits; sums and means are float64; all returned tensors live on the CPU.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
from typing import NamedTuple, Sequence

import numpy as np
import torch

__all__ = ["AnswerLogprob", "answer_logprob", "answer_logprob_details", "exact_elbo", "encode_example",
           "elbo_terms", "mc_variance", "mask_counts", "sample_masks", "strata_edges", "answer_tail", "DEFAULT_STRATA"]


class AnswerLogprob(NamedTuple):
    total: torch.Tensor  # [N] float64: estimate of log p(answer | question), nats (ELBO for MDLMs)
    per_token: torch.Tensor  # [N] float64: total / n_tokens
    n_tokens: torch.Tensor  # [N] int64: answer tokens scored (no EOS)
    stderr: torch.Tensor  # [N] float64: Monte-Carlo standard error of `total` (0 for causal backbones)


# --- tokenisation ------------------------------------------------------------------------------
def encode_example(backbone, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) exactly as the backbone is prompted; the answer has no EOS."""
    prompt = backbone.prompt_ids(question)
    ans = list(backbone.encode(backbone.answer_prefix + answer))
    if not ans:
        raise ValueError(f"answer {answer!r} encodes to no tokens (answer_prefix={backbone.answer_prefix!r})")
    return prompt, ans


def answer_tail(backbone, eos_tail: bool = True) -> list[int]:
    """The visible, unscored context after the answer: ``[EOS]`` with ``eos_tail``, else nothing."""
    if not eos_tail or backbone.is_causal:  # causal: nothing after the answer can change its scores
        return []
    if backbone.eos_id is None:
        raise ValueError(f"{backbone.name or 'backbone'} has no EOS token: score with eos_tail=False")
    return [int(backbone.eos_id)]


def _example_seed(seed: int, question: str, answer: str) -> int:
    key = json.dumps([int(seed), question, answer], ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


# --- mask sampling -----------------------------------------------------------------------------
DEFAULT_STRATA = (0.6, 0.8)  # Beta(a, b) whose quantiles cut the mask-ratio strata (module docstring)


@functools.lru_cache(maxsize=64)
def _strata_edges(n_mc: int, strata) -> torch.Tensor:
    if strata is None:
        return torch.arange(n_mc + 1, dtype=torch.float64) / n_mc
    a, b = (float(x) for x in strata)
    if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
        raise ValueError(f"strata={strata!r}: Beta parameters (a, b) must be finite and > 0 (or None for even strata)")
    from scipy.special import betaincinv  # the Beta quantile function
    e = torch.as_tensor(betaincinv(a, b, np.arange(n_mc + 1) / n_mc), dtype=torch.float64)
    e[0], e[-1] = 0.0, 1.0
    if not bool((e[1:] > e[:-1]).all()):
        raise ValueError(f"strata={strata!r}: the Beta quantiles for n_mc={n_mc} are not strictly increasing")
    return e


def strata_edges(n_mc: int, strata=DEFAULT_STRATA) -> torch.Tensor:
    """[n_mc + 1] float64 mask-ratio stratum edges from 0 to 1 (``strata=None``: even, j / n_mc)."""
    return _strata_edges(int(n_mc), None if strata is None else tuple(strata)).clone()


def mask_counts(L: int, n_mc: int, generator: torch.Generator, *, stratified: bool = True,
                strata=DEFAULT_STRATA, shared_offset: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts [n_mc] in 1..L, weights [n_mc] float64 summing to 1): the estimate is
    ``sum_j weights[j] * (L / counts[j]) * sum_{masked i} log p`` (see the module docstring).

    Stratified: one uniform offset per stratum, or with ``shared_offset`` one for all of them
    (LLaDA's systematic sampling)."""
    if stratified:
        e = strata_edges(n_mc, strata)
        w = torch.full((n_mc,), 1.0 / n_mc, dtype=torch.float64) if strata is None else e[1:] - e[:-1]
        u = torch.rand(() if shared_offset else (n_mc,), generator=generator, dtype=torch.float64)
        t = e[:-1] + u * w
        return (t * L).floor().long().clamp_(0, L - 1) + 1, w
    return torch.randint(1, L + 1, (n_mc,), generator=generator), torch.full((n_mc,), 1.0 / n_mc, dtype=torch.float64)


def sample_masks(L: int, n_mc: int, generator: torch.Generator, *, stratified: bool = True, balanced: bool | None = None,
                 strata=DEFAULT_STRATA, shared_offset: bool = False):
    """(counts [n_mc], weights [n_mc], masks [n_mc, L] bool): sample j masks exactly counts[j] uniform
    positions; counts and weights as `mask_counts`.

    ``balanced`` (``None`` follows ``stratified``): the samples mask consecutive windows of one
    uniform permutation of the positions, laid end to end (see the module docstring); otherwise
    each sample draws its own uniform subset.
    """
    counts, weights = mask_counts(L, n_mc, generator, stratified=stratified, strata=strata, shared_offset=shared_offset)
    if stratified if balanced is None else balanced:
        perm = torch.randperm(L, generator=generator)
        start = counts.cumsum(0) - counts
        in_window = (torch.arange(L) - start[:, None]) % L < counts[:, None]  # [n_mc, slot]
        masks = torch.zeros((n_mc, L), dtype=torch.bool)
        masks[:, perm] = in_window  # slot s of the permutation holds position perm[s]
        return counts, weights, masks
    ranks = torch.rand((n_mc, L), generator=generator).argsort(1).argsort(1)  # a uniform permutation per row
    return counts, weights, ranks < counts[:, None]


# --- batched scoring ---------------------------------------------------------------------------
class _Row(NamedTuple):
    tokens: list  # model input (mask ids already in place), unpadded
    pos: list  # positions (in the unpadded row) whose logits are read
    target: list  # the token id each of those positions scores


def _batches(rows, batch_size: int, group_by_length: bool):
    order = sorted(range(len(rows)), key=lambda r: len(rows[r].tokens))  # stable: deterministic
    start = 0
    while start < len(order):
        stop = min(start + batch_size, len(order))
        if group_by_length:
            n0 = len(rows[order[start]].tokens)
            stop = next((k for k in range(start, stop) if len(rows[order[k]].tokens) != n0), stop)
        yield order[start:stop]
        start = stop


def _score_rows(backbone, rows: list[_Row], batch_size: int, group_by_length: bool) -> torch.Tensor:
    """[R] float64: sum over each row's scored positions of log p(target)."""
    out = torch.zeros(len(rows), dtype=torch.float64)
    device, pad = backbone.device, backbone.pad_id
    for idx in _batches(rows, batch_size, group_by_length):
        T = max(len(rows[r].tokens) for r in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        att = torch.zeros((len(idx), T), dtype=torch.long)
        b_rows, b_pos, b_tgt, owner = [], [], [], []
        for b, r in enumerate(idx):
            row = rows[r]
            off = T - len(row.tokens)  # left padding
            ids[b, off:] = torch.as_tensor(row.tokens, dtype=torch.long)
            att[b, off:] = 1
            b_rows += [b] * len(row.pos)
            b_pos += [off + p for p in row.pos]
            b_tgt += row.target
            owner += [r] * len(row.pos)
        sel = backbone.logits_at(ids.to(device), None if group_by_length else att.to(device), b_rows, b_pos)
        lp = torch.log_softmax(sel.float(), dim=-1)
        lp = lp.gather(1, torch.as_tensor(b_tgt, device=lp.device)[:, None]).squeeze(1)
        out.index_add_(0, torch.as_tensor(owner), lp.double().cpu())
    return out


def _check_args(questions, answers, n_mc, batch_size):
    if isinstance(questions, str) or isinstance(answers, str):
        raise TypeError("questions and answers must be sequences of strings, not a single string")
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    if int(n_mc) < 1:
        raise ValueError(f"n_mc={n_mc} must be >= 1")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")


# --- public API --------------------------------------------------------------------------------
@torch.no_grad()
def answer_logprob_details(backbone, questions: Sequence[str], answers: Sequence[str], *, n_mc: int = 16,
                           seed: int = 0, batch_size: int = 32, stratified: bool = True, balanced: bool | None = None,
                           strata=DEFAULT_STRATA, shared_offset: bool = False, eos_tail: bool = True,
                           group_by_length: bool = False) -> AnswerLogprob:
    """Per example: log p(answer | question) (MC ELBO for MDLMs, exact for causal LMs) and friends.

    ``batch_size`` is the number of rows per forward (a row is one (example, MC sample) pair for
    MDLMs, one example for causal LMs). See the module docstring for tokenisation, the estimator,
    seeding and padding.
    """
    _check_args(questions, answers, n_mc, batch_size)
    N = len(questions)
    enc = [encode_example(backbone, q, a) for q, a in zip(questions, answers)]
    n_tokens = torch.tensor([len(a) for _, a in enc], dtype=torch.long)
    if N == 0:
        z = torch.zeros(0, dtype=torch.float64)
        return AnswerLogprob(z, z.clone(), n_tokens, z.clone())

    if backbone.is_causal:
        rows = []
        for p, a in enc:
            if not p:
                raise ValueError("a causal backbone needs a non-empty prompt (no BOS and an empty prompt)")
            rows.append(_Row(p + a, list(range(len(p) - 1, len(p) + len(a) - 1)), a))
        total = _score_rows(backbone, rows, batch_size, group_by_length)
        return AnswerLogprob(total, total / n_tokens, n_tokens, torch.zeros(N, dtype=torch.float64))

    n_mc, mask_id, tail = int(n_mc), backbone.mask_id, answer_tail(backbone, eos_tail)
    rows, factors, weights = [], [], []
    for (p, a), q, ans in zip(enc, questions, answers):
        L = len(a)
        gen = torch.Generator().manual_seed(_example_seed(seed, q, ans))
        counts, w, masks = sample_masks(L, n_mc, gen, stratified=stratified, balanced=balanced, strata=strata,
                                        shared_offset=shared_offset)
        for j in range(n_mc):
            m = masks[j].tolist()
            rows.append(_Row(p + [mask_id if mj else t for t, mj in zip(a, m)] + tail,
                             [len(p) + i for i in range(L) if m[i]], [t for t, mj in zip(a, m) if mj]))
            factors.append(L / int(counts[j]))
        weights.append(w)
    samples = (_score_rows(backbone, rows, batch_size, group_by_length)
               * torch.tensor(factors, dtype=torch.float64)).view(N, n_mc)  # each an unbiased estimate of g(l_j)
    weights = torch.stack(weights)  # [N, n_mc], rows sum to 1
    total = (weights * samples).sum(1)
    if n_mc > 1:
        stderr = (n_mc / (n_mc - 1) * (weights ** 2 * (samples - total[:, None]) ** 2).sum(1)).sqrt()
    else:
        stderr = torch.full((N,), math.nan, dtype=torch.float64)
    return AnswerLogprob(total, total / n_tokens, n_tokens, stderr)


def answer_logprob(backbone, questions: Sequence[str], answers: Sequence[str], *, n_mc: int = 16, seed: int = 0,
                   batch_size: int = 32, stratified: bool = True, balanced: bool | None = None,
                   strata=DEFAULT_STRATA, shared_offset: bool = False, eos_tail: bool = True,
                   group_by_length: bool = False) -> torch.Tensor:
    """[N] float64 CPU tensor: summed log p(answer | question) in nats (MC ELBO for MDLMs).

    See `answer_logprob_details` and the module docstring.
    """
    return answer_logprob_details(backbone, questions, answers, n_mc=n_mc, seed=seed, batch_size=batch_size,
                                  stratified=stratified, balanced=balanced, strata=strata,
                                  shared_offset=shared_offset, eos_tail=eos_tail,
                                  group_by_length=group_by_length).total


@torch.no_grad()
def elbo_terms(backbone, question: str, answer: str, *, max_tokens: int = 12, batch_size: int = 64,
               eos_tail: bool = True) -> dict:
    """Every value one MDLM Monte-Carlo sample can take, by mask count: ``{l: [C(L, l)] float64}``.

    ``terms[l][k]`` is ``(L / l) * sum_{i in S_k} log p(x_i | x_not S_k)`` for the k-th subset
    ``S_k`` of size ``l`` (``itertools.combinations`` order). 2^L - 1 rows, so answers are limited to
    ``max_tokens`` tokens. Both estimators draw ``l`` with uniform marginal on 1..L and ``S``
    uniform given ``l``, so ``mean_l mean_k terms[l][k]`` is their exact expectation (`exact_elbo`)
    and the spread within / between the ``l`` gives their exact variances.
    """
    if backbone.is_causal:
        raise ValueError("elbo_terms is for masked-diffusion backbones")
    p, a = encode_example(backbone, question, answer)
    tail, L = answer_tail(backbone, eos_tail), len(a)
    if L > max_tokens:
        raise ValueError(f"answer has {L} tokens; exhaustive enumeration is limited to max_tokens={max_tokens}")
    rows, sizes = [], []
    for l in range(1, L + 1):
        for S in itertools.combinations(range(L), l):
            toks = list(a)
            for i in S:
                toks[i] = backbone.mask_id
            rows.append(_Row(p + toks + tail, [len(p) + i for i in S], [a[i] for i in S]))
            sizes.append(l)
    vals = _score_rows(backbone, rows, batch_size, group_by_length=False)
    sizes = torch.tensor(sizes)
    return {l: vals[sizes == l] * (L / l) for l in range(1, L + 1)}


def mc_variance(terms: dict, n_mc: int, *, stratified: bool = True, strata=DEFAULT_STRATA,
                shared_offset: bool = False) -> float:
    """Exact variance of the ``n_mc``-sample estimate with independent positions (``balanced=False``),
    from `elbo_terms` (no sampling noise).

    With ``g(l)`` the mean and ``s2(l)`` the (population) variance of the terms of mask count ``l``:
    i.i.d.: ``(Var_l g + E_l s2) / n``. Stratified with widths ``w_j``, one offset per stratum:
    ``sum_j w_j^2 (Var_j g + E_j s2)``, moments over the counts that stratum ``j``'s ratios map
    to; with ``shared_offset``: ``Var_u(sum_j w_j g(l_j(u))) + E_u sum_j w_j^2 s2(l_j(u))``,
    integrated exactly over the offset ``u`` (piecewise constant between the points where some
    ``t_j(u) L`` is an integer).
    """
    L, n = len(terms), int(n_mc)
    g = torch.stack([terms[l].mean() for l in range(1, L + 1)])
    s2 = torch.stack([terms[l].var(unbiased=False) for l in range(1, L + 1)])
    if not stratified:
        return float(g.var(unbiased=False) + s2.mean()) / n
    e = strata_edges(n, strata)
    w = e[1:] - e[:-1]
    k = torch.arange(L + 1, dtype=torch.float64) / L  # ratios where the count changes
    if not shared_offset:  # p[j, l]: probability that stratum j's ratio t gives count l + 1
        lo, hi = torch.maximum(e[:-1, None], k[None, :-1]), torch.minimum(e[1:, None], k[None, 1:])
        p = (hi - lo).clamp_(min=0) / w[:, None]
        mean = p @ g
        var = (p * (g[None, :] - mean[:, None]) ** 2).sum(1)
        return float((w ** 2 * (var + p @ s2)).sum())
    cuts = ((k[None, :] - e[:-1, None]) / w[:, None]).flatten()  # offsets where l_j(u) changes
    cuts = torch.cat([torch.tensor([0.0, 1.0], dtype=torch.float64), cuts[(cuts > 0) & (cuts < 1)]]).unique()
    mid, width = (cuts[1:] + cuts[:-1]) / 2, cuts[1:] - cuts[:-1]
    l_idx = ((e[:-1] + mid[:, None] * w) * L).floor().long().clamp_(0, L - 1)  # [piece, stratum]
    m = (w * g[l_idx]).sum(1)  # the estimate's conditional mean at each offset
    within = (width * (w ** 2 * s2[l_idx]).sum(1)).sum()
    return float((width * (m - (width * m).sum()) ** 2).sum() + within)


def exact_elbo(backbone, question: str, answer: str, *, max_tokens: int = 12, batch_size: int = 64,
               eos_tail: bool = True) -> float:
    """The MDLM ELBO of one answer, exhaustively: (1/L) sum_l (L/l) mean_{|S|=l} sum_{i in S} log p(x_i | x_not S).

    The exact expectation of both Monte-Carlo estimators (see `elbo_terms`; 2^L - 1 rows). For
    causal backbones it returns the exact log-prob.
    """
    if backbone.is_causal:
        return float(answer_logprob(backbone, [question], [answer], batch_size=batch_size)[0])
    terms = elbo_terms(backbone, question, answer, max_tokens=max_tokens, batch_size=batch_size, eos_tail=eos_tail)
    return float(torch.stack([t.mean() for t in terms.values()]).mean())
