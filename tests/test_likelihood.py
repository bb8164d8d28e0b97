"""timerome.likelihood: MDLM Monte-Carlo ELBO and exact AR log-probabilities of answers."""
import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import make_tiny_backbone
from timerome.backbones import Backbone
from timerome.families import FAMILIES
from timerome.likelihood import (answer_logprob, answer_logprob_details, answer_tail, elbo_terms, encode_example,
                                 exact_elbo, mask_counts, mc_variance, sample_masks, strata_edges)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- toy tokenizer and toy models with known conditionals --------------------------------------------
class ToyTokenizer:
    """Word-level tokenizer over a handful of words (enough for Backbone and the likelihood code)."""

    def __init__(self, words=("q", "r", "s", "a", "b", "c", "d"), bos=True):
        self.vocab = ["<pad>", "<eos>", "<mask>"] + (["<bos>"] if bos else []) + list(words)
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_token_id, self.eos_token_id, self.mask_token_id = 0, 1, 2
        self.bos_token_id = 3 if bos else None

    def __len__(self):
        return len(self.vocab)

    def encode(self, text, add_special_tokens=False):
        return [self.ids[w] for w in text.split()]


class _MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.down = nn.Linear(d, d)


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn, self.mlp = nn.Identity(), _MLP(d)


class BagModel(nn.Module):
    """logits = table + (bag of visible, non-mask tokens) @ W, the same at every position.

    W = 0: context-free conditionals, so answer tokens are independent and the ELBO is exact.
    """

    def __init__(self, table, W, mask_id, d=4):
        super().__init__()
        self.embed, self.blocks = nn.Embedding(len(table), d), nn.ModuleList([_Block(d)])
        self.register_buffer("table", table.float())
        self.register_buffer("W", W.float())
        self.mask_id = mask_id

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        visible = input_ids != self.mask_id
        if attention_mask is not None:
            visible &= attention_mask.bool()
        bag = (F.one_hot(input_ids, len(self.table)).float() * visible[..., None]).sum(1)
        return (self.table + bag @ self.W)[:, None, :].expand(B, T, -1)


def toy_backbone(table=None, W=None, seed=0):
    tok = ToyTokenizer()
    V = len(tok)
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(V, generator=g) if table is None else table
    W = torch.zeros(V, V) if W is None else W
    model = BagModel(table, W, tok.mask_token_id)
    return Backbone(model, tok, FAMILIES["tiny"], mask_id=tok.mask_token_id, name="toy",
                    prompt_template="q {question} r", answer_prefix=" ")


def sharp_tiny_backbone(tokenizer, seed=0, causal=False, block="llama"):
    """A random TinyLM with larger weights, so its conditionals are peaked and context-dependent."""
    bb = make_tiny_backbone(tokenizer, seed=seed, causal=causal, block=block)
    g = torch.Generator().manual_seed(seed + 1)
    for m in bb.model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.5
    return bb


Q, A = ["who wrote the red book ?", "carol sings"], ["alice wrote the red book in paris .", "songs about snow"]


# --- tokenisation and the exact context the model sees -----------------------------------------------
@pytest.mark.parametrize("eos_tail", [True, False])
def test_context_is_prompt_answer_then_eos_tail(tiny_tokenizer, eos_tail):
    bb = make_tiny_backbone(tiny_tokenizer)
    seen = []
    orig = bb.logits_at
    bb.logits_at = lambda ids, att, r, c: (seen.append((ids.clone(), None if att is None else att.clone(), list(c))),
                                           orig(ids, att, r, c))[1]
    r = answer_logprob_details(bb, Q[:1], A[:1], n_mc=8, batch_size=64, eos_tail=eos_tail)
    p, a = encode_example(bb, Q[0], A[0])
    tail = [tiny_tokenizer.eos_token_id] if eos_tail else []
    assert answer_tail(bb, eos_tail) == tail
    assert p[0] == tiny_tokenizer.bos_token_id and p[1:] == bb.encode(bb.prompt(Q[0]))
    assert a == bb.encode(bb.answer_prefix + A[0]) and tiny_tokenizer.eos_token_id not in a
    assert int(r.n_tokens[0]) == len(a)
    (ids, att, cols), = seen
    assert ids.shape == (8, len(p) + len(a) + len(tail)) and bool(att.all())  # [prompt | answer | tail]
    assert (ids[:, :len(p)] == torch.tensor(p)).all()  # the prompt is never masked
    assert (ids[:, len(p) + len(a):] == torch.tensor(tail, dtype=torch.long)).all()  # nor the tail
    assert all(len(p) <= c < len(p) + len(a) for c in cols)  # only answer positions are scored
    ans = ids[:, len(p):len(p) + len(a)]
    masked = ans == bb.mask_id
    assert ((ans == torch.tensor(a)) | masked).all()
    assert (masked.sum(1) >= 1).all() and (masked.sum(1) <= len(a)).all()
    assert torch.allclose(r.per_token, r.total / r.n_tokens)


def test_eos_tail_changes_mdlm_scores_not_causal_ones(tiny_tokenizer):
    bb = sharp_tiny_backbone(tiny_tokenizer)
    with_tail, without = (answer_logprob(bb, Q, A, n_mc=4, seed=0, eos_tail=t) for t in (True, False))
    assert not torch.allclose(with_tail, without)  # the EOS is context the bidirectional model reads
    ar = make_tiny_backbone(tiny_tokenizer, causal=True)
    assert torch.equal(answer_logprob(ar, Q, A, eos_tail=True), answer_logprob(ar, Q, A, eos_tail=False))
    assert answer_tail(ar) == []
    toy = toy_backbone()
    toy.tokenizer.eos_token_id = None  # a tokenizer without EOS: the tail cannot be built
    with pytest.raises(ValueError, match="no EOS token.*eos_tail=False"):
        answer_logprob(toy, ["s"], ["a b"])
    assert answer_logprob(toy, ["s"], ["a b"], eos_tail=False).shape == (1,)


def test_mask_counts_stratified_and_iid():
    g = torch.Generator().manual_seed(0)
    for L, n in [(1, 5), (4, 8), (5, 16), (7, 3), (20, 16)]:
        for shared in (True, False):  # even strata; a shared offset is LLaDA's evenly spread counts
            c, w = mask_counts(L, n, g, stratified=True, strata=None, shared_offset=shared)
            assert c.min() >= 1 and c.max() <= L and len(c) == n
            assert torch.equal(w, torch.full((n,), 1 / n, dtype=torch.float64))
            if n % L == 0:  # every count appears exactly n / L times
                assert torch.equal(torch.bincount(c, minlength=L + 1)[1:], torch.full((L,), n // L))
            else:  # evenly spread: a count's ratios overlap at most ceil(n / L) (+1 with own offsets) strata
                assert torch.bincount(c).max() <= math.ceil(n / L) + (not shared)
        c, w = mask_counts(L, n, g)  # default Beta strata: weights are the stratum widths
        assert c.min() >= 1 and c.max() <= L and len(c) == n
        e = strata_edges(n)
        assert torch.equal(w, e[1:] - e[:-1]) and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
        c, w = mask_counts(L, n, g, stratified=False)
        assert c.min() >= 1 and c.max() <= L and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    counts, _, masks = sample_masks(6, 50, g, stratified=False)
    assert torch.equal(masks.sum(1), counts)
    # one offset per stratum (default) vs one shared offset: every ratio stays inside its stratum;
    # a shared offset puts every sample at the same relative place, independent ones do not
    e = strata_edges(16)
    rel = {}
    for shared in (False, True):
        g = torch.Generator().manual_seed(2)
        r = []
        for _ in range(200):
            c, _ = mask_counts(1000, 16, g, shared_offset=shared)
            t = (c - 1).double() / 1000  # floor(t L) / L: within 1/L below the sampled ratio
            assert ((t >= e[:-1] - 1e-3) & (t < e[1:])).all()
            r.append((t - e[:-1]) / (e[1:] - e[:-1]))
        rel[shared] = torch.stack(r)
    assert float(rel[True].std(1).max()) < 0.1 < float(rel[False].std(1).min())
    # the unbiasedness argument: E[sum_j w_j 1(l_j = l)] = 1 / L for every count l, for every strata
    for strata, shared in itertools.product((None, (0.6, 0.8), (2.0, 0.5)), (False, True)):
        g = torch.Generator().manual_seed(1)
        mass = torch.zeros(6, dtype=torch.float64)
        for _ in range(4000):
            c, w = mask_counts(5, 3, g, strata=strata, shared_offset=shared)
            mass.index_add_(0, c, w)
        assert (mass[1:] / 4000 - 0.2).abs().max() < 0.015, (strata, shared)
    # the default strata are narrower at both ends of the mask ratio than in the middle
    w = strata_edges(16).diff()
    assert w[0] < 1 / 16 and w[-1] < 1 / 16 and w[7] > 1 / 16
    with pytest.raises(ValueError, match="Beta parameters"):
        mask_counts(5, 4, g, strata=(0.0, 1.0))


def test_balanced_masks_are_uniform_windows_that_cover_evenly():
    g = torch.Generator().manual_seed(0)
    L, n = 7, 16
    hits = torch.zeros(n, L)
    for _ in range(3000):
        counts, w, masks = sample_masks(L, n, g, strata=None)  # stratified, balanced by default
        assert torch.equal(masks.sum(1), counts)
        hits += masks
        # weighted coverage sum_j (L / l_j) [i masked by j]: as even as the window sizes allow
        cover = (masks * (L / counts)[:, None]).sum(0)
        assert float(cover.max() - cover.min()) <= 2 * L
    # each sample alone masks uniformly random positions (so the estimator stays unbiased)
    freq = hits / hits.sum(1, keepdim=True)
    assert float((freq - 1 / L).abs().max()) < 0.02
    # and balanced=False keeps independent subsets
    counts, _, masks = sample_masks(L, n, g, balanced=False)
    assert torch.equal(masks.sum(1), counts)


def test_balanced_positions_cut_the_within_count_variance():
    # context-free model with unequal token probabilities: the expected value does not depend on
    # l (nothing for stratification to remove), all the variance is which tokens get masked
    bb = toy_backbone(seed=3)
    q, ans = "s", "a d b c a b"
    terms = elbo_terms(bb, q, ans)
    ref = exact_elbo(bb, q, ans)
    v = {b: torch.stack([answer_logprob(bb, [q], [ans], n_mc=16, seed=k, balanced=b)[0] for k in range(300)])
         for b in (True, False)}
    assert 0.6 < float(v[False].var()) / mc_variance(terms, 16, stratified=True) < 1.6
    assert float(v[True].var()) < 0.5 * float(v[False].var())
    assert abs(float(v[True].mean()) - ref) < 4 * float(v[True].std()) / math.sqrt(300) + 1e-9


# --- exactness on models with closed-form answers ----------------------------------------------------
def test_context_free_model_equal_probs_is_exact_for_every_mask_pattern():
    tok = ToyTokenizer()
    table = torch.zeros(len(tok))
    table[[tok.ids[w] for w in "abc"]] = 1.5  # a, b, c equally likely; the rest less
    bb = toy_backbone(table=table)
    logp = torch.log_softmax(table.double(), 0)
    answers = ["a b c a", "c", "b b a c a b"]
    closed = torch.tensor([sum(float(logp[tok.ids[w]]) for w in ans.split()) for ans in answers], dtype=torch.float64)
    for n_mc, seed, strat in [(1, 0, True), (3, 5, False), (16, 1, True), (7, 2, False)]:
        r = answer_logprob_details(bb, ["s"] * 3, answers, n_mc=n_mc, seed=seed, stratified=strat)
        assert torch.allclose(r.total, closed, atol=1e-5, rtol=0)
        if n_mc > 1:
            assert r.stderr.max() < 1e-5


def test_context_free_model_unequal_probs_expectation_is_exact():
    bb = toy_backbone(seed=3)  # random table: tokens have different probabilities
    logp = torch.log_softmax(bb.model.table.double(), 0)
    ans = "a d b c"
    closed = sum(float(logp[bb.tokenizer.ids[w]]) for w in ans.split())
    assert exact_elbo(bb, "s", ans) == pytest.approx(closed, abs=1e-5)  # the ELBO is tight here
    r = answer_logprob_details(bb, ["s"], [ans], n_mc=256, seed=0)
    assert abs(float(r.total[0]) - closed) < 5 * float(r.stderr[0]) + 1e-6


def _cond(bb, prompt, toks):
    """log p(. | context) at every answer position of [prompt | toks | EOS] (toks may hold mask
    ids): the context the estimator scores in (its default eos_tail)."""
    ids = torch.tensor([prompt + toks + answer_tail(bb)])
    return torch.log_softmax(bb.logits(ids)[0, len(prompt):].double(), -1)


def test_elbo_is_the_any_order_ar_average_and_a_strict_lower_bound():
    tok = ToyTokenizer()
    g = torch.Generator().manual_seed(0)
    bb = toy_backbone(W=torch.randn(len(tok), len(tok), generator=g) * 1.5, seed=1)  # context-dependent
    M = bb.mask_id
    # L = 3: ELBO == mean over the 6 orders of the order's AR log-likelihood
    p, a = encode_example(bb, "s", "a c b")
    ao = []
    for order in itertools.permutations(range(3)):
        cur, s = [M] * 3, 0.0
        for i in order:
            s += float(_cond(bb, p, cur)[i, a[i]])
            cur[i] = a[i]
        ao.append(s)
    elbo = exact_elbo(bb, "s", "a c b")
    assert elbo == pytest.approx(sum(ao) / 6, abs=1e-5)
    # L = 2: p_mix(x, y) = (p(x|MM) p(y|xM) + p(y|MM) p(x|My)) / 2 is a normalised distribution over
    # V^2, and ELBO = mean of the two orders' log-likelihoods <= log p_mix (Jensen), strictly here.
    p, a = encode_example(bb, "s", "b d")
    V = len(tok)
    both = _cond(bb, p, [M, M]).exp()  # [2, V]
    first_known = torch.stack([_cond(bb, p, [x, M])[1].exp() for x in range(V)])  # [x, y] = p(y | x M)
    second_known = torch.stack([_cond(bb, p, [M, y])[0].exp() for y in range(V)]).T  # [x, y] = p(x | M y)
    p_mix = 0.5 * (both[0][:, None] * first_known + both[1][None, :] * second_known)
    assert float(p_mix.sum()) == pytest.approx(1.0, abs=1e-9)
    elbo = exact_elbo(bb, "s", "b d")
    log_mix = math.log(float(p_mix[a[0], a[1]]))
    assert elbo < log_mix - 1e-3
    o1 = math.log(float(both[0, a[0]] * first_known[a[0], a[1]]))
    o2 = math.log(float(both[1, a[1]] * second_known[a[0], a[1]]))
    assert elbo == pytest.approx((o1 + o2) / 2, abs=1e-5)
    # the Monte-Carlo estimate agrees with the exhaustive ELBO
    r = answer_logprob_details(bb, ["s"], ["b d"], n_mc=64, seed=3)
    assert abs(float(r.total[0]) - elbo) < 5 * float(r.stderr[0]) + 1e-6


# --- unbiasedness and variance ----------------------------------------------------------------------
def test_estimators_unbiased_with_the_exact_variance(tiny_tokenizer):
    bb = sharp_tiny_backbone(tiny_tokenizer, seed=3)
    q, ans = "who wrote the red book ?", "alice wrote"
    terms = elbo_terms(bb, q, ans)
    assert len(terms) == len(encode_example(bb, q, ans)[1]) == 6
    ref = exact_elbo(bb, q, ans)
    for strat, bal, shared in ((True, False, False), (True, False, True), (False, False, False), (True, True, False)):
        v = torch.stack([answer_logprob(bb, [q], [ans], n_mc=16, seed=k, stratified=strat, balanced=bal,
                                        shared_offset=shared)[0] for k in range(200)])
        se = float(v.std()) / math.sqrt(len(v))
        assert abs(float(v.mean()) - ref) < 4 * se, (strat, bal, shared, float(v.mean()), ref, se)
        if not bal:  # mc_variance is exact for independent positions
            assert 0.6 < float(v.var()) / mc_variance(terms, 16, stratified=strat, shared_offset=shared) < 1.6
    # a random model's predictions barely depend on how much answer is visible: little to stratify
    assert mc_variance(terms, 16, stratified=True) <= mc_variance(terms, 16, stratified=False)


def _copy_model(seed, jitter):
    """Context-dependent toy: every visible answer-vocabulary token raises all of them, so the
    expected sample value depends strongly on the mask count l (like a model that memorised)."""
    tok = ToyTokenizer()
    V, ab = len(tok), [tok.ids[w] for w in "abcd"]
    g = torch.Generator().manual_seed(seed)
    table = torch.zeros(V)
    table[ab] = jitter * torch.randn(4, generator=g)
    W = torch.zeros(V, V)
    W[torch.tensor(ab)[:, None], torch.tensor(ab)[None, :]] = 1.0
    return toy_backbone(table=table, W=W)


def test_stratification_removes_the_between_count_variance():
    # symmetric answer tokens: given l every subset scores the same, so with even strata and
    # L | n_mc the stratified estimator has zero variance while the i.i.d. one does not
    bb = _copy_model(0, jitter=0.0)
    terms = elbo_terms(bb, "s", "a b c d")
    assert all(float(t.std(unbiased=False)) < 1e-6 for t in terms.values())
    for shared in (False, True):  # L | n_mc: each even stratum maps to one count, whatever the offsets
        assert mc_variance(terms, 8, strata=None, shared_offset=shared) < 1e-10 < mc_variance(terms, 8, stratified=False)
    strat = torch.stack([answer_logprob(bb, ["s"], ["a b c d"], n_mc=8, seed=k, strata=None)[0] for k in range(30)])
    iid = torch.stack([answer_logprob(bb, ["s"], ["a b c d"], n_mc=8, seed=k, stratified=False)[0] for k in range(30)])
    assert float(strat.std()) < 1e-5 < float(iid.std())
    assert abs(float(strat.mean()) - exact_elbo(bb, "s", "a b c d")) < 1e-5
    # jittered tokens, L not dividing n_mc: even and Beta strata both far below the i.i.d.
    # variance, and mc_variance predicts each of them (and the i.i.d. one)
    bb = _copy_model(1, jitter=0.5)
    terms = elbo_terms(bb, "s", "a b c d a")
    ref = exact_elbo(bb, "s", "a b c d a")
    designs = {"iid": dict(stratified=False), "even": dict(strata=None), "beta": dict(),
               "even_shared": dict(strata=None, shared_offset=True), "beta_shared": dict(shared_offset=True)}
    for name, kw in designs.items():
        v = torch.stack([answer_logprob(bb, ["s"], ["a b c d a"], n_mc=16, seed=k, balanced=False, **kw)[0]
                         for k in range(200)])
        predicted = mc_variance(terms, 16, **kw)
        assert 0.6 < float(v.var()) / predicted < 1.6, name
        assert abs(float(v.mean()) - ref) < 4 * float(v.std()) / math.sqrt(200) + 1e-9, name
        if name != "iid":
            assert predicted < 0.5 * mc_variance(terms, 16, stratified=False), name


# --- determinism, batching and padding invariance ----------------------------------------------------
def test_same_seed_bitwise_identical_and_seed_matters(tiny_tokenizer):
    bb = sharp_tiny_backbone(tiny_tokenizer)
    a = answer_logprob_details(bb, Q, A, n_mc=8, seed=7)
    b = answer_logprob_details(bb, Q, A, n_mc=8, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.total, answer_logprob(bb, Q, A, n_mc=8, seed=8))
    assert a.total.dtype == torch.float64 and a.total.device.type == "cpu"


@pytest.mark.parametrize("block", ["llama", "bert"])
def test_batching_order_and_padding_are_invisible(tiny_tokenizer, block):
    bb = sharp_tiny_backbone(tiny_tokenizer, block=block)
    long_q = " ".join(["alice wrote the red book in paris . bob painted a blue sea near rome ."] * 2)
    qs, ans = [Q[1], long_q, Q[0]], [A[1], "bob", A[0]]
    ref = answer_logprob(bb, qs, ans, n_mc=6, seed=1, batch_size=64)
    for kw in (dict(batch_size=1), dict(batch_size=5), dict(batch_size=64, group_by_length=True)):
        # float32 logits summed in a different padding: agreement to float32 precision of the total
        assert torch.allclose(answer_logprob(bb, qs, ans, n_mc=6, seed=1, **kw), ref, atol=1e-5, rtol=1e-7), kw
    # alone, or in another position: the per-example RNG makes the estimate the same
    alone = answer_logprob(bb, [Q[1]], [A[1]], n_mc=6, seed=1, batch_size=64)
    assert abs(float(alone[0] - ref[0])) < 1e-5
    rev = answer_logprob(bb, qs[::-1], ans[::-1], n_mc=6, seed=1)
    assert torch.allclose(rev.flip(0), ref, atol=1e-5, rtol=0)


def test_padding_changes_no_real_logit(tiny_tokenizer):
    bb = sharp_tiny_backbone(tiny_tokenizer)
    p, a = encode_example(bb, Q[0], A[0])
    ids = torch.tensor([p + a])
    padded = torch.cat([torch.full((1, 13), bb.pad_id), ids], 1)
    att = torch.cat([torch.zeros(1, 13, dtype=torch.long), torch.ones_like(ids)], 1)
    assert torch.allclose(bb.logits(padded, att)[:, 13:], bb.logits(ids), atol=1e-5)


# --- causal backbones: exact teacher forcing ---------------------------------------------------------
def test_causal_is_exact_teacher_forcing(tiny_tokenizer):
    bb = sharp_tiny_backbone(tiny_tokenizer, causal=True)
    qs, ans = Q + ["who ?"], A + ["carol sings songs about snow near rome"]
    r = answer_logprob_details(bb, qs, ans, batch_size=2)
    for k, (q, a_text) in enumerate(zip(qs, ans)):
        p, a = encode_example(bb, q, a_text)
        lp = torch.log_softmax(bb.logits(torch.tensor([p + a]))[0].double(), -1)
        manual = sum(float(lp[len(p) + j - 1, a[j]]) for j in range(len(a)))
        assert float(r.total[k]) == pytest.approx(manual, abs=1e-4)
    assert torch.equal(r.stderr, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(answer_logprob(bb, qs, ans, n_mc=1, seed=9, batch_size=64), r.total, atol=1e-5, rtol=0)


# --- errors and edge cases ---------------------------------------------------------------------------
def test_errors_and_edge_cases():
    bb = toy_backbone()
    with pytest.raises(ValueError, match="2 questions but 1 answers"):
        answer_logprob(bb, ["s", "s"], ["a"])
    with pytest.raises(TypeError, match="single string"):
        answer_logprob(bb, "s", "a")
    with pytest.raises(ValueError, match="n_mc"):
        answer_logprob(bb, ["s"], ["a"], n_mc=0)
    with pytest.raises(ValueError, match="no tokens"):
        answer_logprob(bb, ["s"], [""])
    with pytest.raises(ValueError, match="max_tokens"):
        exact_elbo(bb, "s", "a b c", max_tokens=2)
    assert answer_logprob(bb, [], []).shape == (0,)
    r = answer_logprob_details(bb, ["s"], ["a b"], n_mc=1)
    assert math.isnan(float(r.stderr[0])) and math.isfinite(float(r.total[0]))


def test_stable_seed_is_the_old_example_seed():
    import hashlib
    import json

    from timerome.rng import stable_seed

    for q, a in (("who wrote it ?", "alice"), ("Qui a écrit « Ré » ?", "Zoë Müller 王")):
        old = int.from_bytes(hashlib.blake2b(json.dumps([3, q, a], ensure_ascii=False).encode(), digest_size=8).digest(),
                             "little") & (2**63 - 1)
        assert stable_seed(3, q, a, bits=63) == old


def test_elbo_options_validate_and_override():
    from timerome.likelihood import ELBOOptions

    bb = toy_backbone()
    opt = ELBOOptions(n_mc=4, seed=2, strata=[0.5, 1])
    assert opt.strata == (0.5, 1.0) and hash(opt) == hash(ELBOOptions(n_mc=4, seed=2, strata=(0.5, 1.0)))
    assert torch.equal(answer_logprob(bb, ["s"], ["a b"], opt), answer_logprob(bb, ["s"], ["a b"], n_mc=4, seed=2,
                                                                                  strata=(0.5, 1.0)))
    assert torch.equal(answer_logprob(bb, ["s"], ["a b"], opt, seed=5), answer_logprob(bb, ["s"], ["a b"],
                                                                                        opt.replace(seed=5)))
    for kw, err, msg in ((dict(n_mc=0), ValueError, "n_mc=0"), (dict(batch_size=2.0), TypeError, "batch_size=2.0"),
                         (dict(strata=(1.0, math.inf)), ValueError, "strata"), (dict(strata=(1.0,)), TypeError, "strata"),
                         (dict(balanced=1), TypeError, "balanced=1"), (dict(eos_tail=None), TypeError, "eos_tail")):
        with pytest.raises(err, match=msg):
            ELBOOptions(**kw)
    with pytest.raises(TypeError, match="'nmc'.*valid: n_mc, seed"):
        answer_logprob(bb, ["s"], ["a b"], nmc=4)
