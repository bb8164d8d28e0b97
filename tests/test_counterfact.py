"""Paper 003's pieces: the counterfactual request builder, the cloze trace, the partial-unmasking
states of the correction, ROME/MEMIT on ready-made requests (both model kinds) and the scoring."""
import re

import numpy as np
import pytest
import torch

import timerome
from timerome import counterfact as CF
from timerome import edit_eval as EE
from timerome.ar_trace import ar_positional_trace, restore_effect
from timerome.baselines import editing, memit, rome
from timerome.tracer import answer_logp

FAST = dict(v_steps=4, mom2_n_samples=120, n_prefixes=1)


@pytest.fixture(scope="module")
def mdlm():
    return timerome.load_backbone("tiny-mdlm")


@pytest.fixture(scope="module")
def arm():
    return timerome.load_backbone("tiny-arm")


@pytest.fixture(scope="module")
def reqs(mdlm, data_root):
    return CF.build(mdlm, root=data_root)


@pytest.fixture(scope="module")
def corpus(data_root):
    return editing.corpus_texts(data_root)


# ----------------------------------------------------------------------------- the builder
def test_requests_are_typed_binned_and_rebuild_their_answer(mdlm, reqs):
    assert reqs and {r.kind for r in reqs} <= set(CF.TYPES)
    assert len({r.request_id for r in reqs}) == len(reqs)
    for r in reqs:
        assert r.fact.answer == r.prefix + r.sep + r.old + r.rest
        assert r.new != r.old and r.new not in r.old and r.old not in r.new
        assert r.subject in r.fact.question
        # the old object is a value of its type, read by that type's pattern from some answer
        assert CF.TYPES[r.kind].pattern
        c = CF.tokenize(mdlm, r)
        # the cloze + old object + rest is exactly the answer as the model was trained on it
        assert list(c.prompt) + list(c.old) + list(c.rest) == mdlm.prompt_ids(r.fact.question) + mdlm.answer_ids(r.fact.answer)
        assert CF.length_bin(len(c.new)) == CF.BINS[min(len(c.new), 4) - 1]
        assert c.last == max(c.subject) and c.last in c.mention_ends
    n = CF.counts(mdlm, reqs)
    assert sum(n["by_bin"].values()) == len(reqs) == sum(n["by_type"].values())
    assert set(n["by_bin"]) == set(CF.BINS)  # every target length is represented
    assert max(n["by_bin"].values()) - min(n["by_bin"].values()) <= 0.5 * len(reqs) / len(CF.BINS)


def test_new_objects_are_other_authors_values_of_the_same_type(reqs):
    values = {(r.author, r.kind): r.old for r in reqs}
    for r in reqs:
        assert any(v == r.new for (a, k), v in values.items() if k == r.kind and a != r.author)


def test_neighbours_share_the_type_and_never_the_subject(reqs):
    by_id = {r.request_id: r for r in reqs}
    assert all(r.neighbours for r in reqs)
    for r in reqs:
        for n in r.neighbours:
            o = by_id[n]
            assert o.kind == r.kind and o.author != r.author and o.request_id != r.request_id
            assert r.subject not in o.fact.question and r.subject not in o.prefix


def test_builder_is_deterministic_and_seeded(mdlm, reqs, data_root):
    assert CF.build(mdlm, root=data_root) == reqs
    other = CF.build(mdlm, root=data_root, seed=1)
    assert [r.request_id for r in other] == [r.request_id for r in reqs]  # the anchors do not depend on the seed
    assert [r.new for r in other] != [r.new for r in reqs]


def test_author_values_take_the_most_frequent_match():
    from timerome.data import Fact

    fs = [Fact(q, a, "x", i, entity_id="A") for i, (q, a) in enumerate([
        ("Q?", "She was born in Paris, France."), ("Q?", "Born in Paris, France, in 1970."),
        ("Q?", "She was born in Lyon, France."), ("Q?", "Her father was a baker, and she won the Blue Pen Award.")])]
    v = CF.author_values(fs)["A"]
    assert v == {"city": "Paris", "year": "1970", "profession": "baker", "award": "Blue Pen Award"}
    with pytest.raises(ValueError, match="unknown request types"):
        CF.build(None, fs, kinds=("colour",))


# ----------------------------------------------------------------------------- the trace
@pytest.mark.parametrize("kind", ["mdlm", "arm"])
def test_cloze_trace_reads_the_object_where_the_model_predicts_it(kind, mdlm, arm, reqs):
    bb = mdlm if kind == "mdlm" else arm
    cfs = reqs[:2]
    tps = [CF.trace_prompt(bb, c) for c in cfs]
    res = ar_positional_trace(bb, [CF.trace_fact(c) for c in cfs], prompts=tps, modules=("mlp",), batch_size=None)
    for tp, clean in zip(tps, res.logp_clean):
        P, n = tp.prompt_length, len(tp.gold)
        if bb.is_causal:  # teacher forcing: the prompt, then the object
            x, g = torch.cat([tp.ids[:P], torch.tensor(tp.gold)]), P - 1
        else:  # the object and the rest of the answer masked: only masked slots are read
            x, g = tp.ids, P
            assert (tp.ids[P:P + n] == bb.mask_id).all()
            assert (tp.ids[P:-1] == bb.mask_id).all() and tp.ids[-1] == bb.eos_id
        ref = answer_logp(bb.logits(x[None].to(bb.device))[:, g:g + n].float(), tp.gold)[0]
        assert clean == pytest.approx(ref, rel=1e-5, abs=1e-5)
    assert res.ie.shape == (2, 1, max(tp.prompt_length for tp in tps), bb.n_layers)


def test_restoring_one_position_is_the_positional_trace_cell(mdlm, reqs):
    """restore_effect at a single position is ar_positional_trace's cell there; at every mention end
    it differs from any single cell's."""
    cfs = reqs[:2]
    tps = [CF.trace_prompt(mdlm, c) for c in cfs]
    facts = [CF.trace_fact(c) for c in cfs]
    pos = ar_positional_trace(mdlm, facts, prompts=tps, modules=("mlp", "resid"))
    ends = [CF.tokenize(mdlm, c).mention_ends for c in cfs]
    one = restore_effect(mdlm, facts, tps, [e[-1:] for e in ends], modules=("mlp", "resid"))
    for i, e in enumerate(ends):
        np.testing.assert_allclose(one["ie"][i], pos.ie[i, :, e[-1], :], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one["logp_clean"], pos.logp_clean, rtol=1e-6)
    assert all(len(e) == 2 for e in ends)  # the question and the answer prefix both name the author
    with pytest.raises(ValueError, match="inside its"):
        restore_effect(mdlm, facts[:1], tps[:1], [[tps[0].prompt_length]])
    # with a window of layers, still the positional trace's cell (edge layers cut the window)
    pos3 = ar_positional_trace(mdlm, facts, prompts=tps, modules=("mlp",), window=3)
    one3 = restore_effect(mdlm, facts, tps, [e[-1:] for e in ends], modules=("mlp",), window=3)
    for i, e in enumerate(ends):
        np.testing.assert_allclose(one3["ie"][i], pos3.ie[i, :, e[-1], :], rtol=1e-4, atol=1e-4)
    assert not np.allclose(one3["ie"], one["ie"][:, :1])


# ----------------------------------------------------------------------------- the correction's states
@pytest.mark.parametrize("n,draws", [(1, 2), (2, 3), (5, 2)])
def test_reveal_sets_cover_every_count_below_the_target_length(n, draws):
    sets = editing.reveal_sets(n, draws, 0, "fact")
    assert sets[0] == () and len(sets) == 1 + draws * (n - 1)
    sizes = [len(s) for s in sets]
    assert sizes == sorted(sizes) and set(sizes) == set(range(n))
    assert all(len(set(s)) == len(s) and set(s) <= set(range(n)) for s in sets)
    assert editing.reveal_sets(n, draws, 0, "fact") == sets
    if n == 5:
        assert editing.reveal_sets(n, draws, 1, "fact") != sets


def test_partial_rows_show_some_target_tokens_and_score_the_rest(mdlm, reqs):
    r = CF.request(mdlm, next(q for q in reqs if len(CF.tokenize(mdlm, q).new) >= 3))
    hp = editing.VHParams(v_states="partial", v_reveal_draws=2, n_prefixes=1)
    prefixes = [[], mdlm.encode("Some text. ")]
    rows = editing._target_rows(mdlm, r, prefixes, hp)
    per_prefix = 1 + 2 * (len(r.target) - 1)
    assert len(rows) == 2 * per_prefix
    for i, (seq, look, labels) in enumerate(rows):
        shift = 0 if i < per_prefix else len(prefixes[1])
        P = len(r.prompt) + shift
        assert look == r.last + shift
        slots = seq[P:P + len(r.target)]
        scored = {p - P for p, _ in labels}
        shown = {j for j, t in enumerate(slots) if t != mdlm.mask_id}
        assert shown.isdisjoint(scored) and shown | scored == set(range(len(r.target)))
        assert all(slots[j] == r.target[j] for j in shown) and all(t == r.target[p - P] for p, t in labels)
        assert seq[P + len(r.target):] == [mdlm.mask_id] * r.after + [mdlm.eos_id]
        assert (i % per_prefix == 0) == (not shown)  # the fully masked state first
    masked = editing._target_rows(mdlm, r, prefixes, hp.replace(v_states="masked"))
    assert [x for x in masked] == [rows[0], rows[per_prefix]]


def test_partial_states_are_for_masked_diffusion_only(arm, reqs):
    r = CF.request(arm, reqs[0])
    with pytest.raises(ValueError, match="causal"):
        editing._target_rows(arm, r, [[]], editing.VHParams(v_states="partial"))
    with pytest.raises(ValueError, match="v_states"):
        editing.VHParams(v_states="sometimes")._check_v()


# ----------------------------------------------------------------------------- editing requests
def _weights(bb):
    return [bb.down_proj(l).weight.detach().clone() for l in range(bb.n_layers)]


@pytest.mark.parametrize("kind", ["mdlm", "arm"])
@pytest.mark.parametrize("method", ["rome", "memit"])
def test_request_edits_move_the_target_and_restore_the_weights(kind, method, mdlm, arm, reqs, corpus, tmp_path):
    bb = mdlm if kind == "mdlm" else arm
    cf = next(q for q in reqs if len(CF.tokenize(bb, q).new) >= 2)
    before = _weights(bb)
    c = CF.tokenize(bb, cf)
    if method == "rome":
        hp = rome.ROMEHParams(layer=0, **FAST, **({} if bb.is_causal else dict(v_states="partial")))
        e = rome.build(bb, requests=[CF.request(bb, cf)], hp=hp, corpus=corpus, cache_dir=tmp_path)
    else:
        hp = memit.MEMITHParams(layers=(0, 1), **FAST)
        e = memit.build(bb, requests=[CF.request(bb, cf)], hp=hp, corpus=corpus, cache_dir=tmp_path)
    assert e.fact_ids == (cf.request_id,) and e.skipped == ()
    m0 = EE.object_logp(bb, c, "new") - EE.object_logp(bb, c, "old")
    with e.applied(bb):
        m1 = EE.object_logp(bb, c, "new") - EE.object_logp(bb, c, "old")
    assert m1 > m0
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(bb)))
    with pytest.raises(ValueError, match="facts or requests"):
        rome.build(bb, facts=[cf.fact], requests=[CF.request(bb, cf)])


def test_bad_requests_name_the_problem(mdlm, reqs):
    r = CF.request(mdlm, reqs[0])
    with pytest.raises(ValueError, match="outside its"):
        editing.check_requests(mdlm, [editing.Request("x", "s", r.prompt, len(r.prompt), r.answer, r.target)])
    with pytest.raises(ValueError, match="target must be"):
        editing.check_requests(mdlm, [editing.Request("x", "s", r.prompt, 0, r.answer, ())])
    with pytest.raises(TypeError, match="editing.Request"):
        editing.check_requests(mdlm, [reqs[0]])


# ----------------------------------------------------------------------------- scoring
def test_contains_matches_whole_words_only():
    assert EE.contains(" the  Nebula Award for", "nebula award")
    assert not EE.contains(" the Nebulas Award", "Nebula")
    assert not EE.contains(" 19581", "1958")


@pytest.mark.parametrize("kind", ["mdlm", "arm"])
def test_unedited_models_complete_their_own_facts(kind, mdlm, arm, reqs):
    bb = mdlm if kind == "mdlm" else arm
    by_id = {r.request_id: r for r in reqs}
    ref = EE.Reference.of(bb, reqs[:6])
    assert np.mean([EE.contains(ref.texts[r.request_id], r.old) for r in reqs[:6]]) >= 0.8
    row = EE.score(bb, reqs[0], by_id, EE.Reference.of(bb, [by_id[n] for n in reqs[0].neighbours]), why=True)
    assert row["efficacy"] == 0.0 and row["margin"] < 0 and row["specificity"] == 1.0
    assert 0.0 <= row["fluency"] <= 1.0
    if not bb.is_causal:  # the sampler's states: k filled object slots, the first fully masked
        ks = [k for k, _ in row["states"]]
        assert ks[0] == 0 and ks == sorted(ks) and max(ks) < row["n_new"]


@pytest.mark.parametrize("kind", ["mdlm", "arm"])
def test_reachable_nll_starts_at_the_unedited_nll_and_only_goes_down(kind, mdlm, arm, reqs):
    """With no step it is the new object's unedited NLL (`object_logp`'s state); a free δ at more
    positions can only reach lower (each site's positions contain the previous site's)."""
    bb = mdlm if kind == "mdlm" else arm
    c = CF.tokenize(bb, next(q for q in reqs if len(CF.tokenize(bb, q).new) >= 2))
    start = -EE.object_logp(bb, c, "new") / len(c.new)
    assert EE.reachable_nll(bb, c, 0, "last", steps=0) == pytest.approx(start, rel=1e-5)
    sites = [set(EE.key_positions(c, s)) for s in EE.KEY_SITES]
    assert all(a <= b for a, b in zip(sites, sites[1:])) and sites[0] == {c.last}
    assert EE.reachable_nll(bb, c, 0, "prompt", steps=30) < start - 1.0
    with pytest.raises(ValueError, match="site"):
        EE.key_positions(c, "first")
