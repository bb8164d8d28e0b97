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

Only the answer tokens are scored (TOFU-style metrics score the answer text, not the stop
token), so ``n_tokens`` is the answer length without EOS. The context is ``[prompt | answer]``
with nothing after the answer: no EOS, no EOS fill (as in LLaDA's ``get_log_likelihood``). Note
that the tiny MDLMs are trained with ``answer + EOS fill`` and sampled with a fixed-length masked
canvas; scoring without the EOS tail is the standard LLaDA protocol, not the sampler's exact
canvas, and values are comparable only between runs that use this same convention.

Masked diffusion (``backbone.is_causal`` False): Monte-Carlo ELBO
-----------------------------------------------------------------
The prompt is never masked. For an answer of ``L`` tokens, one sample masks exactly ``l``
answer tokens chosen uniformly without replacement and scores
``(L / l) * sum_{masked i} log p(x_i | unmasked)``; the estimate is the mean over ``n_mc``
samples. With ``l`` uniform on ``1..L`` its expectation is the ELBO
``E_l E_S [(L/l) sum_{i in S} log p(x_i | x_{not S})]`` = the expected any-order
autoregressive log-likelihood over uniformly random orders, which by Jensen is a lower bound on
the log of the order-mixture likelihood ``log E_order p_order(answer | question)`` (tight when
the model's conditionals agree across orders, e.g. when they are context-free).

* ``stratified=True`` (default, LLaDA-style): one uniform offset ``u`` per example and
  ``l_j = floor((u + j) / n_mc * L) + 1`` for ``j = 0..n_mc-1``: the mask counts are spread
  evenly over ``1..L`` (systematic sampling of ``t = l / L``). Each stratum has equal
  probability, so the mean is unbiased. (LLaDA's own ``forward_process`` draws an integer
  offset ``k`` and rounds ``linspace(k, k + (n-1) L/n)`` half-to-even, so when ``L/n`` has a
  fractional .5 the counts are not uniform over 1..L: for ``L=4, n_mc=8`` they are 1,2,3,4 with
  frequencies 1/8, 3/8, 1/8, 3/8 -- a small bias. The continuous offset avoids that.)
* ``balanced`` (default: on with ``stratified``): the positions are balanced across the samples
  too. One uniform permutation of the answer positions is drawn per example and sample ``j``
  masks a window of ``l_j`` consecutive entries of it, the windows laid end to end around the
  permutation; every position is then masked by about the same number of samples (weighted by
  ``L / l_j``), instead of some positions by many samples and others by none. A window of a
  uniform permutation is a uniform ``l_j``-subset, so each sample has exactly the distribution
  above and the estimate stays unbiased; only the samples' errors become negatively correlated
  (systematic sampling of the positions).
* ``stratified=False``: each sample draws ``l`` uniformly from ``1..L`` and its own uniform
  subset of positions, independently of the others (plain i.i.d.; ``balanced`` off by default).

Variance: a sample's variance is the spread of ``E[sample | l]`` over ``l`` (between) plus the
spread over which ``l`` tokens are masked (within). Stratification removes most of the between
part (all of it when ``L`` divides ``n_mc``) and leaves the within part unchanged, so it helps
most when the expected value depends strongly on how much answer context is visible (trained
models) and hardly at all for a model whose predictions ignore context. Balancing the positions
attacks the within part: a sample with few masked tokens weighs each by ``L / l``, and its error
is how far those tokens are from the answer's average, which the other samples' windows, covering
the remaining positions, partly cancel. `mc_variance` computes the variances of the estimators
with independent positions (``balanced=False``) exactly from `elbo_terms`; the balanced
estimator's variance is measured (``python -m timerome.bench likelihood``).

``stderr`` is the naive standard error of the mean over the ``n_mc`` samples
(``std(ddof=1) / sqrt(n_mc)``; NaN for ``n_mc == 1``). For the stratified estimator it ignores
the stratification, so it usually over-states the error.

Random numbers: every example gets its own ``torch.Generator`` seeded from a hash of
``(seed, question, answer)``. An example's estimate is therefore a deterministic function of
``(backbone, question, answer, n_mc, seed, stratified)``: it does not depend on the other
examples, its position in the list, or ``batch_size`` (up to float round-off from different
padding). Two backbones with the same tokenizer (e.g. a model and its edited copy) see the same
masks for the same example -- common random numbers, which lowers the variance of differences.
Duplicated (question, answer) pairs get identical estimates.

Causal backbones (``is_causal`` True): the exact teacher-forced log-probability
``sum_j log p(a_j | prompt, a_<j)``, where logits at position ``i`` predict token ``i + 1`` (the
AR convention; `Backbone.logits` only re-aligns shifted *diffusion* models). ``n_mc``, ``seed``
and ``stratified`` are ignored and ``stderr`` is 0.

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

import hashlib
import itertools
import json
import math
from typing import NamedTuple, Sequence

import torch

__all__ = ["AnswerLogprob", "answer_logprob", "answer_logprob_details", "exact_elbo", "encode_example",
           "elbo_terms", "mc_variance", "mask_counts", "sample_masks"]


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


def _example_seed(seed: int, question: str, answer: str) -> int:
    key = json.dumps([int(seed), question, answer], ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


# --- mask sampling -----------------------------------------------------------------------------
def mask_counts(L: int, n_mc: int, generator: torch.Generator, *, stratified: bool = True) -> torch.Tensor:
    """[n_mc] numbers of masked answer tokens, each in 1..L (see the module docstring)."""
    if stratified:
        u = torch.rand((), generator=generator, dtype=torch.float64)
        t = (u + torch.arange(n_mc, dtype=torch.float64)) / n_mc  # one point in each of n_mc strata
        return (t * L).floor().long().clamp_(0, L - 1) + 1
    return torch.randint(1, L + 1, (n_mc,), generator=generator)


def sample_masks(L: int, n_mc: int, generator: torch.Generator, *, stratified: bool = True, balanced: bool | None = None):
    """(counts [n_mc], masks [n_mc, L] bool): sample j masks exactly counts[j] uniform positions.

    ``balanced`` (``None`` follows ``stratified``): the samples mask consecutive windows of one
    uniform permutation of the positions, laid end to end (see the module docstring); otherwise
    each sample draws its own uniform subset.
    """
    counts = mask_counts(L, n_mc, generator, stratified=stratified)
    if stratified if balanced is None else balanced:
        perm = torch.randperm(L, generator=generator)
        start = counts.cumsum(0) - counts
        in_window = (torch.arange(L) - start[:, None]) % L < counts[:, None]  # [n_mc, slot]
        masks = torch.zeros((n_mc, L), dtype=torch.bool)
        masks[:, perm] = in_window  # slot s of the permutation holds position perm[s]
        return counts, masks
    ranks = torch.rand((n_mc, L), generator=generator).argsort(1).argsort(1)  # a uniform permutation per row
    return counts, ranks < counts[:, None]


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

    n_mc, mask_id = int(n_mc), backbone.mask_id
    rows, weights = [], []
    for (p, a), q, ans in zip(enc, questions, answers):
        L = len(a)
        gen = torch.Generator().manual_seed(_example_seed(seed, q, ans))
        counts, masks = sample_masks(L, n_mc, gen, stratified=stratified, balanced=balanced)
        for j in range(n_mc):
            m = masks[j].tolist()
            rows.append(_Row(p + [mask_id if mj else t for t, mj in zip(a, m)],
                             [len(p) + i for i in range(L) if m[i]], [t for t, mj in zip(a, m) if mj]))
            weights.append(L / int(counts[j]))
    samples = (_score_rows(backbone, rows, batch_size, group_by_length)
               * torch.tensor(weights, dtype=torch.float64)).view(N, n_mc)
    total = samples.mean(1)
    stderr = samples.std(1) / math.sqrt(n_mc) if n_mc > 1 else torch.full((N,), math.nan, dtype=torch.float64)
    return AnswerLogprob(total, total / n_tokens, n_tokens, stderr)


def answer_logprob(backbone, questions: Sequence[str], answers: Sequence[str], *, n_mc: int = 16, seed: int = 0,
                   batch_size: int = 32, stratified: bool = True, balanced: bool | None = None,
                   group_by_length: bool = False) -> torch.Tensor:
    """[N] float64 CPU tensor: summed log p(answer | question) in nats (MC ELBO for MDLMs).

    See `answer_logprob_details` and the module docstring.
    """
    return answer_logprob_details(backbone, questions, answers, n_mc=n_mc, seed=seed, batch_size=batch_size,
                                  stratified=stratified, balanced=balanced, group_by_length=group_by_length).total


@torch.no_grad()
def elbo_terms(backbone, question: str, answer: str, *, max_tokens: int = 12, batch_size: int = 64) -> dict:
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
    L = len(a)
    if L > max_tokens:
        raise ValueError(f"answer has {L} tokens; exhaustive enumeration is limited to max_tokens={max_tokens}")
    rows, sizes = [], []
    for l in range(1, L + 1):
        for S in itertools.combinations(range(L), l):
            toks = list(a)
            for i in S:
                toks[i] = backbone.mask_id
            rows.append(_Row(p + toks, [len(p) + i for i in S], [a[i] for i in S]))
            sizes.append(l)
    vals = _score_rows(backbone, rows, batch_size, group_by_length=False)
    sizes = torch.tensor(sizes)
    return {l: vals[sizes == l] * (L / l) for l in range(1, L + 1)}


def mc_variance(terms: dict, n_mc: int, *, stratified: bool = True) -> float:
    """Exact variance of the ``n_mc``-sample estimate, from `elbo_terms` (no sampling noise).

    With ``g(l)`` the mean and ``s2(l)`` the (population) variance of the terms of mask count ``l``:
    i.i.d.: ``(Var_l g + E_l s2) / n``; stratified: ``Var_u(mean_j g(l_j(u))) + E_l s2 / n``,
    the first part integrated exactly over the offset ``u`` (piecewise constant between the
    points where some ``(u + j) L / n`` is an integer).
    """
    L, n = len(terms), int(n_mc)
    g = torch.stack([terms[l].mean() for l in range(1, L + 1)])
    within = float(torch.stack([terms[l].var(unbiased=False) for l in range(1, L + 1)]).mean()) / n
    if not stratified:
        return float(g.var(unbiased=False)) / n + within
    cuts = {0.0, 1.0} | {k * n / L - j for j in range(n) for k in range(L + 1) if 0.0 < k * n / L - j < 1.0}
    cuts = torch.tensor(sorted(cuts), dtype=torch.float64)
    mid, w = (cuts[1:] + cuts[:-1]) / 2, cuts[1:] - cuts[:-1]
    l_idx = ((mid[:, None] + torch.arange(n, dtype=torch.float64)) / n * L).floor().long().clamp_(0, L - 1)
    m = g[l_idx].mean(1)  # the stratified mean of g at each offset
    return float((w * (m - (w * m).sum()) ** 2).sum()) + within


def exact_elbo(backbone, question: str, answer: str, *, max_tokens: int = 12, batch_size: int = 64) -> float:
    """The MDLM ELBO of one answer, exhaustively: (1/L) sum_l (L/l) mean_{|S|=l} sum_{i in S} log p(x_i | x_not S).

    The exact expectation of both Monte-Carlo estimators (see `elbo_terms`; 2^L - 1 rows). For
    causal backbones it returns the exact log-prob.
    """
    if backbone.is_causal:
        return float(answer_logprob(backbone, [question], [answer], batch_size=batch_size)[0])
    terms = elbo_terms(backbone, question, answer, max_tokens=max_tokens, batch_size=batch_size)
    return float(torch.stack([t.mean() for t in terms.values()]).mean())
