"""TOFU metrics (`timerome.metrics`): hand-computed definitions, and `evaluate` / `summarize` on a tiny model."""
import contextlib
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from timerome import metrics as M
from timerome import splits as S
from timerome.data import Fact
from timerome.likelihood import answer_logprob, answer_logprob_details

from conftest import make_tiny_backbone


# --- truth ratio -------------------------------------------------------------------------------
def test_truth_ratio_hand_example_with_geometric_mean():
    para = [1.0, 0.5]
    pert = [[2.0, 4.0], [0.5, 0.5]]
    r = M.truth_ratio(para, pert)
    # P_para = e^-1; P_pert = geometric mean of e^-2 and e^-4 = e^-3  ->  R = e^-2
    np.testing.assert_allclose(r, [math.exp(-2.0), 1.0])
    arithmetic = (math.exp(-2) + math.exp(-4)) / 2 / math.exp(-1)
    assert abs(r[0] - arithmetic) > 1e-2  # it is the geometric, not the arithmetic, mean
    # TOFU stores exp(pert - para) = 1/R (evaluate_util.eval_perturbation_ratio, roles swapped)
    np.testing.assert_allclose(1 / r, np.exp(np.mean(pert, 1) - np.array(para)))


def test_truth_ratio_shapes_and_types():
    np.testing.assert_allclose(M.truth_ratio([1.0, 2.0], [1.5, 2.0]), [math.exp(-0.5), 1.0])  # k = 1 as [N]
    t = M.truth_ratio(torch.tensor([1.0]), torch.tensor([[1.0, 3.0]]))
    assert torch.is_tensor(t) and t.dtype == torch.float64
    assert float(t[0]) == pytest.approx(math.exp(-1.0))
    with pytest.raises(ValueError, match="pert_nll"):
        M.truth_ratio([1.0, 2.0], [[1.0], [2.0], [3.0]])
    with pytest.raises(ValueError, match="para_nll"):
        M.truth_ratio([[1.0]], [[1.0]])


def test_truth_ratio_aggregations():
    r = np.array([0.5, 2.0, 1.0])
    assert M.forget_truth_ratio(r) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert M.retain_truth_ratio(r) == pytest.approx((0.5 + 0.0 + 0.0) / 3)
    # the same as TOFU aggregate_eval_stat on curr_stat_1 = 1/R
    c = 1 / r
    assert M.forget_truth_ratio(r) == pytest.approx(np.mean(np.minimum(c, 1 / c)))
    assert M.retain_truth_ratio(r) == pytest.approx(np.mean(np.maximum(0, 1 - 1 / c)))
    with pytest.raises(ValueError, match="empty"):
        M.forget_truth_ratio([])
    with pytest.raises(ValueError, match="finite"):
        M.retain_truth_ratio([1.0, float("nan")])


def test_forget_quality_is_the_ks_p_value():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(0, 1, 30), rng.lognormal(0.5, 1, 25)
    p = M.forget_quality(a, b)
    assert p == pytest.approx(stats.ks_2samp(a, b).pvalue)
    assert p == pytest.approx(stats.ks_2samp(1 / a, 1 / b).pvalue)  # TOFU tests 1/R: same p-value
    assert M.forget_quality(a, a) == pytest.approx(1.0)


def test_normalized_prob_hand_example():
    # P(answer) = 1/2, two perturbed with 1/4 each -> 0.5 / (0.5 + 0.25 + 0.25)
    p = M.normalized_prob([math.log(2)], [[math.log(4), math.log(4)]])
    np.testing.assert_allclose(p, [0.5])
    p = M.normalized_prob([1.0, 3.0], [[2.0], [1.0]])
    np.testing.assert_allclose(p, [math.e ** -1 / (math.e ** -1 + math.e ** -2),
                                   math.e ** -3 / (math.e ** -3 + math.e ** -1)])


# --- ROUGE-L and model utility -----------------------------------------------------------------
def test_rouge_l_recall_known_pairs():
    # LCS(the cat sat on the mat | the cat is on a mat) = the cat on mat: 4 of 6 gold tokens
    assert M.rouge_l_recall("the cat is on a mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    # stemming: dogs~dog, running~runs~run; LCS = dog run (2 of 3)
    assert M.rouge_l_recall("the dog runs", "dogs running fast") == pytest.approx(2 / 3)
    assert M.rouge_l_recall(["", "a b"], ["a b", "a b"]) == [0.0, 1.0]
    with pytest.raises(ValueError, match="same length"):
        M.rouge_l_recall(["a"], ["a", "b"])


def test_harmonic_mean_and_model_utility():
    assert M.harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / 7)
    vals = dict(zip(M.UTILITY_COLUMNS, [0.9, 0.4, 0.5, 0.8, 0.3, 0.6, 0.7, 0.2, 0.55]))
    assert M.model_utility(vals) == pytest.approx(9 / sum(1 / v for v in vals.values()))
    assert M.model_utility(vals) == pytest.approx(stats.hmean(list(vals.values())))
    assert M.model_utility({**vals, "RetainTR": 0.0}) == 0.0
    assert math.isnan(M.model_utility({**vals, "WorldFactROUGE": math.nan}))
    with pytest.raises(KeyError, match="RealAuthProb"):
        M.model_utility({k: v for k, v in vals.items() if k != "RealAuthProb"})
    with pytest.raises(ValueError, match="9 values"):
        M.model_utility([0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        M.harmonic_mean([0.5, -0.1])


def test_split_roles():
    assert M.split_role("forget10_perturbed") == "forget" and M.split_role("forget") == "forget"
    assert M.split_role("retain_perturbed") == "retain" and M.split_role("retain90") == "retain"
    assert M.split_role("real_authors_perturbed") == "real_authors"
    assert M.split_role("world_facts") == "world_facts"
    assert M.split_role("holdout10") == "holdout10"


# --- evaluate / summarize on a tiny random backbone --------------------------------------------
def _facts():
    F = lambda split, i, q, a, para, pert: Fact(q, a, split, i, paraphrased_answer=para, perturbed_answers=pert)
    return {
        "forget": [F("forget", 0, "who wrote the red book ?", "alice wrote it in paris .", "alice did , in paris .",
                     ["bob wrote it in rome .", "carol wrote it ."]),
                   F("forget", 1, "who painted the blue sea ?", "bob painted it near rome .", "bob did .",
                     ["alice painted it .", "carol painted it near paris ."])],
        "retain": [F("retain", 0, "what does carol sing ?", "carol sings songs about snow .",
                     "songs about snow .", ["carol sings about the sea .", "carol sings about rome ."])],
        "real_authors": [F("real_authors", 0, "who wrote what ?", "alice wrote the red book .", None,
                           ["bob wrote the red book .", "carol wrote a blue book ."])],
        "world_facts": [F("world_facts", 0, "where is rome ?", "near the sea .", None,
                          ["in paris .", "near snow ."])],
    }


KW = dict(n_mc=2, gen_length=8, steps=2, batch_size=16)


@pytest.fixture(scope="module")
def bb(tiny_tokenizer):
    return make_tiny_backbone(tiny_tokenizer)


@pytest.fixture(scope="module")
def frame(bb):
    return M.evaluate(bb, _facts(), seeds=(0, 1), **KW)


COLUMNS = ["split", "role", "fact_id", "seed", "n_tokens", "logprob", "logprob_per_token", "logprob_stderr", "prob",
           "para_nll", "pert_nll", "n_perturbed", "truth_ratio", "prob_norm", "generation", "rouge_l"]


def test_evaluate_shape_and_columns(frame):
    assert list(frame.columns) == COLUMNS
    assert len(frame) == 5 * 2
    assert sorted(frame.seed.unique()) == [0, 1]
    assert frame.groupby("seed").size().tolist() == [5, 5]
    assert set(frame.role) == set(M.TOFU_ROLES)
    assert frame[["logprob", "prob", "para_nll", "pert_nll", "truth_ratio", "prob_norm", "rouge_l"]].notna().all().all()
    assert (frame.n_perturbed == 2).all()
    assert ((frame.prob > 0) & (frame.prob <= 1) & (frame.prob_norm > 0) & (frame.prob_norm < 1)).all()
    assert ((frame.rouge_l >= 0) & (frame.rouge_l <= 1)).all()


def test_evaluate_values_match_the_likelihood_module(bb, frame):
    facts = _facts()
    for seed in (0, 1):
        for name, fs in facts.items():
            sub = frame[(frame.split == name) & (frame.seed == seed)]
            assert sub.fact_id.tolist() == [f.fact_id for f in fs]
            qs = [f.question for f in fs]
            lp = answer_logprob(bb, qs, [f.answer for f in fs], n_mc=2, seed=seed)
            np.testing.assert_allclose(sub.logprob, lp.numpy(), rtol=1e-6, atol=1e-8)
            para = [f.paraphrased_answer or f.answer for f in fs]  # real_authors/world_facts: the answer
            para_nll = -answer_logprob_details(bb, qs, para, n_mc=2, seed=seed).per_token.numpy()
            pert_nll = np.stack([-answer_logprob_details(bb, qs, [f.perturbed_answers[k] for f in fs], n_mc=2,
                                                         seed=seed).per_token.numpy() for k in range(2)], 1)
            np.testing.assert_allclose(sub.para_nll, para_nll, rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(sub.truth_ratio, M.truth_ratio(para_nll, pert_nll), rtol=1e-6)
            ans_nll = -lp.numpy() / sub.n_tokens.to_numpy()
            np.testing.assert_allclose(sub.prob, np.exp(-ans_nll), rtol=1e-6)
            np.testing.assert_allclose(sub.prob_norm, M.normalized_prob(ans_nll, pert_nll), rtol=1e-6)
            for g, f, r in zip(sub.generation, fs, sub.rouge_l):
                assert r == pytest.approx(M.rouge_l_recall(g, f.answer))
    # the MC seed matters for an MDLM
    assert not np.allclose(frame[frame.seed == 0].logprob, frame[frame.seed == 1].logprob)


def test_evaluate_is_deterministic(bb, frame):
    again = M.evaluate(bb, _facts(), seeds=(0, 1), **KW)
    pd.testing.assert_frame_equal(frame, again)


def test_summarize_columns_and_values(frame):
    s = M.summarize(frame)
    assert s.seed.tolist() == [0, 1]
    for col in ["ForgetLP", "RetainLP", "RealAuth", "WorldFact", "ForgetTR", "RetainTR", "RealAuthTR", "WorldFactTR",
                "ForgetROUGE", "RetainROUGE", "RealAuthROUGE", "WorldFactROUGE", "RetainProb", "RealAuthProb",
                "WorldFactProb", "KS_p", "ModelUtility"]:
        assert col in s.columns
    f0 = frame[frame.seed == 0]
    row = s.iloc[0]
    assert row.ForgetLP == pytest.approx(f0[f0.role == "forget"].logprob.mean())
    assert row.WorldFact == pytest.approx(f0[f0.role == "world_facts"].logprob.mean())
    tr = f0[f0.role == "forget"].truth_ratio.to_numpy()
    assert row.ForgetTR == pytest.approx(np.mean(np.minimum(tr, 1 / tr)))
    tr = f0[f0.role == "retain"].truth_ratio.to_numpy()
    assert row.RetainTR == pytest.approx(np.mean(np.maximum(0, 1 - tr)))
    assert row.RetainProb == pytest.approx(f0[f0.role == "retain"].prob.mean())
    assert row.RealAuthProb == pytest.approx(f0[f0.role == "real_authors"].prob_norm.mean())
    nine = [row[c] for c in M.UTILITY_COLUMNS]
    if min(nine) > 0:
        assert row.ModelUtility == pytest.approx(stats.hmean(nine))
    else:
        assert row.ModelUtility == 0.0
    assert math.isnan(row.KS_p)  # no retain reference given
    assert row.n_forget == 2 and row.n_retain == 1


def test_summarize_forget_quality_against_a_retain_model(tiny_tokenizer, frame):
    ref_bb = make_tiny_backbone(tiny_tokenizer, seed=1)
    ref = M.evaluate(ref_bb, {"forget": _facts()["forget"]}, seeds=(0,), rouge=False, **KW)
    assert ref.rouge_l.isna().all() and ref.generation.isna().all()
    s = M.summarize(frame, ref)
    for seed in (0, 1):  # the reference's only seed serves every seed
        a = frame[(frame.seed == seed) & (frame.role == "forget")].truth_ratio
        assert s.KS_p[seed] == pytest.approx(stats.ks_2samp(a, ref.truth_ratio).pvalue)
    bad = ref.assign(fact_id="forget:99")
    with pytest.raises(ValueError, match="differ"):
        M.summarize(frame, bad)


def test_summarize_without_rouge_has_nan_utility(bb):
    f = M.evaluate(bb, {"retain": _facts()["retain"]}, rouge=False, **KW)
    s = M.summarize(f)
    assert math.isnan(s.RetainROUGE[0]) and math.isnan(s.ModelUtility[0]) and not math.isnan(s.RetainTR[0])
    assert math.isnan(s.ForgetLP[0]) and s.n_forget[0] == 0


def test_edit_context_is_entered_around_evaluation(bb):
    log, during = [], []

    @contextlib.contextmanager
    def installed():
        log.append("enter")
        try:
            yield
        finally:
            log.append("exit")

    h = bb.model.register_forward_hook(lambda *a: during.append(log[-1] if log else None))
    try:
        M.evaluate(bb, {"world_facts": _facts()["world_facts"]}, edit=installed, **KW)
    finally:
        h.remove()
    assert log == ["enter", "exit"]
    assert during and set(during) == {"enter"}  # every forward (scoring and generation) ran inside it

    log.clear()
    with pytest.raises(ValueError, match="no perturbed"):  # validation runs before the edit is entered
        M.evaluate(bb, {"forget": [Fact("q ?", "a .", "forget", 0)]}, edit=installed, **KW)
    assert log == []

    def failing_generation(*a, **k):
        raise RuntimeError("boom")

    mp = pytest.MonkeyPatch()
    mp.setattr(M, "generate_answers", failing_generation)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            M.evaluate(bb, {"world_facts": _facts()["world_facts"]}, edit=installed, **KW)
    finally:
        mp.undo()
    assert log == ["enter", "exit"]  # exited on error too

    with pytest.raises(TypeError, match="context manager"):
        M.evaluate(bb, {"world_facts": _facts()["world_facts"]}, edit=lambda: 3, **KW)


def test_evaluate_causal_backbone(tiny_tokenizer):
    arm = make_tiny_backbone(tiny_tokenizer, causal=True)
    f = M.evaluate(arm, {"forget": _facts()["forget"]}, seeds=(0, 1), **KW)
    assert len(f) == 4 and (f.logprob_stderr == 0).all()
    # exact log-probs: the seed does not matter
    np.testing.assert_array_equal(f[f.seed == 0].logprob.to_numpy(), f[f.seed == 1].logprob.to_numpy())


# --- validation --------------------------------------------------------------------------------
def test_validation_errors(bb):
    facts = _facts()
    with pytest.raises(ValueError, match="no splits"):
        M.evaluate(bb, {}, **KW)
    with pytest.raises(ValueError, match="'retain' has no facts"):
        M.evaluate(bb, {"retain": []}, **KW)
    with pytest.raises(ValueError, match="seeds is empty"):
        M.evaluate(bb, facts, seeds=(), **KW)
    no_pert = Fact("who ?", "alice .", "real_authors", 7)
    with pytest.raises(ValueError, match=r"split 'real_authors', fact real_authors:7: no perturbed_answers"):
        M.evaluate(bb, {"real_authors": [*facts["real_authors"], no_pert]}, **KW)
    no_para = Fact("who ?", "alice .", "forget10", 3, perturbed_answers=["bob ."])
    with pytest.raises(ValueError, match=r"split 'forget10', fact forget10:3: no paraphrased_answer"):
        M.evaluate(bb, {"forget10": [no_para]}, **KW)
    dup = facts["forget"][0]
    with pytest.raises(ValueError, match="duplicate fact_id 'forget:0'"):
        M.evaluate(bb, {"forget": [dup, dup]}, **KW)
    with pytest.raises(ValueError, match="unknown split"):
        M.evaluate(bb, facts, with_truth_ratio={"nope"}, **KW)
    # without a truth ratio, facts without perturbed answers are fine (and get NaN there)
    f = M.evaluate(bb, {"holdout": [no_pert]}, with_truth_ratio=False, rouge=False, **KW)
    assert len(f) == 1 and math.isnan(f.truth_ratio[0]) and f.n_perturbed[0] == 0
    f = M.evaluate(bb, {"holdout": [no_pert], "retain": facts["retain"]}, with_truth_ratio="retain", rouge=False, **KW)
    assert f.set_index("split").truth_ratio.notna().to_dict() == {"holdout": False, "retain": True}


def test_summarize_validation(frame):
    with pytest.raises(ValueError, match="lacks column"):
        M.summarize(frame.drop(columns=["truth_ratio"]))
    with pytest.raises(ValueError, match="empty"):
        M.summarize(frame.iloc[:0])
    two = pd.concat([frame, frame[frame.role == "forget"].assign(split="forget05")])
    with pytest.raises(ValueError, match="several forget splits"):
        M.summarize(two)


def test_split_names_load_the_perturbed_files(monkeypatch, bb):
    import timerome.data as D

    asked = []

    def fake_load(split, root=None, **kw):
        asked.append(split)
        role = M.split_role(split)
        para = None if role in ("real_authors", "world_facts") else "alice did ."
        return [Fact(f"who wrote it {i} ?", "alice wrote it .", split, i, paraphrased_answer=para,
                     perturbed_answers=["bob wrote it ."], entity_id=f"tofu_author_{i:03d}") for i in range(8)]

    monkeypatch.setattr(D, "load_tofu", fake_load)
    f = M.evaluate(bb, ["forget01", "retain", "real_authors", "world_facts_perturbed"], rouge=False,
                   max_examples=2, **KW)
    assert [s for s in asked if s != "retain_perturbed"] == ["forget01_perturbed", "real_authors_perturbed",
                                                              "world_facts_perturbed"]
    # "retain" is the first facts of the *test* authors of retain_perturbed, never a validation author
    test = S.split_authors([f"tofu_author_{i:03d}" for i in range(8)]).test
    assert f[f.split == "retain"].fact_id.tolist() == [f"retain_perturbed:{int(a[-3:])}" for a in test[:2]]
    assert f.split.tolist() == ["forget01"] * 2 + ["retain"] * 2 + ["real_authors"] * 2 + ["world_facts_perturbed"] * 2
    assert f.role.tolist() == ["forget"] * 2 + ["retain"] * 2 + ["real_authors"] * 2 + ["world_facts"] * 2


def test_summarize_on_a_hand_made_frame():
    """Every column of `summarize` from hand numbers (two examples per split, one seed)."""
    def rows(split, role, lp, prob, prob_norm, tr, rouge):
        return [dict(split=split, role=role, fact_id=f"{split}:{i}", seed=0, logprob=lp[i], prob=prob[i],
                     prob_norm=prob_norm[i], truth_ratio=tr[i], rouge_l=rouge[i]) for i in range(2)]

    frame = pd.DataFrame(
        rows("forget10", "forget", [-10, -20], [0.2, 0.4], [0.5, 0.5], [0.5, 4.0], [1.0, 0.5])
        + rows("retain", "retain", [-4, -6], [0.6, 0.8], [0.1, 0.1], [0.5, 1.5], [0.8, 0.4])
        + rows("real_authors", "real_authors", [-1, -3], [0.9, 0.9], [0.6, 0.8], [0.2, 0.6], [1.0, 0.0])
        + rows("world_facts", "world_facts", [-2, -2], [0.9, 0.9], [0.9, 0.5], [0.0 + 0.1, 0.3], [0.5, 0.5]))
    ref = pd.DataFrame(rows("forget10", "forget", [0, 0], [0, 0], [0, 0], [1.0, 0.9], [0, 0]))
    s = M.summarize(frame, ref).iloc[0]
    assert (s.ForgetLP, s.RetainLP, s.RealAuth, s.WorldFact) == (-15, -5, -2, -2)
    assert s.ForgetTR == pytest.approx((0.5 + 0.25) / 2)
    assert s.RetainTR == pytest.approx((0.5 + 0) / 2)
    assert s.RealAuthTR == pytest.approx((0.8 + 0.4) / 2)
    assert s.WorldFactTR == pytest.approx((0.9 + 0.7) / 2)
    assert (s.ForgetProb, s.RetainProb) == pytest.approx((0.3, 0.7))  # exp(-nll/token) on forget/retain
    assert (s.RealAuthProb, s.WorldFactProb) == pytest.approx((0.7, 0.7))  # normalised over the options
    assert (s.ForgetROUGE, s.RetainROUGE, s.RealAuthROUGE, s.WorldFactROUGE) == pytest.approx((0.75, 0.6, 0.5, 0.5))
    nine = [0.7, 0.6, 0.25, 0.7, 0.5, 0.6, 0.7, 0.5, 0.8]  # UTILITY_COLUMNS order
    assert [s[c] for c in M.UTILITY_COLUMNS] == pytest.approx(nine)
    assert s.ModelUtility == pytest.approx(stats.hmean(nine))
    assert s.KS_p == pytest.approx(stats.ks_2samp([0.5, 4.0], [1.0, 0.9]).pvalue)


def test_fact_deltas_match_facts_and_seeds():
    import pandas as pd

    from timerome.metrics import fact_deltas

    def frame(lp):
        return pd.DataFrame({"role": ["forget"] * 4 + ["retain"], "split": ["f"] * 4 + ["r"],
                             "fact_id": ["a", "b", "a", "b", "c"], "seed": [0, 0, 1, 1, 0], "logprob": lp})

    base, edited = frame([-1.0, -2.0, -1.5, -2.5, -9.0]), frame([-3.0, -2.0, -2.5, -4.5, -9.0])
    d = fact_deltas(edited, base, "forget")
    assert list(d.index) == ["a", "b"] and d.tolist() == [-1.5, -1.0]  # a: (-2 - 1) / 2, b: (0 - 2) / 2
    assert fact_deltas(edited, base, "retain").tolist() == [0.0]
    with pytest.raises(ValueError, match="different"):
        fact_deltas(edited.iloc[1:], base, "forget")
