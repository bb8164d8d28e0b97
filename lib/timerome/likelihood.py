"""log p(answer | question) under a backbone: the masked-diffusion ELBO, or exact AR teacher forcing.

`answer_logprob(backbone, questions, answers, options=None, **fields)` -> ``[N]`` float64 CPU tensor
of summed log-probabilities (nats); `answer_logprob_details` -> `AnswerLogprob(total, per_token,
n_tokens, stderr)`. `ELBOOptions` holds the estimator's settings; keyword ``fields`` override it.
`exact_elbo` / `elbo_terms` enumerate every mask of a short answer: the estimators' exact
expectation and, through `mc_variance`, their exact variance with independent positions.

Tokenisation: the model sees ``[prompt | answer | EOS]``, ``backbone.prompt_ids(question)`` (BOS +
prompt, as the sampler prompts) then ``backbone.answer_ids(answer)`` (``answer_prefix`` + answer).
Only answer tokens are masked and scored (``n_tokens`` excludes the EOS). The EOS is visible context
because this artifact's MDLMs are trained on ``answer + EOS fill``: an answer that ends the sequence
is a context they never saw, and scores a looser, noisier bound (compare
``python -m timerome.bench likelihood`` with ``--no-eos-tail``). ``eos_tail=False`` is LLaDA's
``get_log_likelihood`` protocol, for base models scored on text continuations.

MDLMs: the prompt is never masked. A sample masks ``l`` of the ``L`` answer tokens uniformly without
replacement and scores ``(L / l) * sum_{masked i} log p(x_i | unmasked)``; with ``l`` uniform on
``1..L`` its expectation is the ELBO (the expected any-order autoregressive log-likelihood).

* ``stratified`` (default): the mask ratio ``t = l / L`` in (0, 1] is cut into ``n_mc`` strata; sample
  ``j`` draws ``t_j`` uniformly in its stratum (``l_j = floor(t_j L) + 1``) and is weighted by the
  stratum's width, so the estimate stays unbiased and loses most of the between-count variance.
  ``strata=(a, b)`` (`DEFAULT_STRATA`) puts the edges at Beta(a, b) quantiles: U-shaped, so more and
  narrower strata sit where samples vary most (few masked tokens, each weighted by ``L / l``) and
  where the expected value moves fastest (the last context tokens vanish). ``strata=None``: even
  strata. ``shared_offset``: one offset for all strata (LLaDA's systematic sampling), whose errors
  then move together along the trend in ``t`` instead of cancelling. (LLaDA rounds its counts
  half-to-even: ``L=4, n_mc=8`` gives counts 1..4 with frequencies 1/8, 3/8, 1/8, 3/8; continuous
  offsets avoid that bias.)
* ``balanced`` (default: follows ``stratified``): sample ``j`` masks a window of ``l_j`` consecutive
  entries of one uniform permutation of the positions, the windows laid end to end, so every position
  is masked about equally often. A window is a uniform ``l_j``-subset (still unbiased); the samples'
  within-count errors become negatively correlated. ``stratified=False``: i.i.d. counts and subsets.

The defaults were chosen on measured standard errors: ``python -m timerome.bench likelihood`` measures
each variant against i.i.d. per ``--block`` of forget10 facts (the Beta parameters were fitted on facts
100-199). ``stderr`` is the naive standard error ``sqrt(n/(n-1) sum_j w_j^2 (Y_j - total)^2)`` (NaN
for ``n_mc == 1``); it ignores the stratification, so it usually over-states the error.

Step clock (``step_clock=K``, default None). A scoring forward is no denoising step, so a
step-restricted edit (`memory.install` with ``steps``) does not fire in it. With ``step_clock`` each
row instead runs at the step of a K-step sampler (one block over the answer, the schedule of
`sampler.num_transfer_tokens`) during which that many answer positions are still masked
(`denoising_step`): ``backbone.step`` is a tuple with one step per batch row, and such an edit acts
on the rows at its steps only. Unrestricted edits and the unedited model score the same either way.

Causal backbones: exact teacher forcing ``sum_j log p(a_j | prompt, a_<j)``; the sampling options and
``eos_tail`` are ignored and ``stderr`` is 0.

Seeding: each example has its own ``torch.Generator``, seeded by `rng.stable_seed` of ``(seed,
question, answer)``. Its estimate does not depend on the other examples, their order or
``batch_size`` (up to float round-off), and two backbones with one tokenizer (a model and its edited
copy) see the same masks: common random numbers, for lower-variance differences.

Batching: one row per (example, sample), sorted by length, ``batch_size`` rows per forward, left-padded
with an ``attention_mask``; ``group_by_length=True`` runs single-length batches without padding or
mask (for remote code that ignores ``attention_mask``). Runs under ``torch.no_grad``; log-softmax in
float32, sums in float64, results on the CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import numbers
from typing import NamedTuple, Sequence

import numpy as np
import torch

from .rng import stable_seed

__all__ = ["AnswerLogprob", "ELBOOptions", "answer_logprob", "answer_logprob_details", "exact_elbo", "encode_example",
           "denoising_step", "elbo_terms", "mc_variance", "mask_counts", "sample_masks", "strata_edges", "answer_tail", "DEFAULT_STRATA"]

DEFAULT_STRATA = (0.6, 0.8)  # Beta(a, b) whose quantiles cut the mask-ratio strata (module docstring)


class AnswerLogprob(NamedTuple):
    total: torch.Tensor  # [N] float64: estimate of log p(answer | question), nats (ELBO for MDLMs)
    per_token: torch.Tensor  # [N] float64: total / n_tokens
    n_tokens: torch.Tensor  # [N] int64: answer tokens scored (no EOS)
    stderr: torch.Tensor  # [N] float64: Monte-Carlo standard error of `total` (0 for causal backbones)


@dataclasses.dataclass(frozen=True)
class ELBOOptions:
    """Settings of `answer_logprob` (module docstring); validated on construction."""
    n_mc: int = 16  # Monte-Carlo samples per example (MDLMs)
    seed: int = 0
    batch_size: int = 32  # rows per forward
    stratified: bool = True
    balanced: bool | None = None  # None: follows stratified
    strata: tuple[float, float] | None = DEFAULT_STRATA  # Beta(a, b) strata edges; None: even strata
    shared_offset: bool = False
    eos_tail: bool = True
    group_by_length: bool = False
    step_clock: int | None = None  # K: run each row at the denoising step of its mask count (module docstring)

    def __post_init__(self):
        def bad(name, what, error=TypeError):
            raise error(f"ELBOOptions.{name}={getattr(self, name)!r}: {what}")

        for name, lo in (("n_mc", 1), ("seed", None), ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                bad(name, "must be an int")
            if lo is not None and v < lo:
                bad(name, f"must be >= {lo}", ValueError)
            object.__setattr__(self, name, int(v))
        for name in ("stratified", "balanced", "shared_offset", "eos_tail", "group_by_length"):
            v = getattr(self, name)
            if not (isinstance(v, (bool, np.bool_)) or v is None and name == "balanced"):
                bad(name, "must be a bool" + (" or None" if name == "balanced" else ""))
            object.__setattr__(self, name, None if v is None else bool(v))
        if self.step_clock is not None:
            v = self.step_clock
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                bad("step_clock", "must be None or an int (the sampler's number of steps)")
            if v < 1:
                bad("step_clock", "must be >= 1", ValueError)
            object.__setattr__(self, "step_clock", int(v))
        if self.strata is not None:
            s = () if isinstance(self.strata, str) or not np.iterable(self.strata) else tuple(self.strata)
            if len(s) != 2 or not all(isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) for x in s):
                bad("strata", "must be None or a pair (a, b) of Beta parameters")
            if not all(math.isfinite(x) and x > 0 for x in s):
                bad("strata", "Beta parameters (a, b) must be finite and > 0", ValueError)
            object.__setattr__(self, "strata", tuple(float(x) for x in s))

    def replace(self, **fields) -> "ELBOOptions":
        """A copy with ``fields`` changed; an unknown field name is a TypeError."""
        valid = [f.name for f in dataclasses.fields(self)]
        unknown = [k for k in fields if k not in valid]
        if unknown:
            raise TypeError(f"unknown ELBOOptions field(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
        return dataclasses.replace(self, **fields) if fields else self


def _options(options, fields) -> ELBOOptions:
    if options is None:
        options = ELBOOptions()
    elif not isinstance(options, ELBOOptions):
        raise TypeError(f"options must be an ELBOOptions or None, not {type(options).__name__}")
    return options.replace(**fields)


# --- tokenisation ------------------------------------------------------------------------------
def encode_example(backbone, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) exactly as the backbone is prompted; the answer has no EOS."""
    return backbone.prompt_ids(question), backbone.answer_ids(answer)


def answer_tail(backbone, eos_tail: bool = True) -> list[int]:
    """The visible, unscored context after the answer: ``[EOS]`` with ``eos_tail``, else nothing."""
    if not eos_tail or backbone.is_causal:  # causal: nothing after the answer can change its scores
        return []
    if backbone.eos_id is None:
        raise ValueError(f"{backbone.name or 'backbone'} has no EOS token: score with eos_tail=False")
    return [int(backbone.eos_id)]


def denoising_step(masked: int, length: int, steps: int) -> int:
    """The step k of a ``steps``-step sampler over ``length`` answer positions (one block, commits
    per step from `sampler.num_transfer_tokens`) whose forwards see ``masked`` of them still masked
    or, between two steps' counts, the step that is committing down through it: the largest k whose
    input has at least ``masked`` masks. ``masked = length`` is step 0."""
    from .sampler import num_transfer_tokens

    if not 1 <= masked <= length or steps < 1:
        raise ValueError(f"denoising_step: need 1 <= masked ({masked}) <= length ({length}) and steps ({steps}) >= 1")
    commits = num_transfer_tokens(torch.tensor([length]), steps)[0].tolist()
    left, k = length, 0  # masks at the input of step k
    for k, n in enumerate(commits):
        if left - n < masked:
            return k
        left -= n
    return k



# --- mask sampling -----------------------------------------------------------------------------
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
    step: int | None = None  # the denoising step the row runs at (`ELBOOptions.step_clock`)


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
        steps = tuple(rows[r].step for r in idx)
        clock = backbone.at_step(steps) if steps[0] is not None else contextlib.nullcontext()
        with clock:  # one step per batch row, read by step-restricted edits
            sel = backbone.logits_at(ids.to(device), None if group_by_length else att.to(device), b_rows, b_pos)
        lp = torch.log_softmax(sel.float(), dim=-1)
        lp = lp.gather(1, torch.as_tensor(b_tgt, device=lp.device)[:, None]).squeeze(1)
        out.index_add_(0, torch.as_tensor(owner), lp.double().cpu())
    return out


def _check_args(questions, answers):
    if isinstance(questions, str) or isinstance(answers, str):
        raise TypeError("questions and answers must be sequences of strings, not a single string")
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")


# --- public API --------------------------------------------------------------------------------
@torch.no_grad()
def answer_logprob_details(backbone, questions: Sequence[str], answers: Sequence[str],
                           options: ELBOOptions | None = None, **fields) -> AnswerLogprob:
    """Per example: log p(answer | question) (MC ELBO for MDLMs, exact for causal LMs) and friends.

    ``options`` (default ``ELBOOptions()``) with ``fields`` replaced, e.g. ``n_mc=8, seed=1``.
    ``batch_size`` is the number of rows per forward (a row is one (example, MC sample) pair for
    MDLMs, one example for causal LMs). See the module docstring.
    """
    opt = _options(options, fields)
    _check_args(questions, answers)
    N, n_mc, batch_size, by_len = len(questions), opt.n_mc, opt.batch_size, opt.group_by_length
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
        total = _score_rows(backbone, rows, batch_size, by_len)
        return AnswerLogprob(total, total / n_tokens, n_tokens, torch.zeros(N, dtype=torch.float64))

    mask_id, tail = backbone.mask_id, answer_tail(backbone, opt.eos_tail)
    rows, factors, weights = [], [], []
    for (p, a), q, ans in zip(enc, questions, answers):
        L = len(a)
        gen = torch.Generator().manual_seed(stable_seed(opt.seed, q, ans, bits=63))
        counts, w, masks = sample_masks(L, n_mc, gen, stratified=opt.stratified, balanced=opt.balanced,
                                        strata=opt.strata, shared_offset=opt.shared_offset)
        for j in range(n_mc):
            m = masks[j].tolist()
            rows.append(_Row(p + [mask_id if mj else t for t, mj in zip(a, m)] + tail,
                             [len(p) + i for i in range(L) if m[i]], [t for t, mj in zip(a, m) if mj],
                             None if opt.step_clock is None else denoising_step(int(counts[j]), L, opt.step_clock)))
            factors.append(L / int(counts[j]))
        weights.append(w)
    samples = (_score_rows(backbone, rows, batch_size, by_len)
               * torch.tensor(factors, dtype=torch.float64)).view(N, n_mc)  # each an unbiased estimate of g(l_j)
    weights = torch.stack(weights)  # [N, n_mc], rows sum to 1
    total = (weights * samples).sum(1)
    if n_mc > 1:
        stderr = (n_mc / (n_mc - 1) * (weights ** 2 * (samples - total[:, None]) ** 2).sum(1)).sqrt()
    else:
        stderr = torch.full((N,), math.nan, dtype=torch.float64)
    return AnswerLogprob(total, total / n_tokens, n_tokens, stderr)


def answer_logprob(backbone, questions: Sequence[str], answers: Sequence[str], options: ELBOOptions | None = None,
                   **fields) -> torch.Tensor:
    """[N] float64 CPU tensor: summed log p(answer | question) in nats (MC ELBO for MDLMs); the
    ``total`` of `answer_logprob_details` (same arguments)."""
    return answer_logprob_details(backbone, questions, answers, options, **fields).total


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
