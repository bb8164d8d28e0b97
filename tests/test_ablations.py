"""The ablation switches of Fig. 5 (site, steps, TopQ, target, β, key frame, per-fact coordinates) and the
robustness attacks, each against a brute-force reference on a tiny random model or by hand."""
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from timerome import ablations, robustness, selection, tuning
from timerome.capture import capture_keys
from timerome.data import Fact
from timerome.hparams import TimeROMEHParams
from timerome.keyframe import KeyFrame
from timerome.likelihood import ELBOOptions, answer_logprob_details, denoising_step
from timerome.memory import EditMemory
from timerome.metrics import evaluate
from timerome.sampler import num_transfer_tokens
from timerome.tracer import subject_positions

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_tiny_backbone, record, scale_blocks  # noqa: E402
from test_memory import FACTS, fact, ids_of, keys, reference_delta  # noqa: E402
from test_tracer import _synthetic  # noqa: E402

LAYER = 1


@pytest.fixture
def bb(tiny_tokenizer):
    return scale_blocks(make_tiny_backbone(tiny_tokenizer, layers=3, d=32))


def brute_frame(R, center, whiten, shrink):
    """μ and Σ_s⁻¹ written out (explicit mean, covariance and inverse)."""
    R = R.double()
    n, H = R.shape
    mu = R.sum(0) / n if center else torch.zeros(H, dtype=torch.float64)
    X = R - mu
    S = sum(torch.outer(x, x) for x in X) / n
    S = (1 - shrink) * S + shrink * torch.trace(S) / H * torch.eye(H, dtype=torch.float64)
    return mu, torch.linalg.inv(S)


# ================================================================================ key frame
@pytest.mark.parametrize("center,whiten,shrink", [(True, False, 0.0), (True, True, 0.2), (False, True, 0.5),
                                                   (True, True, 0.0)])
def test_key_frame_is_centring_and_whitening(center, whiten, shrink):
    R, _ = keys(40 if shrink == 0 else 9, 8, seed=3)
    frame = KeyFrame.from_reference(R, center=center, whiten=whiten, shrink=shrink)
    mu, Sinv = brute_frame(R, center, whiten, shrink)
    x, y = torch.randn(2, 5, 8, dtype=torch.float64)
    if center:
        assert torch.allclose(frame.mean, mu, atol=1e-12)
    else:
        assert frame.mean is None
    # the frame's inner products are the Mahalanobis ones (u - μ)ᵀ Σ⁻¹ (h - μ), or plain centred ones
    M = Sinv if whiten else torch.eye(8, dtype=torch.float64)
    assert torch.allclose(frame.apply(x) @ frame.apply(y).T, (x - mu) @ M @ (y - mu).T, rtol=1e-9, atol=1e-9)
    W = torch.randn(3, 8, dtype=torch.float64)
    W_eff, b = frame.fold(W)
    assert torch.allclose(x @ W_eff.T - (0 if b is None else b), frame.apply(x) @ W.T, atol=1e-10)


def test_key_frame_validation():
    R, _ = keys(4, 8)
    with pytest.raises(ValueError, match="singular"):
        KeyFrame.from_reference(R, whiten=True, shrink=0.0)  # 4 keys in 8 dimensions
    with pytest.raises(ValueError, match="identity"):
        KeyFrame.from_reference(R, center=False)
    with pytest.raises(ValueError, match="shrink"):
        KeyFrame.from_reference(R, whiten=True, shrink=1.5)
    with pytest.raises(ValueError, match="needs a mean"):
        KeyFrame()
    frame = KeyFrame.from_reference(R)
    with pytest.raises(ValueError, match="hidden size 8"):
        frame.apply(torch.zeros(3))
    with pytest.raises(ValueError, match="hidden size"):
        EditMemory(*keys(5, 6), lam=1.0, alpha=1.0, q=0, frame=frame)
    with pytest.raises(TypeError, match="KeyFrame"):
        EditMemory(*keys(5, 8), lam=1.0, alpha=1.0, q=0, frame="centred")


@pytest.mark.parametrize("n,H,q", [(12, 16, 0), (12, 8, 0), (12, 16, 5), (40, 16, 2), (40, 16, 12)])
@pytest.mark.parametrize("whiten", [False, True])
def test_framed_memory_matches_eq12_on_mapped_keys(n, H, q, whiten):
    U, D = keys(n, H)
    R, _ = keys(60, H, seed=7)
    frame = KeyFrame.from_reference(R, center=True, whiten=whiten, shrink=0.1)
    mem = EditMemory(U, D, lam=0.3, alpha=0.7, q=q, frame=frame)
    h = torch.randn(3, 5, H, dtype=torch.float64) + U[0]
    ref = reference_delta(frame.apply(U), D, frame.apply(h), 0.3, 0.7, q)
    assert torch.allclose(mem.delta(h), ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
    assert torch.allclose(mem.delta(h.float()).double(), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
    assert torch.equal(mem.U, U) and torch.allclose(mem.U_frame, frame.apply(U))
    # the identity frame is the paper's memory
    plain = EditMemory(U, D, lam=0.3, alpha=0.7, q=q)
    assert torch.equal(plain.U_frame, plain.U) and plain.frame is None


@pytest.mark.parametrize("form", ["facts", "hidden"])
def test_framed_streaming_matches_a_from_scratch_build(form):
    U, D = keys(10, 8)
    frame = KeyFrame.from_reference(keys(30, 8, seed=2)[0], center=True, whiten=True, shrink=0.1)
    mem = EditMemory(U[:6], D[:6], lam=0.05, alpha=1.0, q=3, gram=form, frame=frame, keys=list(range(6)))
    for i in range(6, 10):
        mem.insert(U[i], D[i], i)
    mem.remove(2)
    keep = [0, 1, 3, 4, 5, 6, 7, 8, 9]
    ref = EditMemory(U[keep], D[keep], lam=0.05, alpha=1.0, q=3, frame=frame)
    h = torch.randn(4, 8, dtype=torch.float64)
    assert torch.equal(mem.U, U[keep])
    assert torch.allclose(mem.delta(h), ref.delta(h), atol=1e-9)


def test_framed_memory_save_load_round_trip(bb, tmp_path):
    frame = KeyFrame.capture(bb, FACTS, LAYER, center=True, whiten=True, shrink=0.3)
    mem = EditMemory.build(bb, FACTS[:3], LAYER, lam_relative=0.5, alpha=1.5, q=2, frame=frame)
    mem.save(tmp_path / "m")
    back = EditMemory.load(tmp_path / "m", bb)
    h = torch.randn(2, 3, 32, dtype=torch.float64)
    assert back.frame.kind == "centred+whitened" and back.frame.shrink == 0.3 and back.frame.n_reference == 4
    assert torch.equal(back.U, mem.U) and torch.equal(back.frame.whiten, mem.frame.whiten)
    assert torch.allclose(back.delta(h), mem.delta(h), rtol=1e-10, atol=1e-12)
    # a file without a frame has no frame fields (the format is unchanged)
    EditMemory.build(bb, FACTS[:3], LAYER, lam=1.0, alpha=1.0, q=2).save(tmp_path / "plain")
    assert "frame" not in (tmp_path / "plain" / "memory.json").read_text()
    assert EditMemory.load(tmp_path / "plain").frame is None


def test_build_with_a_frame_scales_lambda_by_the_mapped_keys(bb):
    frame = KeyFrame.capture(bb, FACTS, LAYER, center=True)
    R = capture_keys(bb, FACTS, LAYER)["U"]
    assert torch.allclose(frame.mean, R.mean(0), atol=1e-12)
    mem = EditMemory.build(bb, FACTS[:3], LAYER, lam_relative=2.0, alpha=1.0, q=0, frame=frame)
    k = capture_keys(bb, FACTS[:3], LAYER)
    assert torch.equal(mem.U, k["U"])
    assert mem.key_scale == pytest.approx(float((k["U"] - R.mean(0)).pow(2).sum(1).mean()), rel=1e-12)
    assert mem.lam == pytest.approx(2.0 * mem.key_scale)
    hp = TimeROMEHParams("x", LAYER, lam_relative=2.0, alpha=1.0, q=0)
    assert torch.equal(hp.build_memory(bb, FACTS[:3], frame=frame).W, mem.W)


def test_tune_lambda_with_a_frame(bb):
    frame = KeyFrame.capture(bb, FACTS, LAYER, center=True)
    kw = dict(lam_grid=[1.0], retain_budget=5.0, seeds=(0,), n_mc=2, batch_size=8)
    choice = tuning.tune_lambda(bb, FACTS[:2], FACTS[2:], LAYER, frame=frame, **kw)
    plain = tuning.tune_lambda(bb, FACTS[:2], FACTS[2:], LAYER, **kw)
    scale = float(frame.apply(capture_keys(bb, FACTS[:2], LAYER)["U"]).pow(2).sum(1).mean())
    assert choice.key_scale == pytest.approx(scale, rel=1e-12) and choice.key_scale < plain.key_scale
    assert choice.sweep.d_forget_val[0] != plain.sweep.d_forget_val[0]


# ====================================================================================== site
@pytest.mark.parametrize("module", ["resid", "attn", "mlp"])
def test_site_switch_edits_the_named_module_output(bb, module):
    mem = EditMemory.build(bb, FACTS, LAYER, module=module, lam=1.0, alpha=2.0, q=2)
    point = {"resid": "resid_post", "attn": "attn_out", "mlp": "mlp_out"}[module]
    x = ids_of(bb, FACTS[0])
    with record(bb, f"blocks.{LAYER}.{point}") as clean:
        bb.logits(x)
    with mem.installed(bb), record(bb, f"blocks.{LAYER}.{point}") as edited:
        bb.logits(x)
    # the recorder sees the output the edit returned: the clean one plus the memory's delta
    assert torch.allclose(edited[0], clean[0] + mem.delta(clean[0]).float(), atol=1e-5)
    assert torch.equal(capture_keys(bb, FACTS, LAYER, module=module)["U"], mem.U)


# ===================================================================================== steps
@pytest.mark.parametrize("L,K", [(40, 8), (5, 8), (13, 4), (1, 3), (8, 8)])
def test_denoising_step_follows_the_sampler_schedule(L, K):
    # brute force: replay the sampler's commits, recording the step of every mask count it passes through
    step_of, left = {}, L
    for k, n in enumerate(num_transfer_tokens(torch.tensor([L]), K)[0].tolist()):
        for m in range(left, left - n, -1):
            step_of[m] = k
        left -= n
    assert sorted(step_of) == list(range(1, L + 1))
    assert all(denoising_step(m, L, K) == step_of[m] for m in range(1, L + 1))
    assert denoising_step(L, L, K) == 0
    with pytest.raises(ValueError):
        denoising_step(0, L, K)


def test_step_clock_sets_each_rows_step_from_its_mask_count(bb, monkeypatch):
    f = FACTS[0]
    seen = []
    real = bb.logits_at

    def spy(ids, att, rows, pos):
        seen.append((ids.clone(), bb.step))
        return real(ids, att, rows, pos)

    monkeypatch.setattr(bb, "logits_at", spy)
    L = len(bb.answer_ids(f.answer))
    answer_logprob_details(bb, [f.question], [f.answer], n_mc=6, batch_size=4, step_clock=3)
    assert seen and all(isinstance(s, tuple) and len(s) == ids.shape[0] for ids, s in seen)
    got = [(int((row == bb.mask_id).sum()), k) for ids, s in seen for row, k in zip(ids, s)]
    assert all(k == denoising_step(m, L, 3) for m, k in got) and len({k for _, k in got}) > 1
    seen.clear()
    answer_logprob_details(bb, [f.question], [f.answer], n_mc=6, batch_size=4)
    assert all(s is None for _, s in seen)  # no clock: no step, as before


def test_steps_switch_under_the_step_clock(bb):
    mem = EditMemory.build(bb, FACTS, LAYER, lam=1.0, alpha=3.0, q=2)
    qs, ans = [f.question for f in FACTS], [f.answer for f in FACTS]
    opt = ELBOOptions(n_mc=8, batch_size=5, step_clock=4)
    plain = answer_logprob_details(bb, qs, ans, opt).total
    with mem.installed(bb):
        every = answer_logprob_details(bb, qs, ans, opt).total
    with mem.installed(bb, steps=range(4)):  # every step of the clock = every forward, bitwise
        assert torch.equal(answer_logprob_details(bb, qs, ans, opt).total, every)
    with mem.installed(bb, steps=[2]):
        early = answer_logprob_details(bb, qs, ans, opt).total
    with mem.installed(bb, steps=[2]):  # without the clock a step-restricted edit never fires
        assert torch.equal(answer_logprob_details(bb, qs, ans, opt.replace(step_clock=None)).total, plain)
    assert not torch.equal(early, plain) and not torch.equal(early, every)
    # the unedited model and an every-step edit score the same with or without the clock
    assert torch.equal(answer_logprob_details(bb, qs, ans, opt.replace(step_clock=None)).total, plain)


def test_per_row_steps_edit_only_their_rows(bb):
    mem = EditMemory.build(bb, FACTS, LAYER, lam=1.0, alpha=3.0, q=2)
    x = torch.cat([ids_of(bb, FACTS[0])] * 3)
    point = f"blocks.{LAYER}.resid_post"
    with record(bb, point) as clean:
        bb.logits(x)
    with mem.installed(bb, steps={1}), bb.at_step((0, 1, 2)), record(bb, point) as edited:
        bb.logits(x)
    c, e = clean[0], edited[0]
    assert torch.equal(e[0], c[0]) and torch.equal(e[2], c[2])
    assert torch.allclose(e[1], c[1] + mem.delta(c[1]).float(), atol=1e-5)
    with mem.installed(bb, steps={1}), bb.at_step((0, 1)), pytest.raises(ValueError, match="per-row steps"):
        bb.logits(x)


def test_band_steps_by_hand():
    rank = pd.DataFrame({"module": ["resid"] * 4 + ["attn"], "layer": [0, 0, 1, 1, 0], "step": [0, 1, 2, 3, 4],
                         "objective": [1.0, 10.0, 5.0, 4.9, 100.0]})
    assert selection.band_steps(rank, "resid", 0.5) == (1, 2)
    assert selection.band_steps(rank, "resid", 0.49) == (1, 2, 3)
    assert selection.band_steps(rank.rename(columns={"objective": "score"}), "attn") == (4,)
    with pytest.raises(ValueError, match="mlp"):
        selection.band_steps(rank, "mlp")


# ====================================================================================== TopQ
@pytest.mark.parametrize("q", [0, 1, 2, 4, 8])
def test_topq_switch(q):
    U, D = keys(10, 16)
    mem = EditMemory(U, D, lam=0.5, alpha=2.0, q=4)
    mem.q = q
    h = torch.randn(6, 16, dtype=torch.float64)
    assert torch.allclose(mem.delta(h), reference_delta(U, D, h, 0.5, 2.0, q), atol=1e-10)


# ==================================================================================== target
def test_per_fact_targets_match_one_capture_per_fact(bb):
    targets = ["paris", "songs about snow", "bob", "alice wrote it"]
    k = capture_keys(bb, FACTS, LAYER, target=targets)
    for i, (f, t) in enumerate(zip(FACTS, targets)):
        one = capture_keys(bb, [f], LAYER, target=t)
        assert torch.allclose(k["D"][i], one["D"][0], atol=1e-5) and torch.allclose(k["U"][i], one["U"][0], atol=1e-5)
    same = capture_keys(bb, FACTS, LAYER, target=["I don't know."] * 4)
    assert torch.equal(same["D"], capture_keys(bb, FACTS, LAYER)["D"])
    with pytest.raises(ValueError, match="one string per fact"):
        capture_keys(bb, FACTS, LAYER, target=targets[:2])
    mem = EditMemory.build(bb, FACTS, LAYER, lam=1.0, alpha=1.0, q=0, target=targets)
    assert mem.target == targets and torch.equal(mem.D, k["D"])


def author_fact(author, i, answer):
    return Fact(question=f"q{i} of {author}", answer=answer, split="toy", index=i, entity_id=author)


def test_other_author_targets_take_another_authors_answer_at_the_same_position():
    facts = [author_fact("A", i, f"A{i}") for i in range(3)] + [author_fact("B", 10 + i, f"B{i}") for i in range(2)]
    pool = [author_fact(a, 20 + 3 * j + i, f"{a}{i}") for j, a in enumerate(("A", "C", "D")) for i in range(3)]
    t = ablations.other_author_targets(facts, pool, seed=0)
    for f, ans, pos in zip(facts, t, [0, 1, 2, 0, 1]):
        assert ans[0] in "CD" and ans[0] != f.entity_id and ans[1:] == str(pos)
    assert t == ablations.other_author_targets(facts, pool, seed=0)
    assert len({tuple(ablations.other_author_targets(facts, pool, seed=s)) for s in range(8)}) > 1
    with pytest.raises(ValueError, match="no author other than A"):
        ablations.other_author_targets(facts[:1], pool[:3])


# ============================================================================ β and coordinates
def test_beta_switch_moves_the_downstream_layer():
    fv = np.zeros((2, 1, 3, 2))
    fv[:, 0, 0, 1] = 4.0  # layer 0 strongest on F_v ...
    fv[:, 0, 2, 0] = 3.0
    nb = np.zeros((2, 1, 3, 2))
    nb[:, 0, 0, 1] = 2.0  # ... but it also moves the neighbours
    res, neigh = _synthetic(fv, modules=("resid",)), _synthetic(nb, modules=("resid",))
    assert selection.select_coordinate(res).paper.layer == 0
    assert selection.select_coordinate(res, neigh, beta=0.0).paper.layer == 0
    sel = selection.select_coordinate(res, neigh, beta=1.0)  # objective at layer 0: 4 - 2 < 3
    assert sel.paper.layer == 2 and sel.paper.score == pytest.approx(3.0)


def test_per_fact_layers_and_memories(bb):
    tie = np.zeros((3, 1, 3, 2))
    tie[0, 0, 2, 1] = -5.0
    tie[1, 0, 0, 0] = 1.0
    tie[2, 0, 2, 0] = 2.0
    res = _synthetic(tie, modules=("resid",), ids=[f.fact_id for f in FACTS[:3]])
    layers = ablations.per_fact_layers(res)
    assert layers == {FACTS[0].fact_id: 2, FACTS[1].fact_id: 0, FACTS[2].fact_id: 2}
    hp = TimeROMEHParams("x", 1, lam_relative=0.5, alpha=2.0, q=0)
    mems = ablations.per_fact_memories(bb, FACTS, layers, hp)  # FACTS[3] was not traced: left out
    assert [(m.layer, m.keys) for m in mems] == [(0, [FACTS[1].fact_id]), (2, [FACTS[0].fact_id, FACTS[2].fact_id])]
    x = ids_of(bb, FACTS[0])
    with mems[0].installed(bb), mems[1].installed(bb):
        nested = bb.logits(x)
    with ablations.installed_all(bb, mems):
        assert torch.equal(bb.logits(x), nested)
    assert all(not m._forward_hooks for m in bb.model.modules())


# ================================================================================== effect rows
def test_effect_row_against_hand_computed_deltas(bb):
    split = {"forget": FACTS[:2], "retain": FACTS[2:]}
    kw = dict(seeds=[0, 1], n_mc=2, rouge=False, with_truth_ratio=False, batch_size=8)
    base = evaluate(bb, split, **kw)
    mem = EditMemory.build(bb, FACTS[:2], LAYER, lam=1.0, alpha=3.0, q=0)
    frame = evaluate(bb, split, edit=lambda: mem.installed(bb), **kw)
    row = ablations.effect(frame, base, n_boot=200)
    for role in ("forget", "retain"):
        a, b = frame[frame.role == role], base[base.role == role]
        assert row[f"{role}_lp"] == pytest.approx(a.logprob.mean())
        assert row[f"d_{role}_lp"] == pytest.approx(a.logprob.mean() - b.logprob.mean())
        assert row[f"d_{role}_lp_lo"] <= row[f"d_{role}_lp"] <= row[f"d_{role}_lp_hi"]
    assert row["selectivity"] == pytest.approx(row["d_forget_lp"] / row["d_retain_lp"])
    same = ablations.effect(base, base, n_boot=50)
    assert same["d_forget_lp"] == 0.0 and np.isnan(same["p_forget_lp"])


# ================================================================================= robustness
def tofu_fact(i=0):
    return Fact(question="Where was Ann Lee born?", answer="Ann Lee was born in Oslo.", split="forget01", index=i,
                subject="Ann Lee", subject_span=(10, 17), subject_in="question", entity_id="a",
                paraphrased_question="In which city did Ann Lee come into the world?",
                paraphrased_answer="Oslo is where Ann Lee was born.", perturbed_answers=["Rome"])


def test_attacks_build_the_right_prompts(bb):
    f = tofu_fact()
    assert robustness.attack([f], "none") == [f]
    [p] = robustness.attack([f], "paraphrase")
    assert (p.question, p.answer, p.fact_id) == (f.paraphrased_question, f.answer, f.fact_id)
    assert p.question[slice(*p.subject_span)] == "Ann Lee"
    [a] = robustness.attack([f], "paraphrase_answer")
    assert (a.question, a.answer) == (f.question, f.paraphrased_answer)
    [r] = robustness.attack([f], "relearn")
    assert (r.question, r.answer, r.fact_id) == ("Ann Lee was born in Oslo. Where was Ann Lee born?", f.answer, f.fact_id)
    assert r.question[slice(*r.subject_span)] == "Ann Lee"
    [r2] = robustness.attack([f], "relearn", template="Fact: {answer}\n{question}")
    assert r2.question == "Fact: Ann Lee was born in Oslo.\nWhere was Ann Lee born?"
    assert r2.question[slice(*r2.subject_span)] == "Ann Lee"
    [q] = robustness.attack([dataclasses.replace(f, paraphrased_question="Where was she born?")], "paraphrase")
    assert q.subject_span is None and q.subject_in is None
    with pytest.raises(ValueError, match="forget01:3 has no paraphrased_question"):
        robustness.attack([dataclasses.replace(tofu_fact(3), paraphrased_question=None)], "paraphrase")
    with pytest.raises(ValueError, match="unknown attack"):
        robustness.attack([f], "jailbreak")
    with pytest.raises(ValueError, match="template"):
        robustness.attack([f], "relearn", template="{question}")
    # the scored prompt is the attacked question under the backbone's template
    assert bb.prompt(r.question) == bb.prompt_template.format(question=r.question)


# ================================================================================== effect table
def test_effect_table_scores_each_distinct_edit_once_and_repeats_the_reference(bb):
    split = {"forget": FACTS[:2], "retain": FACTS[2:]}
    kw = dict(seeds=[0, 1], n_mc=2, rouge=False, with_truth_ratio=False, batch_size=8)
    calls = []

    def score(edit=None):
        calls.append(edit)
        return evaluate(bb, split, edit=edit, **kw)

    base = score()
    ref = EditMemory.build(bb, FACTS[:2], LAYER, lam=1.0, alpha=3.0, q=0)
    other = EditMemory.build(bb, FACTS[:2], 0, lam=1.0, alpha=3.0, q=0)
    V = ablations.Variant
    variants = [V("site", "resid", [ref], reference=True), V("steps", "all_steps", [ref], reference=True),
                V("steps", "early_only", [ref], steps=[1, 1]), V("coord", "other", [other]),
                V("ext", "both", [ref, other], extension=True)]
    table = ablations.effect_table(bb, variants, score, base, n_boot=100)
    assert len(calls) == 1 + 4  # base, then ref, ref at step 1, other, both: the repeated reference is scored once
    assert list(table.variant) == ["resid", "all_steps", "early_only", "other", "both"]
    by = table.set_index("variant")
    assert by.loc["resid", "d_forget_lp"] == by.loc["all_steps", "d_forget_lp"]
    direct = ablations.effect(evaluate(bb, split, edit=lambda: ablations.installed_all(bb, [ref, other]), **kw), base,
                              n_boot=100)
    assert by.loc["both", "d_forget_lp"] == pytest.approx(direct["d_forget_lp"])
    assert (by.loc["both", "layer"], by.loc["resid", "layer"], by.loc["early_only", "steps"]) == (f"{LAYER}-0", LAYER, "1")
    assert by.loc["both", "n_facts"] == len(ref) + len(other) and bool(by.loc["both", "extension"])
    # no edit reaches the model at step 1 without the step clock: the restricted edit changes nothing
    assert by.loc["early_only", "d_forget_lp"] == 0.0
    with pytest.raises(ValueError, match="appears twice"):
        ablations.effect_table(bb, [V("a", "x", [ref]), V("a", "x", [other])], score, base)
    with pytest.raises(ValueError, match="no memory"):
        V("a", "x", [])


# ================================================================================ attack table
def test_attack_table_shift_is_the_per_fact_change_of_the_edits_effect(bb):
    facts = [dataclasses.replace(tofu_fact(i), question=q, answer=a, subject_span=(q.index("Ann Lee"), q.index("Ann Lee") + 7))
             for i, (q, a) in enumerate([("Where was Ann Lee born?", "Ann Lee was born in Oslo."),
                                         ("What did Ann Lee write?", "Ann Lee wrote poems.")])]
    mem = EditMemory.build(bb, facts, LAYER, lam=1.0, alpha=3.0, q=0)
    kw = dict(seeds=[0, 1], n_mc=2, rouge=False, with_truth_ratio=False, batch_size=8)
    score = lambda fs, edit: evaluate(bb, {"forget01": fs}, edit=edit, **kw)  # noqa: E731
    rob = robustness.attack_table(facts, score, lambda: mem.installed(bb), n_boot=100).set_index("attack")
    assert list(rob.index) == list(robustness.ATTACKS)
    deltas = {}
    for a in robustness.ATTACKS:  # brute force: score each attack by hand
        fs = robustness.attack(facts, a)
        e, b = score(fs, lambda: mem.installed(bb)), score(fs, None)
        deltas[a] = (e.groupby("fact_id").logprob.mean() - b.groupby("fact_id").logprob.mean()).to_numpy()
        assert rob.loc[a, "base_forget_lp"] == pytest.approx(b.logprob.mean())
        assert rob.loc[a, "d_forget_lp"] == pytest.approx(deltas[a].mean())
    for a in robustness.ATTACKS:
        assert rob.loc[a, "shift"] == pytest.approx((deltas[a] - deltas["none"]).mean())
        assert rob.loc[a, "shift_lo"] <= rob.loc[a, "shift"] <= rob.loc[a, "shift_hi"]
    assert rob.loc["none", "shift"] == 0.0 and rob.loc["none", "base_ratio"] == 1.0
    for a in robustness.ATTACKS:  # informative: the unedited model still knows the attacked answers
        ratio = rob.loc[a, "base_forget_lp"] / rob.loc["none", "base_forget_lp"]
        assert rob.loc[a, "base_ratio"] == pytest.approx(ratio)
        assert rob.loc[a, "informative"] == (ratio <= robustness.KNOWN_RATIO)
    with pytest.raises(ValueError, match="must start with 'none'"):
        robustness.attack_table(facts, score, lambda: mem.installed(bb), attacks=["relearn"])
