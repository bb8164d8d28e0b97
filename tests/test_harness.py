"""timerome.harness: the lm-evaluation-harness model over a Backbone, its local TOFU tasks, the edit."""
import contextlib
import math

import numpy as np
import pytest
import torch

from conftest import make_tiny_backbone
from timerome import harness
from timerome.backbones import Backbone
from timerome.likelihood import ELBOOptions, answer_logprob, encode_example
from timerome.memory import EditMemory
from timerome.sampler import generate, generate_autoregressive


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Req:
    """The part of lm_eval's Instance the model reads."""

    def __init__(self, *args, task="t", doc=0):
        self.args, self.task_name, self.doc_id = args, task, doc


def raw(bb):
    """The reference view: the same model, prompts and answers used verbatim."""
    return Backbone(bb.model, bb.tokenizer, bb.family, mask_id=bb.mask_id, name=bb.name,
                    prompt_template="{question}", answer_prefix="")


PAIRS = [("alice wrote", " the red book"), ("bob painted a", " blue sea near rome"), ("who wrote what ?", " carol"),
         ("question answer", " snow songs"), ("alice wrote", " the blue sea")]
DOCS = [{"question": "alice wrote", "choices": ["the red book", "the blue sea", "snow"], "gold": 0},
        {"question": "bob painted", "choices": ["songs about snow", "a blue sea"], "gold": 1},
        {"question": "carol sings", "choices": ["songs", "red book in paris", "rome", "alice"], "gold": 2},
        {"question": "who wrote what", "choices": ["alice", "bob"], "gold": 0}]


@pytest.fixture
def causal_backbone(tiny_tokenizer):
    return make_tiny_backbone(tiny_tokenizer, causal=True, seed=1)


def snapshot(bb):
    return {k: v.detach().clone() for k, v in bb.model.state_dict().items()}


def n_hooks(bb):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in bb.model.modules())


def assert_restored(bb, before):
    after = bb.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert n_hooks(bb) == 0


# --- loglikelihood = timerome.likelihood -------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_loglikelihood_is_answer_logprob_exactly(tiny_tokenizer, causal):
    bb = make_tiny_backbone(tiny_tokenizer, causal=causal)
    lm = harness.HarnessLM(bb, n_mc=6, seed=3, batch_size=7, check_greedy=False)
    got = lm.loglikelihood([Req(c, a) for c, a in PAIRS])
    ref = answer_logprob(raw(bb), [c for c, _ in PAIRS], [a for _, a in PAIRS], ELBOOptions(n_mc=6, seed=3, batch_size=7))
    assert [v for v, _ in got] == ref.tolist()  # bitwise: the same estimator, masks and batches
    assert all(g is False for _, g in got)


def test_trailing_context_space_moves_to_the_continuation(tiny_backbone):
    lm = harness.HarnessLM(tiny_backbone, n_mc=4, batch_size=1, check_greedy=False)
    (a, _), = lm.loglikelihood([Req("alice wrote ", "the red book")])
    (b, _), = lm.loglikelihood([Req("alice wrote", " the red book")])
    assert a == b


def test_causal_loglikelihood_is_the_exact_token_sum(causal_backbone):
    bb = causal_backbone
    lm = harness.HarnessLM(bb, batch_size=1, check_greedy=False)
    for (ctx, cont), (v, _) in zip(PAIRS, lm.loglikelihood([Req(c, a) for c, a in PAIRS])):
        c, a = raw(bb).prompt_ids(ctx), raw(bb).answer_ids(cont)
        lp = torch.log_softmax(bb.logits(torch.tensor([c + a])).double()[0], -1)
        brute = sum(float(lp[len(c) - 1 + j, t]) for j, t in enumerate(a))
        assert v == pytest.approx(brute, abs=1e-4)


def test_is_greedy_matches_teacher_forced_argmax_on_a_causal_model(causal_backbone):
    bb = causal_backbone
    c = raw(bb).prompt_ids("alice wrote")
    greedy = generate_autoregressive(bb, [c], max_new_tokens=3)[0, len(c):].tolist()
    text = bb.tokenizer.decode(greedy)
    assert raw(bb).answer_ids(text) == greedy  # the greedy tokens round-trip through text
    lm = harness.HarnessLM(bb, check_greedy=True)
    reqs = [Req("alice wrote", text), *(Req(x, y) for x, y in PAIRS)]
    for req, (_, g) in zip(reqs, lm.loglikelihood(reqs)):
        cc, a = raw(bb).prompt_ids(req.args[0].rstrip()), raw(bb).answer_ids(req.args[1])
        am = bb.logits(torch.tensor([cc + a]))[0].argmax(-1).tolist()
        assert g == all(am[len(cc) - 1 + j] == t for j, t in enumerate(a))
    assert lm.loglikelihood(reqs[:1])[0][1] is True


def test_is_greedy_on_an_mdlm_is_the_sampler_decoding(tiny_backbone):
    bb = tiny_backbone
    lm = harness.HarnessLM(bb, check_greedy=True, n_mc=2)
    out = lm.loglikelihood([Req(c, a) for c, a in PAIRS])
    for (ctx, cont), (_, g) in zip(PAIRS, out):
        c, a = raw(bb).prompt_ids(ctx), raw(bb).answer_ids(cont)
        dec = generate(bb, [c], gen_length=len(a), steps=len(a))[0, len(c):].tolist()
        assert g == (dec == a)


def test_rolling_is_the_elbo_of_the_text_after_bos(tiny_backbone):
    texts = ["alice wrote the red book", "bob painted a blue sea"]
    lm = harness.HarnessLM(tiny_backbone, n_mc=5, batch_size=3)
    got = lm.loglikelihood_rolling([Req(t) for t in texts])
    ref = answer_logprob(raw(tiny_backbone), ["", ""], texts, ELBOOptions(n_mc=5, batch_size=3))
    assert got == ref.tolist()


# --- generate_until = the sampler ----------------------------------------------------------------------
def test_generate_until_is_the_sampler_cut_at_eos_and_until(tiny_backbone):
    bb = tiny_backbone
    lm = harness.HarnessLM(bb, steps=4, gen_batch_size=2)
    ctxs = ["alice wrote", "bob painted a", "who wrote what ?"]
    full = lm.generate_until([Req(c, {"until": [], "max_gen_toks": 8}) for c in ctxs])
    rows = generate(bb, [raw(bb).prompt_ids(c) for c in ctxs], gen_length=8, steps=4)[:, -8:].tolist()
    for f, row in zip(full, rows):
        row = row[:row.index(bb.eos_id)] if bb.eos_id in row else row
        assert f == bb.tokenizer.decode(row, skip_special_tokens=True)
    stop = full[0][2]  # a character the first generation contains after its start
    cut = lm.generate_until([Req(c, {"until": ["\n", stop], "max_gen_toks": 8}) for c in ctxs])
    assert cut == [f.split(stop, 1)[0] for f in full] and len(cut[0]) <= 2


def test_generate_until_on_a_causal_model_is_greedy_decoding(causal_backbone):
    bb = causal_backbone
    lm = harness.HarnessLM(bb)
    got = lm.generate_until([Req("alice wrote", {"until": [], "max_gen_toks": 5})])
    row = generate_autoregressive(bb, [raw(bb).prompt_ids("alice wrote")], max_new_tokens=5)[0, -5:].tolist()
    row = row[:row.index(bb.eos_id)] if bb.eos_id in row else row
    assert got == [bb.tokenizer.decode(row, skip_special_tokens=True)]


# --- end to end through lm-eval -----------------------------------------------------------------------
def test_multiple_choice_task_end_to_end_matches_brute_force(tiny_backbone):
    bb = tiny_backbone
    lm = harness.HarnessLM(bb, n_mc=4, seed=1, batch_size=1, check_greedy=False)  # one row per forward
    res = harness.run_tasks(lm, [harness.multiple_choice_task("toy_mc", DOCS, template="{question} :")])
    samples = sorted(res.raw[0]["samples"]["toy_mc"], key=lambda s: s["doc_id"])
    opts = ELBOOptions(n_mc=4, seed=1, batch_size=1)
    acc, acc_norm, gold = [], [], []
    for d, s in zip(DOCS, samples):
        lls = answer_logprob(raw(bb), [f"{d['question']} :"] * len(d["choices"]), [" " + c for c in d["choices"]],
                             opts).numpy()
        assert [r[0] for r in s["filtered_resps"]] == lls.tolist()
        acc.append(float(np.argmax(lls) == d["gold"]))
        acc_norm.append(float(np.argmax(lls / np.array([len(c) for c in d["choices"]])) == d["gold"]))
        gold.append(float(lls[d["gold"]]))
    t = res.table.set_index("metric")
    assert list(res.table.task) == ["toy_mc"] * 3 and list(t.index) == ["acc", "acc_norm", "gold_logprob"]
    assert t.loc["acc", "value"] == np.mean(acc) and t.loc["acc_norm", "value"] == np.mean(acc_norm)
    assert t.loc["gold_logprob", "value"] == pytest.approx(np.mean(gold), rel=1e-12)
    assert res.samples["toy_mc", "gold_logprob"].tolist() == gold
    assert t.loc["acc", "n"] == len(DOCS)
    assert t.loc["acc", "stderr"] == pytest.approx(np.std(acc, ddof=1) / math.sqrt(len(acc)))
    assert res.samples["toy_mc", "acc"].tolist() == acc


def test_generation_task_end_to_end(tiny_backbone):
    bb = tiny_backbone
    lm = harness.HarnessLM(bb, steps=4)
    docs = [{"question": "alice wrote", "answer": "the red book"}, {"question": "bob painted", "answer": "a blue sea"}]
    res = harness.run_tasks(lm, [harness.generation_task("toy_gen", docs, template="{question} :", max_gen_toks=4)])
    direct = lm.generate_until([Req(f"{d['question']} :", {"until": ["\n"], "max_gen_toks": 4}) for d in docs])
    from timerome.metrics import rouge_l_recall
    em = [float(g.strip() == d["answer"]) for g, d in zip(direct, docs)]
    rl = [rouge_l_recall(g.strip(), d["answer"]) for g, d in zip(direct, docs)]
    assert res.samples["toy_gen", "exact_match"].tolist() == em
    assert res.samples["toy_gen", "rouge_l"].tolist() == rl
    assert res.table.set_index("metric").loc["rouge_l", "value"] == pytest.approx(np.mean(rl))


def test_runs_are_deterministic(tiny_backbone):
    def run():
        lm = harness.HarnessLM(tiny_backbone, n_mc=3, seed=2, check_greedy=False)
        return harness.run_tasks(lm, [harness.multiple_choice_task("toy_mc", DOCS)]).raw[0]["samples"]["toy_mc"]
    a, b = run(), run()
    assert [s["filtered_resps"] for s in a] == [s["filtered_resps"] for s in b]


def test_tofu_task_scores_the_backbones_own_sequences(data_root):
    import timerome
    from timerome.data import load_tofu

    bb = timerome.load_backbone("tiny-arm")  # causal: the harness value is answer_logprob's exactly
    task = harness.tofu_task("tofu_world_facts_mc", backbone=bb, root=data_root, max_examples=3)
    lm = harness.HarnessLM(bb, batch_size=1, check_greedy=False)
    res = harness.run_tasks(lm, [task])
    facts = load_tofu("world_facts_perturbed", data_root)[:3]
    for f, s in zip(facts, sorted(res.raw[0]["samples"]["tofu_world_facts_mc"], key=lambda s: s["doc_id"])):
        choices = [f.answer, *f.perturbed_answers]
        for (ctx, cont), a in zip(s["arguments"], choices):  # the very tokens timerome scores
            assert (raw(bb).prompt_ids(ctx), raw(bb).answer_ids(cont)) == encode_example(bb, f.question, a)
        ref = answer_logprob(bb, [f.question] * len(choices), choices, batch_size=1)
        assert [r[0] for r in s["filtered_resps"]] == ref.tolist()
    gen = harness.tofu_task("tofu_real_authors_gen", backbone=bb, root=data_root, max_examples=2)
    assert gen["output_type"] == "generate_until"


# --- the edit ------------------------------------------------------------------------------------------
def memory(bb, alpha=50.0):
    g = torch.Generator().manual_seed(0)
    U, D = torch.randn(3, bb.hidden_size, generator=g), torch.randn(3, bb.hidden_size, generator=g)
    return EditMemory(U, D, lam=0.1, alpha=alpha, q=0, layer=0, module="resid")


def test_edit_is_active_inside_and_the_model_restored_after(tiny_backbone):
    bb = tiny_backbone
    before = snapshot(bb)
    reqs = [Req(c, a) for c, a in PAIRS]
    base = harness.HarnessLM(bb, n_mc=4, check_greedy=False).loglikelihood(reqs)
    seen = []
    mem = memory(bb)

    @contextlib.contextmanager
    def spy():
        with mem.installed(bb):
            seen.append(n_hooks(bb))
            yield

    edited = harness.HarnessLM(bb, edit=spy, n_mc=4, check_greedy=False)
    out = edited.loglikelihood(reqs)
    assert seen == [1] and all(a[0] != b[0] for a, b in zip(out, base))
    assert_restored(bb, before)
    assert harness.HarnessLM(bb, n_mc=4, check_greedy=False).loglikelihood(reqs) == base
    # the memory itself is accepted as the edit, and is the same edit
    assert harness.HarnessLM(bb, edit=mem, n_mc=4, check_greedy=False).loglikelihood(reqs) == out
    gen = harness.HarnessLM(bb, edit=mem).generate_until([Req("alice wrote", {"until": [], "max_gen_toks": 4})])
    assert isinstance(gen[0], str) and n_hooks(bb) == 0
    assert_restored(bb, before)


def test_model_restored_after_an_exception_inside_the_edit(tiny_backbone):
    bb = tiny_backbone
    before = snapshot(bb)

    @contextlib.contextmanager
    def weight_edit():  # an in-place weight edit that restores itself on exit
        p = bb.embedding.weight
        old = p.detach().clone()
        with torch.no_grad():
            p.add_(1.0)
        try:
            yield
        finally:
            with torch.no_grad():
                p.copy_(old)

    long = "alice " * 200  # past the model's 128 positions: the forward raises inside the edit
    for edit in (memory(bb), weight_edit):
        lm = harness.HarnessLM(bb, edit=edit, max_length=10_000, check_greedy=False)
        with pytest.raises(ValueError, match="max_len"):
            lm.loglikelihood([Req("alice wrote", " the red book"), Req(long, " snow")])
        assert_restored(bb, before)
        with pytest.raises(ValueError, match="max_len"):
            lm.generate_until([Req(long, {"until": [], "max_gen_toks": 4})])
        assert_restored(bb, before)


# --- bad inputs -----------------------------------------------------------------------------------------
def test_bad_edits_are_refused(tiny_backbone):
    bb = tiny_backbone
    with pytest.raises(TypeError, match="callable"):
        harness.HarnessLM(bb, edit=3)
    with pytest.raises(TypeError, match="entered only once"):
        harness.HarnessLM(bb, edit=contextlib.nullcontext())
    lm = harness.HarnessLM(bb, edit=lambda: 5, check_greedy=False)
    with pytest.raises(TypeError, match="not a context manager"):
        lm.loglikelihood([Req("alice", " wrote")])
    with pytest.raises(ValueError, match="not both"):
        harness.HarnessLM(bb, edit=memory(bb), memory="somewhere")
    with pytest.raises(TypeError, match="Backbone"):
        harness.HarnessLM(object())


@pytest.mark.parametrize("kw, match", [({"n_mc": 0}, "n_mc"), ({"batch_size": "auto"}, "no 'auto'"),
                                       ({"seed": -1}, "seed"), ({"remasking": "best"}, "remasking"),
                                       ({"steps": 2.5}, "steps")])
def test_bad_settings_are_refused(tiny_backbone, kw, match):
    with pytest.raises(ValueError, match=match):
        harness.HarnessLM(tiny_backbone, **kw)


def test_bad_requests_name_the_request(tiny_backbone):
    lm = harness.HarnessLM(tiny_backbone, check_greedy=False)
    with pytest.raises(ValueError, match=r"request 1 \(t, doc 7\): continuation '' encodes to no tokens"):
        lm.loglikelihood([Req("alice", " wrote"), Req("alice", "", doc=7)])
    with pytest.raises(ValueError, match="more than the model's context of 128"):
        lm.loglikelihood([Req("alice " * 200, " wrote")])
    with pytest.raises(ValueError, match="expected \\(context, continuation\\)"):
        lm.loglikelihood([Req("alice")])
    with pytest.raises(ValueError, match=r"unsupported generation option\(s\) \['top_p'\]"):
        lm.generate_until([Req("alice", {"until": [], "top_p": 0.9})])
    with pytest.raises(ValueError, match="max_gen_toks"):
        lm.generate_until([Req("alice", {"max_gen_toks": 0})])
    with pytest.raises(ValueError, match="more than the model's context"):
        lm.generate_until([Req("alice", {"max_gen_toks": 200})])
    with pytest.raises(ValueError, match="one window"):
        lm.loglikelihood_rolling([Req("alice " * 200)])
    assert lm.loglikelihood([]) == [] and lm.generate_until([]) == []


def test_bad_tasks_are_refused(tiny_backbone):
    with pytest.raises(ValueError, match="doc 1: gold=5"):
        harness.multiple_choice_task("x", [DOCS[0], {**DOCS[1], "gold": 5}])
    with pytest.raises(ValueError, match=">= 2 non-empty choice"):
        harness.multiple_choice_task("x", [{"question": "q", "choices": ["a"], "gold": 0}])
    with pytest.raises(ValueError, match="no documents"):
        harness.generation_task("x", [])
    with pytest.raises(ValueError, match="unknown local task 'tofu_nope'"):
        harness.tofu_task("tofu_nope")
    lm = harness.HarnessLM(tiny_backbone, check_greedy=False)
    task = harness.multiple_choice_task("toy_mc", DOCS)
    with pytest.raises(ValueError, match="duplicate task names"):
        harness.run_tasks(lm, [task, task])
    with pytest.raises(ValueError, match="not run"):
        harness.run_tasks(lm, [task], num_fewshot={"other": 1})
    with pytest.raises(ValueError, match="no tasks"):
        harness.run_tasks(lm, [])
    with pytest.raises(TypeError, match="HarnessLM"):
        harness.run_tasks(object(), [task])


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    cls = get_model("timerome")
    assert cls is harness.HarnessLM
    lm = cls.create_from_arg_string("backbone=tiny-mdlm,n_mc=2,seed=5", {"batch_size": 8, "device": "cpu"})
    assert (lm.elbo.n_mc, lm.elbo.seed, lm.elbo.batch_size, lm.backbone.name) == (2, 5, 8, "tiny-mdlm")
    assert lm.max_length == 256


def test_paired_delta_is_the_mean_difference_and_its_standard_error():
    d, se = harness.paired_delta([1, 0, 1, 1], [1, 1, 0, 0])
    diff = np.array([0, -1, 1, 1])
    assert d == diff.mean() and se == pytest.approx(diff.std(ddof=1) / 2)
    with pytest.raises(ValueError, match="equal-length"):
        harness.paired_delta([1, 0], [1])
