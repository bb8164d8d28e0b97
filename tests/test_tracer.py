"""Diffusion-time causal tracing (`timerome.tracer`) on tiny random backbones."""
import math

import numpy as np
import pytest
import torch

from timerome import ar_trace as AR
from timerome import selection as SEL
from timerome import tie_results as R
from timerome import tracer as T
from timerome.data import Fact
from timerome.backbones import point
from timerome.sampler import generate

from conftest import make_tiny_backbone

K = 4  # denoising steps in every test (tiny)
MODULES = ("resid", "attn", "mlp")


def _sharpen(bb, factor=10.0, blocks=3.0):
    """Make a random model input-sensitive and decisive: scale the blocks' matrices (at init their
    updates are too small to move the residual stream, so every answer slot predicts one token) and
    the LM head (clear argmaxes, no near-ties that float round-off could flip)."""
    with torch.no_grad():
        for p in bb.model.blocks.parameters():
            if p.dim() == 2:
                p.mul_(blocks)
        bb.model.lm_head.weight.mul_(factor)
    return bb


def fact(question, answer, subject, index=0, subject_in="question"):
    text = question if subject_in == "question" else answer
    s = text.index(subject)
    return Fact(question=question, answer=answer, subject=subject, subject_rule="given", entity_id=None, split="toy",
                index=index, subject_span=(s, s + len(subject)), subject_in=subject_in)


FACTS = [fact("where was the red book written ?", "paris", "red book", 0),  # answers of 2 tokens: canvas of 6
         fact("who painted a blue sea near rome ?", "bob", "blue sea", 1)]


@pytest.fixture
def bb(tiny_tokenizer):
    return _sharpen(make_tiny_backbone(tiny_tokenizer, layers=2, d=32))


def _count_rows(bb):
    """Wrap bb.logits: returns a dict counting model calls and rows (sequence-forwards)."""
    seen = {"calls": 0, "rows": 0}
    inner = bb.logits

    def logits(ids, attention_mask=None):
        seen["calls"] += 1
        seen["rows"] += ids.shape[0]
        return inner(ids, attention_mask)

    bb.logits = logits
    return seen


# --- a naive reference: one trajectory at a time, from scratch, through sampler.generate -----------
def naive_score(bb, states, prompt, forward):
    """log p(o | x_k') for k' = 0..K by the definition: gold token j read from a fresh forward on the
    last state x_k'' (k'' <= k') in which j was still masked; ``forward(k'', x)`` -> logits."""
    P, n = prompt.prompt_length, len(prompt.gold)
    lp = [torch.log_softmax(forward(k, x)[0, P:P + n].double(), -1) for k, x in enumerate(states[:-1])]
    out = []
    for kp in range(len(states)):
        total = 0.0
        for j in range(n):
            last = max(k for k in range(min(kp, len(lp) - 1) + 1) if states[k][0, P + j] == bb.mask_id)
            total += float(lp[last][j, prompt.gold[j]])
        out.append(total)
    return out


def naive_run(bb, prompt, *, steps=K, noise=None, patch=None, capture=()):
    """-> (states [K+1 tensors], log p(o | x_k) for k = 0..K, {name: [K x [|S|, H]]}).

    Uses `sampler.generate` with hooks keyed on ``backbone.step``; ``patch = (name, k, value)``.
    Scores come from fresh forwards on the states (with the noise, and with the patch in step k's).
    """
    S = list(prompt.subject)
    caps = {n: [] for n in capture}
    states = []

    def fn(name, h):
        new = None
        if name == "embed" and noise is not None:
            new = h.clone()
            new[:, S] = new[:, S] + noise
        if patch is not None and name == patch[0] and bb.step == patch[1]:
            new = h.clone() if new is None else new
            new[:, S] = patch[2]
        if name in caps and bb.step is not None:
            caps[name].append((h if new is None else new)[0, S].clone())
        return new

    def forward(k, x):
        with bb.at_step(k):
            return bb.logits(x)

    names = {"embed", *capture} | ({patch[0]} if patch else set())
    P = prompt.prompt_length
    with bb.trace(names, edit=fn):
        out = generate(bb, prompt.ids[None, :P], gen_length=prompt.gen_length, steps=steps,
                       on_step=lambda k, x: states.append(x.clone()))
        states.append(out)
        assert bb.step is None
        scores = naive_score(bb, states, prompt, forward)
    return states, scores, {n: v[:steps] for n, v in caps.items()}  # (the scoring forwards captured again)


def naive_tie(bb, f, *, sigma, steps=K, modules=MODULES, seed=0):
    """[M, L, K, K+1] Eq. 3 by brute force (NaN where k' <= k)."""
    p = T.prepare_prompt(bb, f)
    noise = sigma * T.draw_noise(bb, f, p, seed)
    names = [point(m, l) for m in modules for l in range(bb.n_layers)]
    _, _, clean = naive_run(bb, p, steps=steps, capture=names)
    _, corr, _ = naive_run(bb, p, steps=steps, noise=noise)
    out = np.full((len(modules), bb.n_layers, steps, steps + 1), np.nan)
    for mi, m in enumerate(modules):
        for l in range(bb.n_layers):
            for k in range(steps):
                name = point(m, l)
                _, pat, _ = naive_run(bb, p, steps=steps, noise=noise, patch=(name, k, clean[name][k]))
                for kp in range(k + 1, steps + 1):
                    out[mi, l, k, kp] = pat[kp] - corr[kp]
    return out


def _weights(steps, tau):
    w = np.zeros((steps, steps + 1))
    for k in range(steps):
        e = np.array([math.exp(-tau * (kp - k)) for kp in range(k + 1, steps + 1)])
        w[k, k + 1:] = e / e.sum()
    return w


# --- tokenisation ----------------------------------------------------------------------------------
def test_subject_positions_cover_the_subject(bb):
    for f in FACTS:
        p = T.prepare_prompt(bb, f)
        ids = p.ids.tolist()
        assert ids[0] == bb.tokenizer.bos_token_id
        assert p.prompt_length == 1 + len(bb.encode(bb.prompt(f.question)))
        text = bb.tokenizer.decode([ids[i] for i in p.subject])
        assert text.strip() == f.subject  # exactly the subject's tokens (a leading space is allowed)
        assert list(p.subject) == list(range(p.subject[0], p.subject[-1] + 1))
        assert p.gold == tuple(bb.encode(bb.answer_prefix + f.answer))
        assert p.gen_length == len(p.gold) + 4 and len(ids) == p.prompt_length + p.gen_length
        assert all(t == bb.mask_id for t in ids[p.prompt_length:])
        assert T.subject_positions(bb, f) == (ids[:p.prompt_length], list(p.subject))
    assert T.prepare_prompt(bb, FACTS[0], gen_length=12).gen_length == 12


def test_trajectory_is_the_samplers_trajectory(bb):
    """run_trajectory commits exactly what sampler.generate commits, clean and corrupted."""
    f = FACTS[0]
    p = T.prepare_prompt(bb, f, gen_length=8)
    noise = 0.5 * T.draw_noise(bb, f, p)
    for nz in (None, noise):
        tr = T.run_trajectory(bb, p, steps=K, noise=nz)
        states, scores, _ = naive_run(bb, p, noise=nz)
        assert torch.equal(tr.states, torch.cat(states))
        np.testing.assert_allclose(tr.scores, scores, atol=1e-5, rtol=0)


# --- sanity: zero effects and exact restoration -----------------------------------------------------
def test_sigma_zero_gives_exactly_zero_tie(bb):
    r = T.trace_tie(bb, FACTS, steps=K, sigma=0.0)
    assert r.settings["sigma"] == 0.0
    assert np.array_equal(r.logp_clean, r.logp_corrupt)
    assert np.all(r.tie == 0)
    finite = r.tie_by_step[~np.isnan(r.tie_by_step)]
    assert finite.size and np.all(finite == 0)


def test_identity_patch_gives_zero_tie(bb):
    for f in FACTS:
        p = T.prepare_prompt(bb, f)
        noise = 1.0 * T.draw_noise(bb, f, p)
        tie, clean, corr = T.trace_fact(bb, p, noise, steps=K, source="corrupted")
        assert not np.array_equal(clean.scores, corr.scores)  # the corruption does something
        finite = tie[~np.isnan(tie)]
        assert finite.size == len(MODULES) * bb.n_layers * K * (K + 1) // 2 and np.all(finite == 0)


def test_splicing_clean_embeddings_restores_the_clean_trajectory(bb):
    f = FACTS[0]
    p = T.prepare_prompt(bb, f, gen_length=8)
    noise = 2.0 * T.draw_noise(bb, f, p)
    clean = T.run_trajectory(bb, p, steps=K, capture=("embed",))
    corr = T.run_trajectory(bb, p, steps=K, noise=noise)
    assert not torch.equal(corr.states[-1], clean.states[-1])  # the corrupted run diverges ...
    patches = {("embed", k): clean.captured["embed"][k] for k in range(K)}  # every forward
    fixed = T.run_trajectory(bb, p, steps=K, noise=noise, patches=patches)
    assert torch.equal(fixed.states, clean.states)  # ... and the clean embeddings of S restore it exactly
    np.testing.assert_array_equal(fixed.scores, clean.scores)


def _garble_unmasked(bb):
    """Replace bb's logits at every unmasked position by fresh random numbers on each call: outputs an
    MDLM was never trained to produce."""
    inner = bb.logits

    def logits(ids, attention_mask=None):
        out = inner(ids, attention_mask)
        garbage = 100 * torch.randn(out.shape, generator=gen).to(out)
        return torch.where((ids == bb.mask_id)[..., None].to(out.device), out, garbage)

    gen = torch.Generator().manual_seed(123)
    bb.logits = logits
    return bb


def test_tie_never_reads_outputs_at_unmasked_positions(bb, tiny_tokenizer):
    """Scores come from trained outputs only: garbling every unmasked position's logits changes nothing."""
    ref = T.trace_tie(bb, FACTS, steps=K, sigma=1.0)
    garbled = _sharpen(make_tiny_backbone(tiny_tokenizer, layers=2, d=32))
    garbled.model.load_state_dict(bb.model.state_dict())
    got = T.trace_tie(_garble_unmasked(garbled), FACTS, steps=K, sigma=1.0)
    np.testing.assert_array_equal(got.tie_by_step, ref.tie_by_step)
    np.testing.assert_array_equal(got.logp_clean, ref.logp_clean)
    np.testing.assert_array_equal(got.logp_corrupt, ref.logp_corrupt)
    assert np.any(np.abs(ref.tie) > 1e-3)


def test_clean_score_is_banked_from_the_committing_forwards(bb):
    """log p(o | x_K) of a fully committed answer is the sum of each gold token's score in the step
    that committed it; log p(o | x_0) reads every token from the first forward."""
    f = FACTS[0]
    p = T.prepare_prompt(bb, f)
    tr = T.run_trajectory(bb, p, steps=K)
    P, n = p.prompt_length, len(p.gold)
    masked = tr.states[:, P:P + n] == bb.mask_id  # [K+1, n]
    at = [int(np.nonzero(masked[:, j].numpy())[0].max()) for j in range(n)]  # the step that committed j
    assert tr.scores[-1] == pytest.approx(sum(tr.token_logp[at[j], j] for j in range(n)), abs=1e-12)
    assert tr.scores[0] == pytest.approx(tr.token_logp[0].sum(), abs=1e-12)
    assert tr.banks[0] == 0 and tr.banks[-1] == tr.scores[-1]
    with pytest.raises(ValueError, match="forwards at 0..3"):
        T.run_trajectory(bb, p, steps=K, patches={("embed", K): torch.zeros(len(p.subject), bb.hidden_size)})


# --- the batched, prefix-sharing tracer equals brute force ------------------------------------------
def test_batched_tracer_equals_naive_reference(bb):
    sigma, tau = 1.0, 0.7
    r = T.trace_tie(bb, FACTS, steps=K, sigma=sigma, tau=tau)
    w = _weights(K, tau)
    for i, f in enumerate(FACTS):
        ref = naive_tie(bb, f, sigma=sigma)
        assert np.array_equal(np.isnan(ref), np.isnan(r.tie_by_step[i]))
        np.testing.assert_allclose(r.tie_by_step[i], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(r.tie[i], np.nansum(ref * w, -1), atol=1e-5, rtol=0)
    assert np.any(np.abs(r.tie) > 1e-3)  # not a vacuous comparison
    # some patch runs left the corrupted trajectory, so the continuation rows were exercised
    L, M, F = bb.n_layers, len(MODULES), len(FACTS)
    assert r.counts["forwards"] > F * (2 * K + M * L * K)


def test_forward_counts_are_exact_and_below_naive(bb):
    seen = _count_rows(bb)
    r = T.trace_tie(bb, FACTS, steps=K, sigma=1.0)
    c = r.counts
    assert c["forwards"] == seen["rows"] and c["calls"] == seen["calls"]
    L, M, F = bb.n_layers, len(MODULES), len(FACTS)
    assert c["naive_forwards"] == F * (M * L * K * K + 2 * K)
    assert c["prefix_shared_forwards"] == F * (M * L * sum(K - k for k in range(K)) + 2 * K)
    assert F * (2 * K + M * L * K) <= c["forwards"] <= c["prefix_shared_forwards"]
    # clean and corrupted runs: one call per forward; patch runs: one call per step, not per trajectory
    assert c["calls"] == F * 3 * K
    small = T.trace_tie(bb, FACTS, steps=K, sigma=1.0, batch_size=4)  # chunked model calls: same values
    np.testing.assert_allclose(small.tie_by_step, r.tie_by_step, atol=1e-5, rtol=0)
    assert small.counts["forwards"] == c["forwards"] and small.counts["calls"] > c["calls"]


def test_noise_is_per_fact_common_random_numbers(bb):
    """A fact's TIE does not depend on the other facts traced with it (sigma fixed)."""
    both = T.trace_tie(bb, FACTS, steps=K, sigma=1.0)
    one = T.trace_tie(bb, FACTS[1:], steps=K, sigma=1.0)
    np.testing.assert_allclose(both.tie[1], one.tie[0], atol=1e-6, rtol=0)
    other_seed = T.trace_tie(bb, FACTS[1:], steps=K, sigma=1.0, seed=1)
    assert not np.array_equal(other_seed.logp_corrupt, one.logp_corrupt)


# --- result object -------------------------------------------------------------------------------
def test_heatmap_shapes_axes_and_aggregation(bb):
    r = T.trace_tie(bb, FACTS, steps=K, sigma=1.0, tau=0.0, modules=("resid", "mlp"))
    L = bb.n_layers
    assert r.modules == ("resid", "mlp") and r.n_layers == L and r.steps == K
    assert r.tie.shape == (2, 2, L, K) and r.tie_by_step.shape == (2, 2, L, K, K + 1)
    assert r.logp_clean.shape == r.logp_corrupt.shape == (2, K + 1)
    for m in r.modules:
        h = r.heatmap(m)
        assert h.shape == (L, K)
        np.testing.assert_allclose(h, r.per_fact(m).mean(0))
        assert np.all(r.heatmap(m, absolute=True) >= np.abs(h) - 1e-12)
    np.testing.assert_array_equal(r.axes["layer"], np.arange(L))
    np.testing.assert_array_equal(r.axes["step"], np.arange(K))
    kp = np.arange(K + 1)
    for k in range(K):  # k' > k only
        assert np.all(np.isnan(r.tie_by_step[..., k, kp <= k])) and not np.any(np.isnan(r.tie_by_step[..., k, kp > k]))
    np.testing.assert_allclose(r.tie, np.nanmean(r.tie_by_step, -1))  # tau = 0: the plain mean
    with pytest.raises(KeyError, match="attn"):
        r.heatmap("attn")
    assert r.subject_tokens[0] and r.settings["sigma"] == 1.0 and r.settings["steps"] == K


def test_aggregation_weights_decay_with_tau():
    tie = np.full((1, 3, 4), np.nan)
    tie[0, 0, 1:] = [1.0, 0.0, 0.0]  # k = 0: only k' = 1 is non-zero
    tie[0, 2, 3] = 5.0  # k = 2: a single k'
    got = T.aggregate(tie, tau=1.0)
    w1 = 1 / (1 + math.exp(-1) + math.exp(-2))
    np.testing.assert_allclose(got[0], [w1, 0.0, 5.0])
    np.testing.assert_allclose(T.aggregate(tie, tau=0.0)[0, 0], 1 / 3)


def test_default_sigma_is_three_subject_embedding_stds(bb):
    r = T.trace_tie(bb, FACTS, steps=2, modules=("resid",))
    emb = torch.cat([bb.embedding.weight.detach()[[int(p.ids[i]) for i in p.subject]]
                     for p in (T.prepare_prompt(bb, f) for f in FACTS)])
    assert r.settings["sigma"] == pytest.approx(3 * float(emb.std())) and r.settings["sigma_arg"] is None


def test_save_load_round_trip(bb, tmp_path):
    r = T.trace_tie(bb, FACTS, steps=K, sigma=1.0)
    path = r.save(tmp_path / "sub" / "trace.npz")
    back = R.TIEResult.load(path)
    for name in ("tie", "tie_by_step", "logp_clean", "logp_corrupt"):
        np.testing.assert_array_equal(getattr(back, name), getattr(r, name))
    for name in ("modules", "n_layers", "steps", "fact_ids", "subject_tokens", "settings", "counts"):
        assert getattr(back, name) == getattr(r, name), name
    np.testing.assert_array_equal(back.heatmap("attn"), r.heatmap("attn"))
    with pytest.raises(ValueError, match="PositionalResult"):
        R.PositionalResult.load(path)


def test_cache_returns_the_same_result_without_recomputing(bb, tmp_path):
    seen = _count_rows(bb)
    kw = dict(steps=K, sigma=1.0, cache_dir=tmp_path)
    first = T.trace_tie(bb, FACTS, **kw)
    n = seen["rows"]
    assert n == first.counts["forwards"]
    again = T.trace_tie(bb, FACTS, **kw)
    assert seen["rows"] == n  # no forward at all
    np.testing.assert_array_equal(again.tie_by_step, first.tie_by_step)
    assert again.counts == first.counts and again.settings == first.settings
    assert len(list(tmp_path.glob("tie-*.npz"))) == 1
    # another setting, another fact list, other weights: recomputed
    T.trace_tie(bb, FACTS, **{**kw, "tau": 0.5})
    assert seen["rows"] > n
    n = seen["rows"]
    T.trace_tie(bb, FACTS[:1], **kw)
    assert seen["rows"] > n
    n = seen["rows"]
    with torch.no_grad():
        bb.model.blocks[0].mlp.down.weight[0, 0] += 1e-3
    T.trace_tie(bb, FACTS, **kw)
    assert seen["rows"] > n
    assert len(list(tmp_path.glob("tie-*.npz"))) == 4


def test_cache_is_bypassed_for_a_hooked_model(bb, tmp_path):
    handle = bb.blocks[0].mlp.register_forward_hook(lambda *a: None)
    try:
        with pytest.warns(UserWarning, match="not cached"):
            T.trace_tie(bb, FACTS[:1], steps=2, sigma=1.0, modules=("resid",), cache_dir=tmp_path)
    finally:
        handle.remove()
    assert not list(tmp_path.glob("*.npz"))


# --- selection (Eq. 5) ---------------------------------------------------------------------------
def _synthetic(tie, modules=MODULES, ids=None):
    F_, M, L, K_ = tie.shape
    return R.TIEResult(modules=tuple(modules), n_layers=L, steps=K_, fact_ids=ids or [f"toy:{i}" for i in range(F_)],
                       subject_tokens=[["x"]] * F_, tie=tie, tie_by_step=np.zeros((F_, M, L, K_, K_ + 1)),
                       logp_clean=np.zeros((F_, K_ + 1)), logp_corrupt=np.zeros((F_, K_ + 1)),
                       settings={"sigma": 1.0}, counts={})


def test_selection_argmax_ranking_paper_and_per_fact():
    rng = np.random.default_rng(0)
    tie = rng.normal(0, 0.1, size=(3, 3, 4, 5))
    tie[:, 1, 2, 3] = [2.0, -3.0, 2.5]  # attn, layer 2, step 3: the largest mean |TIE| (signs differ)
    tie[:, 0, 1, :] += 1.0  # resid layer 1: the best resid layer at every step
    tie[0, 2, 0, 4] = 6.0  # one fact's own best coordinate (mean |TIE| over facts still < 2.5)
    sel = SEL.select_coordinate(_synthetic(tie))
    assert (sel.best.module, sel.best.layer, sel.best.step) == ("attn", 2, 3)
    assert sel.best.score == pytest.approx(2.5)
    assert len(sel.ranking) == 3 * 4 * 5 and sel.ranking[0] == sel.best
    scores = [c.score for c in sel.ranking]
    assert scores == sorted(scores, reverse=True)
    assert {(c.module, c.layer, c.step) for c in sel.ranking} == {(m, l, k) for m in MODULES for l in range(4)
                                                                  for k in range(5)}
    np.testing.assert_allclose(sel.objective, np.abs(tie).mean(0))
    assert (sel.paper.module, sel.paper.layer, sel.paper.step) == ("resid", 1, -1)
    assert sel.paper.score == pytest.approx(sel.objective[0, 1].max())
    assert sel.per_fact[0] == {"fact_id": "toy:0", "module": "mlp", "layer": 0, "step": 4, "tie": 6.0}
    assert (sel.per_fact[1]["module"], sel.per_fact[1]["tie"]) == ("attn", -3.0)
    assert list(sel.frame().columns) == ["module", "layer", "step", "score"]
    assert SEL.select_coordinate(_synthetic(tie[:, :1], modules=("resid",))).paper.layer == 1


def test_beta_penalty_with_neighbours():
    fv = np.zeros((2, 3, 2, 2))
    fv[:, 0, 0, 0] = 2.0  # A: strongest on F_v ...
    fv[:, 2, 1, 1] = 1.5  # B: second
    nb = np.zeros((3, 3, 2, 2))
    nb[:, 0, 0, 0] = -1.0  # ... but A also moves the neighbours
    res, neigh = _synthetic(fv), _synthetic(nb)
    assert res.select().best[:3] == ("resid", 0, 0)
    assert res.select(neigh, beta=0.0).best[:3] == ("resid", 0, 0)
    sel = res.select(neigh, beta=1.0)
    assert sel.best[:3] == ("mlp", 1, 1) and sel.best.score == pytest.approx(1.5) and sel.beta == 1.0
    assert [c for c in sel.ranking if c[:3] == ("resid", 0, 0)][0].score == pytest.approx(1.0)
    np.testing.assert_allclose(SEL.select_coordinate(res, nb, beta=1.0).objective, sel.objective)  # array neighbours
    with pytest.raises(ValueError, match="neighbour set"):
        res.select(beta=0.5)
    with pytest.raises(ValueError, match="shape"):
        res.select(nb[:, :, :1], beta=1.0)
    with pytest.raises(ValueError, match="modules"):
        res.select(_synthetic(nb[:, :1], modules=("attn",)), beta=1.0)


def test_selection_on_a_real_trace_with_neighbours(bb):
    r = T.trace_tie(bb, FACTS[:1], steps=K, sigma=1.0)
    nb = T.trace_tie(bb, FACTS[1:], steps=K, sigma=r.settings["sigma"])
    sel = r.select(nb, beta=0.5)
    obj = np.abs(r.tie).mean(0) - 0.5 * np.abs(nb.tie).mean(0)
    mi, l, k = np.unravel_index(np.argmax(obj), obj.shape)
    assert sel.best[:3] == (MODULES[mi], l, k) and sel.paper.module == "resid"


# --- AR positional trace -------------------------------------------------------------------------
def test_ar_positional_trace_on_a_causal_model(tiny_tokenizer):
    bb = _sharpen(make_tiny_backbone(tiny_tokenizer, causal=True, layers=2, d=32))
    seen, counts = _count_rows(bb), {"forwards": 0, "calls": 0}
    r = AR.ar_positional_trace(bb, FACTS, sigma=1.0, modules=("resid", "mlp"), counts=counts)
    lengths = [len(t) for t in r.tokens]
    for i, f in enumerate(FACTS):
        P = lengths[i]
        assert P == 1 + len(bb.encode(bb.prompt(f.question)))
        for m in ("resid", "mlp"):
            assert r.heatmap(m, i).shape == (P, bb.n_layers) and not np.any(np.isnan(r.heatmap(m, i)))
    assert r.ie.shape == (2, 2, max(lengths), bb.n_layers)
    last = np.mean([r.heatmap("mlp", i)[S[-1]] for i, S in enumerate(r.subject_positions)], 0)
    assert r.select_layer("mlp") == int(np.argmax(last))
    # causal: tokens before the first subject token cannot see the noise, so patching them does nothing
    for i, S in enumerate(r.subject_positions):
        np.testing.assert_allclose(r.heatmap("resid", i)[:S[0]], 0, atol=1e-5)
    assert np.abs(r.heatmap("resid", 0)).max() > 1e-3
    assert counts["forwards"] == seen["rows"] == sum(2 + 2 * P * bb.n_layers for P in lengths)
    zero = AR.ar_positional_trace(bb, FACTS[:1], sigma=0.0, modules=("attn",))
    assert np.all(zero.heatmap("attn", 0) == 0)
    with pytest.raises(ValueError, match="autoregressive"):
        T.trace_tie(bb, FACTS, steps=K)


def test_ar_positional_trace_on_an_mdlm_and_round_trip(bb, tmp_path):
    r = AR.ar_positional_trace(bb, FACTS[:1], sigma=1.0, modules=("resid",), window=3)
    assert r.heatmap("resid", 0).shape == (len(r.tokens[0]), bb.n_layers)
    assert r.settings["causal"] is False and r.settings["window"] == 3
    back = R.PositionalResult.load(r.save(tmp_path / "ar.npz"))
    np.testing.assert_array_equal(back.ie, r.ie)
    assert back.tokens == r.tokens and back.modules == r.modules


# --- errors --------------------------------------------------------------------------------------
def test_clear_errors(bb):
    in_answer = fact("who wrote it ?", "alice wrote the red book", "alice", 7, subject_in="answer")
    with pytest.raises(T.SubjectError, match="toy:7.*in the answer"):
        T.trace_tie(bb, [FACTS[0], in_answer], steps=K)
    no_subject = Fact(question="who ?", answer="bob", split="toy", index=3)
    with pytest.raises(T.SubjectError, match="toy:3.*no subject span"):
        T.trace_tie(bb, [no_subject], steps=2)
    with pytest.raises(ValueError, match="empty fact list"):
        T.trace_tie(bb, [], steps=K)
    with pytest.raises(ValueError, match="empty fact list"):
        AR.ar_positional_trace(bb, [])
    with pytest.raises(ValueError, match="modules"):
        T.trace_tie(bb, FACTS, modules=("down",))
    with pytest.raises(ValueError, match="shorter than the gold answer"):
        T.prepare_prompt(bb, FACTS[0], gen_length=1)
    for bad in (dict(steps=0), dict(sigma=-1.0), dict(tau=-0.5), dict(tau=math.inf)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            T.trace_tie(bb, FACTS, **bad)
    with pytest.raises(ValueError, match="window"):
        AR.ar_positional_trace(bb, FACTS, window=0)


def test_ranking_treats_round_off_as_ties():
    """Objectives closer than TIE_RESOLUTION (float round-off of batched forwards) rank in index order."""
    tie = np.zeros((1, 1, 3, 2))
    tie[0, 0, :, 0] = [1e-6, 3e-6, 0.0]  # last-layer-like noise: all ties
    tie[0, 0, 1, 1] = 0.5
    tie[0, 0, 2, 1] = 0.5 + SEL.TIE_RESOLUTION / 10  # round-off above a real effect: a tie too
    sel = SEL.select_coordinate(_synthetic(tie, modules=("resid",)))
    assert [(c.layer, c.step) for c in sel.ranking] == [(1, 1), (2, 1), (0, 0), (0, 1), (1, 0), (2, 0)]
    assert sel.best.layer == 1 and sel.paper.layer == 1
