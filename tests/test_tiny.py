"""The tiny backbone family: architecture, its family's hook points, and the training recipe."""
import pytest
import torch

import timerome
from timerome.backbones import point
from timerome.tiny import recipe as tiny_recipe
from timerome.tiny.model import TinyConfig
from timerome.tiny.train import encode_pairs, mdlm_batch, train

from conftest import make_tiny_backbone

PAIRS = [("who wrote the red book ?", "alice wrote the red book in paris ."),
         ("who painted the blue sea ?", "bob painted a blue sea near rome ."),
         ("what does carol sing ?", "carol sings songs about snow ."),
         ("where did alice write ?", "in paris .")]


def toy_world(monkeypatch):
    """The recipe's world replaced by PAIRS (4 QA facts), for training tests that run in seconds."""
    from types import SimpleNamespace

    facts = [SimpleNamespace(question=q, answer=a) for q, a in PAIRS]
    monkeypatch.setattr(tiny_recipe.world, "build_world", lambda root=None, parts=None, exclude_splits=(): facts)
    monkeypatch.setattr(tiny_recipe.world, "composition", lambda root=None, parts=None, exclude_splits=(): {"toy": 4})


@pytest.mark.parametrize("block", ["llama", "bert"])
def test_bidirectional_vs_causal(tiny_tokenizer, block):
    x = torch.randint(5, len(tiny_tokenizer), (2, 12))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % len(tiny_tokenizer)  # change only the last token
    mdlm = make_tiny_backbone(tiny_tokenizer, block=block)
    arm = make_tiny_backbone(tiny_tokenizer, block=block, causal=True)
    assert not torch.allclose(mdlm.logits(x)[:, 0], mdlm.logits(y)[:, 0])  # earlier positions see it
    assert torch.equal(arm.logits(x)[:, :-1], arm.logits(y)[:, :-1])  # causal: earlier never see it


@pytest.mark.parametrize("block", ["llama", "bert"])
@pytest.mark.parametrize("causal", [False, True])
def test_left_padding_is_invisible(tiny_tokenizer, block, causal):
    bb = make_tiny_backbone(tiny_tokenizer, block=block, causal=causal)
    x = torch.randint(5, len(tiny_tokenizer), (1, 9))
    padded = torch.cat([torch.full((1, 4), bb.pad_id), x], 1)
    att = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    out = bb.logits(padded, att)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 4:], bb.logits(x), atol=1e-5, rtol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="block"):
        TinyConfig(vocab_size=10, block="gpt")
    with pytest.raises(ValueError, match="divisible"):
        TinyConfig(vocab_size=10, d_model=30, n_heads=4)


def test_sequence_longer_than_max_len_is_an_error(tiny_backbone):
    with pytest.raises(ValueError, match="max_len"):
        tiny_backbone.logits(torch.zeros(1, 129, dtype=torch.long))


def test_tiny_family_hook_points(tiny_backbone):
    bb = tiny_backbone
    assert bb.n_layers == 2 and bb.hidden_size == 32 and bb.mask_id == bb.tokenizer.mask_token_id
    assert bb.site("blocks.1.resid_post") == (bb.model.blocks[1], "output")
    assert bb.site("blocks.1.attn_out") == (bb.model.blocks[1].attn, "output")
    assert bb.site("blocks.1.mlp_out") == (bb.model.blocks[1].mlp, "output")
    assert bb.site("blocks.1.mlp_in") == (bb.model.blocks[1].mlp.down, "input")
    assert bb.down_proj(1) is bb.model.blocks[1].mlp.down
    assert bb.site("embed") == (bb.model.embed, "output")
    with pytest.raises(ValueError, match="hook point 'blocks.0.ffn'"):
        bb.site("blocks.0.ffn")
    with pytest.raises(IndexError, match="out of range"):
        bb.site("blocks.2.resid_post")
    x = torch.randint(5, len(bb.tokenizer), (3, 7))
    names = [point(m, l) for m in ("resid", "attn", "mlp") for l in range(2)]
    with bb.trace(names) as seen:
        bb.logits(x)
    assert all(v.shape == (3, 7, 32) for v in seen.values())
    # resid = previous resid + attn + mlp, exactly as the block computes it
    torch.testing.assert_close(seen["blocks.1.resid_post"],
                               seen["blocks.0.resid_post"] + seen["blocks.1.attn_out"] + seen["blocks.1.mlp_out"])
    # the MLP output is the down-projection applied to the mlp_in point
    with bb.trace(["blocks.1.mlp_in", "blocks.1.mlp_out"]) as seen:
        bb.logits(x)
    torch.testing.assert_close(bb.down_proj(1)(seen["blocks.1.mlp_in"]), seen["blocks.1.mlp_out"])


def test_edit_is_removed_even_after_an_exception(tiny_backbone):
    bb = tiny_backbone
    x = torch.randint(5, len(bb.tokenizer), (2, 6))
    before = bb.logits(x)
    with bb.trace("blocks.0.resid_post", edit=lambda _p, h: h + 1.0):
        assert not torch.equal(bb.logits(x), before)
    with pytest.raises(RuntimeError, match="boom"):
        with bb.trace("blocks.0.resid_post", edit=lambda _p, h: h + 1.0):
            raise RuntimeError("boom")
    assert torch.equal(bb.logits(x), before)


@pytest.mark.parametrize("causal", [False, True])
def test_logits_at_reads_only_the_asked_positions(tiny_tokenizer, causal):
    bb = make_tiny_backbone(tiny_tokenizer, causal=causal)
    x = torch.randint(5, len(tiny_tokenizer), (2, 9))
    att = torch.ones_like(x)
    att[0, :3] = 0
    rows, cols = [0, 1, 1], [8, 0, 4]
    assert torch.allclose(bb.logits_at(x, att, rows, cols), bb.logits(x, att)[rows, cols], atol=1e-6)
    assert not bb.model.lm_head._forward_pre_hooks  # the selection hook is gone


@pytest.mark.parametrize("causal", [False, True])
def test_forward_logits_at_has_the_gradients_of_the_indexed_logits(tiny_tokenizer, causal):
    bb = make_tiny_backbone(tiny_tokenizer, causal=causal)
    x = torch.randint(5, len(tiny_tokenizer), (2, 9))
    rows, cols = torch.tensor([0, 1, 1]), torch.tensor([8, 0, 4])
    grads = []
    for read in (lambda: bb.forward_logits_at(x, None, rows, cols), lambda: bb.forward_logits(x)[rows, cols]):
        bb.model.zero_grad()
        out = read()
        torch.log_softmax(out, -1)[:, 7].sum().backward()
        grads.append(bb.model.lm_head.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


def test_embedded_tiny_names():
    from timerome.loading import tiny_names
    assert {"tiny-mdlm", "tiny-arm"} <= set(tiny_names())


@pytest.mark.parametrize("dtype, want", [("bfloat16", torch.bfloat16), ("torch.float64", torch.float64),
                                         (torch.float16, torch.float16), ("auto", torch.float32)])
def test_tiny_load_accepts_dtype_names(dtype, want):
    bb = timerome.load_backbone("tiny-mdlm", dtype=dtype)
    assert bb.embedding.weight.dtype == want


@pytest.mark.parametrize("dtype", ["bfloat61", "int64", torch.long, 3])
def test_tiny_load_rejects_a_bad_dtype_clearly(dtype):
    with pytest.raises(ValueError, match=r"dtype=.* is not a floating-point torch dtype"):
        timerome.load_backbone("tiny-mdlm", dtype=dtype)


def test_mdlm_batch_never_masks_the_prompt(tiny_tokenizer):
    ex = encode_pairs(tiny_tokenizer, PAIRS, "question: {question} answer:", " ")
    g = torch.Generator().manual_seed(0)
    x, xin, masked, w = mdlm_batch(ex, [0, 1, 2, 3], eos_id=tiny_tokenizer.eos_token_id,
                                   mask_id=tiny_tokenizer.mask_token_id, extra_eos=2, gen=g)
    for r, e in enumerate(ex):
        assert not masked[r, :len(e.prompt)].any()
        assert torch.equal(x[r, len(e.prompt):len(e.prompt) + len(e.answer)], torch.tensor(e.answer))
        assert (x[r, len(e.prompt) + len(e.answer):] == tiny_tokenizer.eos_token_id).all()  # EOS fill
    assert torch.equal(xin[masked], torch.full_like(xin[masked], tiny_tokenizer.mask_token_id))
    assert torch.equal(xin[~masked], x[~masked])


def test_mdlm_batch_canvas_fill(tiny_tokenizer):
    """With a canvas, answers close anywhere inside the sampler's gen_length, never beyond it."""
    ex = encode_pairs(tiny_tokenizer, PAIRS, "question: {question} answer:", " ")
    P, A = max(len(e.prompt) for e in ex), max(len(e.answer) for e in ex)
    ids = dict(eos_id=tiny_tokenizer.eos_token_id, mask_id=tiny_tokenizer.mask_token_id, extra_eos=0)
    g = torch.Generator().manual_seed(0)
    lengths = {mdlm_batch(ex, [0, 1, 2, 3], gen=g, canvas=A + 20, **ids)[0].shape[1] for _ in range(200)}
    assert min(lengths) >= P + A and max(lengths) <= P + A + 20 and len(lengths) > 10
    no_canvas = {mdlm_batch(ex, [0, 1, 2, 3], gen=g, canvas=A + 20, canvas_prob=0.0, **ids)[0].shape[1] for _ in range(20)}
    assert no_canvas == {max(len(e.prompt) + len(e.answer) for e in ex)}


@pytest.mark.parametrize("objective", ["mdlm", "arm"])
def test_recipe_trains_deterministically_and_round_trips(tiny_tokenizer, tmp_path, objective):
    ex = encode_pairs(tiny_tokenizer, PAIRS, "question: {question} answer:", " ")
    cfg = TinyConfig(vocab_size=len(tiny_tokenizer), n_layers=2, d_model=32, n_heads=2, d_mlp=64,
                     max_len=64, causal=objective == "arm")
    ids = {"eos": tiny_tokenizer.eos_token_id, "mask": tiny_tokenizer.mask_token_id, "pad": tiny_tokenizer.pad_token_id}
    runs = [train(cfg, ex, objective=objective, epochs=30, batch_size=2, lr=1e-2, warmup=5, seed=3,
                  special_ids=ids, log=lambda s: None) for _ in range(2)]
    (m1, h1), (m2, h2) = runs
    assert h1[-1]["loss"] < h1[0]["loss"]  # it learns
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    path = tiny_recipe.save_backbone(m1, tiny_tokenizer, f"toy-{objective}", tmp_path, meta={
        "prompt_template": "question: {question} answer:", "answer_prefix": " "})
    bb = timerome.load_backbone(path)
    assert bb.is_causal == (objective == "arm") and bb.mask_id == tiny_tokenizer.mask_token_id
    m1.half().float()  # saved weights are fp16: compare with the rounded model
    x = torch.randint(5, len(tiny_tokenizer), (2, 9))
    torch.testing.assert_close(bb.logits(x), m1(x), atol=0, rtol=0)


def test_train_rejects_mismatched_objective(tiny_tokenizer):
    cfg = TinyConfig(vocab_size=len(tiny_tokenizer), causal=False)
    with pytest.raises(ValueError, match="does not match"):
        train(cfg, [], objective="arm", epochs=1, special_ids={})
    with pytest.raises(ValueError, match="objective"):
        train(cfg, [], objective="mlm", epochs=1, special_ids={})


def test_warm_restart_from_a_saved_stage1_equals_the_two_stage_run(tiny_tokenizer, tmp_path, monkeypatch):
    from dataclasses import replace
    from safetensors.torch import load_file

    toy_world(monkeypatch)
    r = tiny_recipe.Recipe(d_model=32, n_layers=2, n_heads=2, d_mlp=64, max_len=64, epochs=4, batch_size=2, lr=1e-2,
                           warmup=2, canvas=0, restart_epochs=0, prompt_template="question: {question} answer:")
    quiet = dict(log=lambda s: None)
    stage1 = tiny_recipe.train_backbone("tiny-mdlm", r, tiny_tokenizer, out_dir=tmp_path / "s1", **quiet)
    r2 = replace(r, restart_epochs=3, restart_lr=5e-3)
    full = tiny_recipe.train_backbone("tiny-mdlm", r2, tiny_tokenizer, out_dir=tmp_path / "full", **quiet)
    resumed = tiny_recipe.train_backbone("tiny-mdlm", r2, tiny_tokenizer, out_dir=tmp_path / "resumed", stage1=stage1,
                                         **quiet)
    w = [load_file(str(p / "model.safetensors")) for p in (stage1, full, resumed)]
    assert all(torch.equal(w[1][k], w[2][k]) for k in w[0])  # reading stage 1 == re-running it
    assert not all(torch.equal(w[0][k], w[1][k]) for k in w[0])  # and stage 2 changed the weights
    hist = tiny_recipe.load_meta(resumed)["history"]
    assert [h["epoch"] for h in hist] == list(range(1, 8)) and [h.get("stage", 1) for h in hist] == [1] * 4 + [2] * 3
    with pytest.raises(ValueError, match=r"differing recipe fields: \['lr'\]"):
        tiny_recipe.train_backbone("tiny-mdlm", replace(r2, lr=2e-2), tiny_tokenizer, out_dir=tmp_path / "x",
                                   stage1=stage1, **quiet)
    with pytest.raises(ValueError, match="tiny-mdlm-retain"):
        tiny_recipe.train_backbone("tiny-mdlm-retain", r2, tiny_tokenizer, out_dir=tmp_path / "x", stage1=stage1, **quiet)


def test_train_from_init_state_starts_there(tiny_tokenizer):
    ex = encode_pairs(tiny_tokenizer, PAIRS, "question: {question} answer:", " ")
    cfg = TinyConfig(vocab_size=len(tiny_tokenizer), n_layers=1, d_model=16, n_heads=2, d_mlp=32, max_len=64)
    ids = {"eos": tiny_tokenizer.eos_token_id, "mask": tiny_tokenizer.mask_token_id, "pad": tiny_tokenizer.pad_token_id}
    m, _ = train(cfg, ex, objective="mdlm", epochs=2, batch_size=2, lr=1e-2, warmup=1, seed=0, special_ids=ids,
                 log=lambda s: None)
    m0, h = train(cfg, ex, objective="mdlm", epochs=0, seed=5, special_ids=ids, init_state=m.state_dict(),
                  log=lambda s: None)
    assert h == [] and all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m0.state_dict().values()))


# ============================================================ the tiny analogues of the MDLM family (Table II)
def _cfg(tok, **kw):
    return TinyConfig(vocab_size=len(tok), n_layers=2, d_model=32, n_heads=2, d_mlp=64, max_len=64, **kw)


def test_analogue_config_validation(tiny_tokenizer):
    with pytest.raises(ValueError, match="shift_logits"):
        _cfg(tiny_tokenizer, causal=True, shift_logits=True)
    with pytest.raises(ValueError, match="expert_top_k"):
        _cfg(tiny_tokenizer, n_experts=2, expert_top_k=3)
    from timerome.families import tiny_family
    assert [tiny_family(_cfg(tiny_tokenizer, **kw)).name for kw in
            ({}, {"causal": True}, {"shift_logits": True}, {"n_experts": 2})] == ["tiny", "tiny-causal", "tiny-shifted", "tiny-moe"]


def test_a_shifted_model_is_read_one_position_later(tiny_tokenizer, tmp_path):
    from timerome.tiny.model import TinyLM

    torch.manual_seed(0)
    m = TinyLM(_cfg(tiny_tokenizer, shift_logits=True)).eval()
    path = tiny_recipe.save_backbone(m, tiny_tokenizer, "toy-shifted", tmp_path, meta={
        "prompt_template": "question: {question} answer:", "answer_prefix": " "})
    bb = timerome.load_backbone(path)
    m.half().float()  # as saved
    x = torch.randint(5, len(tiny_tokenizer), (2, 9))
    raw = m(x)
    assert bb.family.shift_logits and torch.equal(bb.logits(x)[:, 1:], raw[:, :-1])  # position i read at i - 1
    rows, cols = torch.tensor([0, 1, 1]), torch.tensor([3, 1, 8])
    torch.testing.assert_close(bb.logits_at(x, None, rows, cols), raw[rows, cols - 1], atol=1e-6, rtol=0)


def test_moe_routes_each_token_to_its_top_k_experts(tiny_tokenizer):
    from timerome.tiny.model import MoE

    torch.manual_seed(1)
    moe = MoE(_cfg(tiny_tokenizer, n_experts=4, expert_top_k=2)).eval()
    x = torch.randn(3, 5, 32)
    want = torch.zeros_like(x)
    for b in range(3):  # brute force: token by token
        for t in range(5):
            logits = moe.router(x[b, t])
            top = logits.topk(2).indices
            w = logits[top].softmax(0)
            want[b, t] = sum(wi * moe.experts[int(e)](x[b, t]) for wi, e in zip(w, top))
    torch.testing.assert_close(moe(x), want, atol=1e-6, rtol=1e-5)
    assert ((moe.routing(x) > 0).sum(-1) == 2).all()
    moe.train()
    moe(x)
    assert moe.aux_loss is not None and moe.aux_loss.item() >= 1.0 - 1e-6  # Switch's loss is >= 1, = 1 when balanced


def test_upcycling_without_noise_computes_the_dense_mlp(tiny_tokenizer):
    from timerome.tiny.model import TinyLM

    torch.manual_seed(2)
    dense = TinyLM(_cfg(tiny_tokenizer)).eval()
    cfg = _cfg(tiny_tokenizer, n_experts=3, expert_top_k=2)
    moe = TinyLM(cfg).eval()
    moe.load_state_dict(tiny_recipe.upcycle(dense.state_dict(), cfg, noise=0.0))
    x = torch.randint(5, len(tiny_tokenizer), (2, 7))
    torch.testing.assert_close(moe(x), dense(x), atol=1e-5, rtol=1e-5)  # weights sum to 1 over identical experts
    noisy = tiny_recipe.upcycle(dense.state_dict(), cfg, noise=0.01)
    e0, e1 = noisy["blocks.0.mlp.experts.0.down.weight"], noisy["blocks.0.mlp.experts.1.down.weight"]
    assert not torch.equal(e0, e1) and torch.allclose(e0, dense.state_dict()["blocks.0.mlp.down.weight"], atol=0.01)


def test_moe_backbone_hook_points(tiny_tokenizer):
    from timerome.backbones import Backbone
    from timerome.families import tiny_family
    from timerome.tiny.model import TinyLM

    torch.manual_seed(3)
    cfg = _cfg(tiny_tokenizer, n_experts=2, expert_top_k=1)
    bb = Backbone(TinyLM(cfg).eval(), tiny_tokenizer, tiny_family(cfg), mask_id=tiny_tokenizer.mask_token_id)
    x = torch.randint(5, len(tiny_tokenizer), (1, 6))
    pts = [point("resid", 0), point("attn", 1), point("mlp", 1), point("resid", 1)]
    with bb.trace(pts) as seen:
        bb.logits(x)
    blk, h0 = bb.model.blocks[1], seen[pts[0]]
    mid = h0 + seen[pts[1]]
    assert bb.family.mlp_down is None  # a mixture has no single down-projection
    torch.testing.assert_close(seen[pts[2]], blk.mlp(blk.ln2(mid)), atol=1e-6, rtol=1e-5)  # mlp = the routed experts
    torch.testing.assert_close(seen[pts[3]], mid + seen[pts[2]], atol=1e-6, rtol=1e-5)


def test_a_causal_pattern_reproduces_the_causal_model(tiny_tokenizer):
    from timerome.tiny.model import TinyLM

    torch.manual_seed(4)
    causal = TinyLM(_cfg(tiny_tokenizer, causal=True)).eval()
    full = TinyLM(_cfg(tiny_tokenizer)).eval()
    full.load_state_dict(causal.state_dict())
    x = torch.randint(5, len(tiny_tokenizer), (2, 8))
    tril = torch.ones(8, 8, dtype=torch.bool).tril()
    torch.testing.assert_close(full.hidden(x, pattern=tril), causal.hidden(x), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(full.hidden(x), causal.hidden(x), atol=1e-3)


@pytest.mark.parametrize("kw", [dict(shift_logits=True), dict(n_experts=2, expert_top_k=1)])
def test_analogue_training_learns_deterministically(tiny_tokenizer, kw):
    ex = encode_pairs(tiny_tokenizer, PAIRS, "question: {question} answer:", " ")
    ids = {"eos": tiny_tokenizer.eos_token_id, "mask": tiny_tokenizer.mask_token_id, "pad": tiny_tokenizer.pad_token_id}
    cfg = _cfg(tiny_tokenizer, **kw)
    runs = [train(cfg, ex, objective="mdlm", epochs=25, batch_size=2, lr=1e-2, warmup=5, seed=3, special_ids=ids,
                  anneal_steps=20 if kw.get("shift_logits") else 0, log=lambda s: None) for _ in range(2)]
    (m1, h1), (m2, h2) = runs
    assert h1[-1]["loss"] < h1[0]["loss"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(ValueError, match="anneal_steps"):
        train(_cfg(tiny_tokenizer, causal=True), ex, objective="arm", epochs=1, anneal_steps=5, special_ids=ids)


def test_every_adaptation_runs_from_its_source(tiny_tokenizer, tmp_path, monkeypatch):
    toy_world(monkeypatch)
    r = tiny_recipe.Recipe(d_model=32, n_layers=2, n_heads=2, d_mlp=64, max_len=64, epochs=1, batch_size=2, lr=1e-2,
                           warmup=2, canvas=0, restart_epochs=0, prompt_template="question: {question} answer:")
    quiet = dict(log=lambda s: None)
    for src in ("tiny-mdlm", "tiny-mdlm-retain", "tiny-arm", "tiny-arm-retain"):
        tiny_recipe.train_backbone(src, r, tiny_tokenizer, out_dir=tmp_path, **quiet)
    for name, a in tiny_recipe.ADAPTED.items():
        path = tiny_recipe.adapt_backbone(name, out_dir=tmp_path, src_dir=tmp_path, epochs=1, **quiet)
        bb = timerome.load_backbone(path)
        meta = tiny_recipe.load_meta(path)
        assert not bb.is_causal and meta["adapted_from"] == a.source and meta["excluded_splits"] == list(a.exclude)
        assert bb.family.shift_logits == bool(a.config.get("shift_logits")) and (bb.family.mlp_down is None) == ("n_experts" in a.config)
        assert bb.prompt_template == a.recipe.get("prompt_template", r.prompt_template)
    with pytest.raises(ValueError, match="retain twin must come from a retain model"):
        monkeypatch.setitem(tiny_recipe.ADAPTED, "bad", tiny_recipe.Adaptation("tiny-mdlm", exclude=("forget01",)))
        tiny_recipe.adapt_backbone("bad", out_dir=tmp_path, src_dir=tmp_path, epochs=1, **quiet)
    with pytest.raises(FileNotFoundError, match="train it first"):
        tiny_recipe.adapt_backbone("tiny-dream", out_dir=tmp_path, src_dir=tmp_path / "none", epochs=1, **quiet)
