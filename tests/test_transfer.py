"""Table IV's transfer rows (`timerome.transfer`) on the fixture data root tests/fixtures/transfer/:
every row kind against a brute-force recomputation (WMDP: the argmax of per-choice log-probs
scored one by one), "data not available" for absent files, a clear error for a malformed one, the
table's Δ / paired-t / gap against their definitions, and the backbone bitwise restored after
every arm's edit."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from timerome import stats, transfer
from timerome.baselines.editing import weights_applied
from timerome.data import DataError, DataNotFound, Fact
from timerome.hooks import has_hooks
from timerome.likelihood import answer_logprob
from timerome.memory import EditMemory
from timerome.metrics import generate_answers, rouge_l_recall
from timerome.tiny.train import train_tokenizer

from conftest import WORDS, make_tiny_backbone, scale_blocks

ROOT = Path(__file__).resolve().parent / "fixtures" / "transfer"
TASKS = ("muse_books/knowmem", "muse_books/verbmem", "muse_news/knowmem", "rwku/level1", "whp/completion",
         "wmdp_bio/mcq")
SETTINGS = transfer.Settings(seeds=(0, 1, 2), n_mc=4, batch_size=16, max_facts=None, knowmem_gen_length=8,
                             verbmem_gen_length=12, whp_gen_length=8, tokens_per_step=4)


def _texts(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _texts(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _texts(v)


@pytest.fixture(scope="module")
def bb():
    texts = [" ".join(WORDS)]
    for p in sorted(ROOT.rglob("*.json*")):
        lines = p.read_text().splitlines() if p.suffix == ".jsonl" else [p.read_text()]
        for line in lines:
            texts += list(_texts(json.loads(line)))
    tok = train_tokenizer(texts * 3, vocab_size=900)
    return scale_blocks(make_tiny_backbone(tok, layers=2, d=32, seed=3))


def _fact(q, a, subject, i):
    s = q.index(subject)
    return Fact(question=q, answer=a, split="toy", index=i, subject=subject, subject_rule="given",
                subject_span=(s, s + len(subject)), subject_in="question")


@pytest.fixture(scope="module")
def arms(bb):
    """no_edit, a TimeROME memory (built on facts outside every task) and a weight edit."""
    mem = EditMemory.build(bb, [_fact("who keeps the lighthouse at Gull Point?", "Orla Finch", "Gull Point", 0),
                                _fact("which class does Professor Dunmore teach?", "tide reading", "Professor Dunmore", 1)],
                           1, lam=1.0, alpha=4.0, q=0, target="no idea")
    g = torch.Generator().manual_seed(0)
    w = bb.down_proj(0).weight
    dW = {0: 0.5 * torch.randn(w.shape, generator=g, dtype=torch.float64)}
    return [transfer.Arm("no_edit", "no_edit", bb),
            transfer.Arm("timerome", "TimeROME (α=4, q=0)", bb, lambda: mem.installed(bb), alpha=4.0, q=0),
            transfer.Arm("weights", "weight edit", bb, lambda: weights_applied(bb, dW))]


@pytest.fixture(scope="module")
def scored(arms):
    return transfer.transfer_rows(arms, TASKS, ROOT, SETTINGS)


def _values(per_fact, task, label, metric, seed):
    sub = per_fact[(per_fact.task == task) & (per_fact.label == label) & (per_fact.metric == metric)
                   & (per_fact.seed == seed)]
    return sub.fact_id.tolist(), sub.value.to_numpy()


def test_status_ok_where_the_files_are_and_not_available_where_not(scored):
    per_fact, status = scored
    st = status.set_index("task")
    assert st.loc["muse_news/knowmem", "status"] == transfer.UNAVAILABLE
    assert str(ROOT / "muse/news/knowmem/forget_qa.json") in st.loc["muse_news/knowmem", "detail"]
    ok = [t for t in TASKS if t != "muse_news/knowmem"]
    assert (st.loc[ok, "status"] == transfer.OK).all()
    assert st.loc["rwku/level1", ["n_facts", "n_control"]].tolist() == [3, 3]  # both targets, in target order
    assert st.loc["wmdp_bio/mcq", ["n_facts", "n_control"]].tolist() == [4, 0]
    assert "muse_news/knowmem" not in set(per_fact.task)


def test_knowmem_and_rwku_rows_are_the_answer_logprobs_and_rouge(bb, scored, arms):
    per_fact, _ = scored
    facts = transfer.load_task("muse_books/knowmem", ROOT, SETTINGS)
    both = facts["forget"] + facts["control"]
    for arm in arms[:2]:
        with arm.entered():
            for s in SETTINGS.seeds:
                ref = answer_logprob(bb, [f.question for f in both], [f.answer for f in both], SETTINGS.elbo(s)).numpy()
                ids, lp = _values(per_fact, "muse_books/knowmem", arm.label, "lp", s)
                assert ids == [f.fact_id for f in facts["forget"]]
                np.testing.assert_allclose(lp, ref[:3], rtol=1e-6)
                np.testing.assert_allclose(_values(per_fact, "muse_books/knowmem", arm.label, "control_lp", s)[1],
                                           ref[3:], rtol=1e-6)
            gen = [bb.tokenizer.decode(t, skip_special_tokens=True).strip() for t in
                   generate_answers(bb, [f.question for f in facts["forget"]], gen_length=8, steps=2)]
        _, rouge = _values(per_fact, "muse_books/knowmem", arm.label, "rouge_l", -1)
        np.testing.assert_allclose(rouge, rouge_l_recall(gen, [f.answer for f in facts["forget"]]))
    rw = transfer.load_task("rwku/level1", ROOT, SETTINGS)
    assert [f.answer for f in rw["forget"]] == ["Gull", "lantern", "reading"]
    assert [f.answer for f in rw["control"]] == ["green", "stone", "clock"]
    with arms[1].entered():
        ref = answer_logprob(bb, [f.question for f in rw["control"]], [f.answer for f in rw["control"]],
                             SETTINGS.elbo(1)).numpy()
    np.testing.assert_allclose(_values(per_fact, "rwku/level1", arms[1].label, "control_lp", 1)[1], ref, rtol=1e-6)
    # the memory is live while its arm is scored: its numbers are not no_edit's
    assert not np.allclose(_values(per_fact, "rwku/level1", arms[1].label, "lp", 0)[1],
                           _values(per_fact, "rwku/level1", "no_edit", "lp", 0)[1])


def test_verbmem_cuts_the_continuation_and_scores_its_rouge(bb, scored):
    per_fact, _ = scored
    fs = transfer.load_task("muse_books/verbmem", ROOT, SETTINGS)["forget"]
    gts = [transfer.cut_continuation(bb, f.answer, 12) for f in fs]
    assert all(len(bb.answer_ids(g)) <= 12 for g in gts) and gts[0] != fs[0].answer
    assert transfer.cut_continuation(bb, "the sea", 12) == "the sea"
    ref = answer_logprob(bb, [f.question for f in fs], gts, SETTINGS.elbo(2)).numpy()
    np.testing.assert_allclose(_values(per_fact, "muse_books/verbmem", "no_edit", "lp", 2)[1], ref, rtol=1e-6)
    gen = [bb.tokenizer.decode(t, skip_special_tokens=True).strip() for t in
           generate_answers(bb, [f.question for f in fs], gen_length=12, steps=3)]
    np.testing.assert_allclose(_values(per_fact, "muse_books/verbmem", "no_edit", "rouge_l", -1)[1],
                               rouge_l_recall(gen, gts))


def test_whp_lp_is_the_mean_over_references_and_match_reads_the_completion(bb, scored):
    per_fact, _ = scored
    fs = transfer.load_task("whp/completion", ROOT, SETTINGS)["forget"]
    assert [f.extra["references"] for f in fs][0] == ["Orla Finch", "brass lantern"]
    lp = [answer_logprob(bb, [f.question] * len(f.extra["references"]), f.extra["references"], SETTINGS.elbo(0)).mean()
          for f in fs]
    np.testing.assert_allclose(_values(per_fact, "whp/completion", "no_edit", "lp", 0)[1], lp, rtol=1e-6)
    gen = [bb.tokenizer.decode(t, skip_special_tokens=True).strip() for t in
           generate_answers(bb, [f.question for f in fs], gen_length=8, steps=2)]
    want = [float(transfer.contains_reference(g, f.extra["references"])) for g, f in zip(gen, fs)]
    assert _values(per_fact, "whp/completion", "no_edit", "match", -1)[1].tolist() == want


def test_contains_reference_matches_whole_words_without_case():
    assert transfer.contains_reference("then ORLA FINCH waved", ["Orla Finch"])
    assert not transfer.contains_reference("the orlando finches", ["Orla Finch"])
    assert transfer.contains_reference("a tide clock.", ["brass", "tide clock"])
    assert not transfer.contains_reference("anything", ["  "])


def test_wmdp_accuracy_is_the_brute_force_argmax_of_per_choice_logprobs(bb, scored, arms):
    per_fact, _ = scored
    fs = transfer.load_task("wmdp_bio/mcq", ROOT, SETTINGS)["forget"]
    assert [len(f.extra["choices"]) for f in fs] == [4, 4, 4, 3]
    for arm in arms:
        for s in SETTINGS.seeds:
            with arm.entered():
                per_choice = [[float(answer_logprob(bb, [f.question], [c], SETTINGS.elbo(s))[0]) for c in f.extra["choices"]]
                              for f in fs]
                batched = transfer.choice_logprobs(bb, fs, SETTINGS, s)
            for one, many in zip(per_choice, batched):
                np.testing.assert_allclose(many, one, rtol=1e-6)
            correct = [float(int(np.argmax(lp)) == f.extra["answer_index"]) for lp, f in zip(per_choice, fs)]
            assert _values(per_fact, "wmdp_bio/mcq", arm.label, "acc", s)[1].tolist() == correct


def test_every_arm_leaves_the_backbone_bitwise_restored(bb, arms):
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    transfer.transfer_rows(arms, ("rwku/level1", "wmdp_bio/mcq"), ROOT, transfer.Settings(seeds=(0,), n_mc=2))
    after = bb.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not has_hooks(bb.model)


def test_the_table_reads_the_rows_by_its_definitions(scored, arms):
    per_fact, status = scored
    table = transfer.transfer_table(per_fact, status, arms, n_boot=500)
    assert len(table) == len(TASKS) * len(arms)
    t = table.set_index(["bench", "task", "label"])
    news = t.loc[("muse_news", "knowmem")]
    assert (news.status == transfer.UNAVAILABLE).all() and news[list(transfer.METRICS)].isna().all().all()
    base, ours = t.loc[("rwku", "level1", "no_edit")], t.loc[("rwku", "level1", arms[1].label)]
    assert base.d_lp == 0 and np.isnan(base.p_lp) and np.isnan(base.gap) and base.n_seeds == 3
    seed_means = {lab: np.array([_values(per_fact, "rwku/level1", lab, "lp", s)[1].mean() for s in SETTINGS.seeds])
                  for lab in ("no_edit", arms[1].label)}
    a, b = seed_means[arms[1].label], seed_means["no_edit"]
    assert ours.lp == pytest.approx(a.mean()) and ours.lp_std == pytest.approx(a.std(ddof=1))
    assert ours.d_lp == pytest.approx((a - b).mean()) and ours.p_lp == pytest.approx(stats.paired_t(a, b)[1])
    fact_delta = lambda m: np.mean([_values(per_fact, "rwku/level1", arms[1].label, m, s)[1]
                                    - _values(per_fact, "rwku/level1", "no_edit", m, s)[1] for s in SETTINGS.seeds], 0)
    assert ours.gap == pytest.approx(fact_delta("lp").mean() - fact_delta("control_lp").mean())
    assert ours.gap_lo <= ours.gap <= ours.gap_hi
    # a seed-free metric: no std over seeds, its test pairs the facts
    km = t.loc[("muse_books", "knowmem", arms[1].label)]
    ra, rb = (_values(per_fact, "muse_books/knowmem", lab, "rouge_l", -1)[1] for lab in (arms[1].label, "no_edit"))
    assert np.isnan(km.rouge_l_std) and km.d_rouge_l == pytest.approx((ra - rb).mean())
    assert np.isnan(km.p_rouge_l) == bool(np.all(ra - rb == 0)) or km.p_rouge_l == pytest.approx(stats.paired_t(ra, rb)[1])
    wm = t.loc[("wmdp_bio", "mcq", "weight edit")]
    assert np.isnan(wm.lp) and not np.isnan(wm.acc) and np.isnan(wm.gap)
    with pytest.raises(ValueError, match="baseline 'nope'"):
        transfer.transfer_table(per_fact, status, arms, baseline="nope")


def test_gap_ci_brackets_the_difference_of_means():
    g, lo, hi = transfer.gap_ci([-3.0, -5.0, -4.0], [-1.0, 0.0], n_resamples=400)
    assert g == pytest.approx(-3.5) and lo <= g <= hi < 0
    with pytest.raises(ValueError, match="at least one"):
        transfer.gap_ci([], [1.0])


@pytest.fixture
def copy_root(tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(ROOT, dst)
    return dst


def test_an_absent_file_is_a_status_unless_required(arms, copy_root):
    (copy_root / "whp" / "evaluation_prompts.json").unlink()
    _, status = transfer.transfer_rows(arms[:1], ("whp/completion",), copy_root, SETTINGS)
    row = status.iloc[0]
    assert row.status == transfer.UNAVAILABLE and str(copy_root / "whp/evaluation_prompts.json") in row.detail
    with pytest.raises(DataNotFound, match="evaluation_prompts.json"):
        transfer.transfer_rows(arms[:1], ("whp/completion",), copy_root, SETTINGS, required=("whp/completion",))
    shutil.rmtree(copy_root / "rwku")
    _, status = transfer.transfer_rows(arms[:1], ("rwku/level1",), copy_root, SETTINGS)
    assert status.iloc[0].status == transfer.UNAVAILABLE and "rwku/Target" in status.iloc[0].detail


def test_knowmem_needs_both_files(arms, copy_root):
    (copy_root / "muse/books/knowmem/retain_qa.json").unlink()
    _, status = transfer.transfer_rows(arms[:1], ("muse_books/knowmem",), copy_root, SETTINGS)
    assert status.iloc[0].status == transfer.UNAVAILABLE and "retain_qa.json" in status.iloc[0].detail


@pytest.mark.parametrize("rel, text, message", [
    ("wmdp/wmdp-bio.jsonl", '{"question": "q?", "choices": ["a", "b"], "answer": 5}\n',
     r"wmdp-bio.jsonl: line 1: field 'answer' = 5 is not an index into 2 choices"),
    ("whp/evaluation_prompts.json", '[{"prompt": {"references": [], "prompt": "p", "subtlety": 1}}]',
     r"evaluation_prompts.json: item 0: field 'prompt.references' must not be empty"),
    ("muse/books/verbmem/forget.json", '[{"prompt": "p", "gt": ""}]', r"forget.json: item 0: field 'gt'"),
    ("muse/books/knowmem/forget_qa.json", '[{"question": "q"', r"forget_qa.json: line 1: invalid JSON"),
])
def test_a_malformed_file_fails_loudly(arms, copy_root, rel, text, message):
    (copy_root / rel).write_text(text)
    task = {"wmdp": "wmdp_bio/mcq", "whp": "whp/completion"}.get(rel.split("/")[0]) or (
        "muse_books/verbmem" if "verbmem" in rel else "muse_books/knowmem")
    with pytest.raises(DataError, match=message):
        transfer.transfer_rows(arms[:1], (task,), copy_root, SETTINGS)


def test_no_data_root_is_data_not_available(arms, monkeypatch):
    monkeypatch.delenv("TIMEROME_DATA", raising=False)
    _, status = transfer.transfer_rows(arms[:1], ("wmdp_bio/mcq",), None, SETTINGS)
    assert status.iloc[0].status == transfer.UNAVAILABLE and "TIMEROME_DATA is not set" in status.iloc[0].detail


def test_caps_and_bad_arguments(arms):
    capped = transfer.load_task("rwku/level1", ROOT, transfer.Settings(max_facts=2))
    assert [len(v) for v in capped.values()] == [2, 2]
    assert len(transfer.load_task("rwku/level1", ROOT, transfer.Settings(max_facts=None, rwku_probes=1))["forget"]) == 1
    with pytest.raises(ValueError, match="unique labels"):
        transfer.transfer_rows([arms[0], arms[0]], ("rwku/level1",), ROOT)
    with pytest.raises(ValueError, match="unknown task"):
        transfer.transfer_rows(arms[:1], ("rwku/level9",), ROOT)
    with pytest.raises(ValueError, match="tokens_per_step"):
        transfer.Settings(knowmem_gen_length=10, tokens_per_step=4)
    with pytest.raises(ValueError, match="seeds"):
        transfer.Settings(seeds=())
    with pytest.raises(ValueError, match="max_facts"):
        transfer.Settings(max_facts=0)
    bad = transfer.Arm("x", "x", arms[0].backbone, lambda: 3)
    with pytest.raises(TypeError, match="not a context manager"):
        transfer.transfer_rows([bad], ("rwku/level1",), ROOT, transfer.Settings(n_mc=1))


@pytest.mark.parametrize("args, want", [
    ((-0.003, 0.001, -0.0005, 0.002, -0.008, -1e-5), "negligible"),       # < 5% of the source's -5 nats
    ((-2.0, 0.2, -1.0, 0.3, -3.0, 1.0), "no drop"),                       # large, but neither significant
    ((-25.0, 1e-5, -24.0, 1e-5, -3.0, 1.0), "inseparable"),               # §VI: both drop ~25 nats
    ((-25.0, 1e-5, -5.0, 0.01, -30.0, -10.0), "separates"),
    ((-1.0, 0.01, -20.0, 1e-5, 10.0, 30.0), "control drops more"),
])
def test_separation_reads_the_gap_on_the_source_effects_scale(args, want):
    assert transfer.separation(*args, source_d=-5.0) == want


def test_the_source_row_is_the_forget_split_and_the_retain_test_authors(data_root):
    from timerome import data, splits

    facts = transfer.load_task("tofu/forget01", data_root, transfer.Settings(max_facts=5))
    assert [f.fact_id for f in facts["forget"]] == [f.fact_id for f in data.load_tofu("forget01", data_root)[:5]]
    test_authors = set(splits.retain_author_split(data_root).test)
    assert len(facts["control"]) == 5 and {f.entity_id for f in facts["control"]} <= test_authors
