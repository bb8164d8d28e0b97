"""The masked-diffusion sampler (`timerome.sampler`) on tiny random backbones."""
import pytest
import torch

from timerome.sampler import (REMASKING, Generation, generate, generate_autoregressive, left_pad,
                              num_transfer_tokens)

from conftest import make_tiny_backbone


def _sharpen(bb, factor=10.0):
    """Scale the LM head so a random model has clear argmaxes (no near-ties that float noise could flip)."""
    with torch.no_grad():
        bb.model.lm_head.weight.mul_(factor)
    return bb


@pytest.fixture
def bb(tiny_tokenizer):
    return _sharpen(make_tiny_backbone(tiny_tokenizer))


def _prompt(bb, text="who wrote the red book ?"):
    return [bb.tokenizer.bos_token_id] + bb.encode(bb.prompt(text))


# --- num_transfer_tokens -----------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 3, 4, 7, 16])
def test_num_transfer_tokens_sums_and_spreads(steps):
    counts = torch.tensor([0, 1, 5, 7, 16, 33])
    sched = num_transfer_tokens(counts, steps)
    assert sched.shape == (len(counts), steps) and sched.dtype == torch.long
    assert torch.equal(sched.sum(1), counts)
    for c, row in zip(counts.tolist(), sched.tolist()):
        base, rem = divmod(c, steps)
        assert row == [base + 1] * rem + [base] * (steps - rem)  # evenly spread, remainder first
        assert max(row) - min(row) <= 1


def test_num_transfer_tokens_hand_example():
    assert num_transfer_tokens(torch.tensor([10]), 4).tolist() == [[3, 3, 2, 2]]
    assert num_transfer_tokens(torch.tensor([2]), 4).tolist() == [[1, 1, 0, 0]]


def test_left_pad():
    ids, att = left_pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert att.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


# --- commits -----------------------------------------------------------------------------------
@pytest.mark.parametrize("gen_length,block_length,steps", [(12, 12, 5), (12, 4, 6), (8, 8, 8), (8, 2, 4)])
def test_commit_counts_follow_the_schedule(bb, gen_length, block_length, steps):
    prompts = [_prompt(bb), _prompt(bb, "what does carol sing ?")]
    ids, att = left_pad(prompts, bb.pad_id)
    g = generate(bb, ids, attention_mask=att, gen_length=gen_length, steps=steps, block_length=block_length,
                 return_trajectory=True)
    assert isinstance(g, Generation) and g.prompt_length == ids.shape[1]
    assert g.tokens.shape == (2, ids.shape[1] + gen_length) and g.committed_at.shape == (2, gen_length)
    n_blocks = gen_length // block_length
    expected = num_transfer_tokens(torch.tensor([block_length]), steps // n_blocks)[0].repeat(n_blocks)
    for r in range(2):
        # every answer position committed exactly once, at a valid step
        assert ((g.committed_at[r] >= 0) & (g.committed_at[r] < steps)).all()
        assert torch.equal(torch.bincount(g.committed_at[r], minlength=steps), expected)
    assert not (g.tokens[:, g.prompt_length:] == bb.mask_id).any()  # no MASK left
    assert torch.equal(g.tokens[:, :g.prompt_length], ids)  # prompt (and its padding) untouched


def test_block_order_is_semi_autoregressive(bb):
    gen_length, block_length, steps = 12, 4, 6
    g = generate(bb, [_prompt(bb)], gen_length=gen_length, steps=steps, block_length=block_length,
                 return_trajectory=True)
    at = g.committed_at[0].view(gen_length // block_length, block_length)
    for b in range(at.shape[0] - 1):
        assert at[b].max() < at[b + 1].min()  # block b complete before block b+1 starts
    spb = steps // at.shape[0]
    for b in range(at.shape[0]):
        assert (at[b] >= b * spb).all() and (at[b] < (b + 1) * spb).all()


def test_committed_tokens_are_never_changed(bb):
    """A position keeps the token it was committed with: replay the trajectory step by step."""
    seen = []
    g = generate(bb, [_prompt(bb)], gen_length=8, steps=4, return_trajectory=True,
                 on_step=lambda k, x: seen.append(x.clone()))
    P = g.prompt_length
    final = g.tokens[0, P:]
    for k, x in enumerate(seen):  # x is the canvas *before* step k
        done = g.committed_at[0] < k
        assert torch.equal(x[0, P:][done], final[done])
        assert (x[0, P:][~done] == bb.mask_id).all()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mask_token_is_never_committed(bb, temperature):
    """Even if the model's argmax is the mask token, the sampler must commit a real token."""
    old = bb.model.lm_head.forward

    def biased(h):  # make <mask> the argmax everywhere
        out = old(h)
        out[..., bb.mask_id] += 1e3
        return out

    bb.model.lm_head.forward = biased
    g = generate(bb, [_prompt(bb)], gen_length=8, steps=4, temperature=temperature, return_trajectory=True)
    assert not (g.tokens[:, g.prompt_length:] == bb.mask_id).any()
    assert torch.equal(torch.bincount(g.committed_at[0], minlength=4), torch.tensor([2, 2, 2, 2]))


def test_mask_token_inside_the_prompt_is_left_alone(bb):
    """A prompt that contains the mask id is context: it is neither filled in nor counted."""
    prompt = _prompt(bb)
    prompt[1:5] = [bb.mask_id] * 4
    for seed in range(3):  # random remasking: prompt masks would win about half the draws
        g = generate(bb, [prompt], gen_length=8, steps=4, remasking="random", seed=seed, return_trajectory=True)
        assert g.tokens[0, :len(prompt)].tolist() == prompt
        assert not (g.tokens[0, len(prompt):] == bb.mask_id).any()
        assert torch.equal(torch.bincount(g.committed_at[0], minlength=4), torch.tensor([2, 2, 2, 2]))


# --- determinism -------------------------------------------------------------------------------
def test_greedy_is_deterministic_across_seeds(bb):
    p = [_prompt(bb)]
    outs = [generate(bb, p, gen_length=8, steps=4, seed=s) for s in (0, 1, 123)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_sampling_depends_on_the_seed_only(tiny_tokenizer):
    bb = make_tiny_backbone(tiny_tokenizer)  # flat random model: sampling is close to uniform
    p = [_prompt(bb)]
    kw = dict(gen_length=12, steps=4, temperature=1.0)
    a, b = generate(bb, p, seed=7, **kw), generate(bb, p, seed=7, **kw)
    assert torch.equal(a, b)
    c = generate(bb, p, seed=8, **kw)
    assert not torch.equal(a, c)


def test_random_remasking_depends_on_the_seed(bb):
    p = [_prompt(bb)]
    kw = dict(gen_length=12, steps=6, remasking="random", return_trajectory=True)
    a, b, c = (generate(bb, p, seed=s, **kw) for s in (3, 3, 4))
    assert torch.equal(a.committed_at, b.committed_at) and torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.committed_at, c.committed_at)


# --- padding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("block", ["llama", "bert"])
@pytest.mark.parametrize("block_length", [8, 4])
def test_batched_padded_prompts_match_one_at_a_time(tiny_tokenizer, block, block_length):
    bb = _sharpen(make_tiny_backbone(tiny_tokenizer, block=block))
    prompts = [_prompt(bb, "who ?"), _prompt(bb, "who wrote the red book in paris ?"), _prompt(bb, "what does carol sing ?")]
    assert len({len(p) for p in prompts}) == 3
    kw = dict(gen_length=8, steps=4, block_length=block_length)
    batch = generate(bb, prompts, return_trajectory=True, **kw)
    P = batch.prompt_length
    assert P == max(len(p) for p in prompts)
    for r, p in enumerate(prompts):
        alone = generate(bb, [p], return_trajectory=True, **kw)
        assert batch.tokens[r, P:].tolist() == alone.tokens[0, len(p):].tolist()
        assert torch.equal(batch.committed_at[r], alone.committed_at[0])
        assert batch.tokens[r, P - len(p):P].tolist() == p
        assert (batch.tokens[r, :P - len(p)] == bb.pad_id).all()


def test_tensor_prompt_with_attention_mask_equals_list_prompt(bb):
    prompts = [_prompt(bb, "who ?"), _prompt(bb)]
    ids, att = left_pad(prompts, bb.pad_id)
    a = generate(bb, ids, attention_mask=att, gen_length=8, steps=4)
    b = generate(bb, prompts, gen_length=8, steps=4)
    assert torch.equal(a, b)


# --- remasking modes and argument checks -------------------------------------------------------
@pytest.mark.parametrize("remasking", REMASKING)
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_all_remasking_modes_run(bb, remasking, temperature):
    g = generate(bb, [_prompt(bb), _prompt(bb, "who ?")], gen_length=8, steps=4, block_length=4,
                 remasking=remasking, temperature=temperature, seed=1, return_trajectory=True)
    assert not (g.tokens[:, g.prompt_length:] == bb.mask_id).any()
    for r in range(2):
        assert torch.equal(torch.bincount(g.committed_at[r], minlength=4), torch.tensor([2, 2, 2, 2]))


def test_low_confidence_commits_the_most_confident_first(bb):
    """Step 0 of low_confidence remasking commits the argmax at the positions of highest max-prob."""
    p = [_prompt(bb)]
    g = generate(bb, p, gen_length=8, steps=4, return_trajectory=True)
    P = g.prompt_length
    x = torch.tensor([p[0] + [bb.mask_id] * 8])
    probs = bb.logits(x)[0, P:].float().softmax(-1)
    conf, x0 = probs.max(-1)
    first = set(conf.argsort(descending=True)[:2].tolist())
    assert set((g.committed_at[0] == 0).nonzero().flatten().tolist()) == first
    for i in first:
        assert g.tokens[0, P + i] == x0[i]


@pytest.mark.parametrize("remasking", ["low_confidence", "entropy", "topk_margin", "maskgit_plus"])
def test_confidences_are_ranked_in_float64(remasking):
    """Two positions whose confidences are equal in float32 but not in float64 keep their float64 order."""
    from timerome.sampler import confidence
    logits = torch.zeros(1, 2, 5)
    logits[0, :, 0] = torch.tensor([4.0, 4.0 + 2.0 ** -20])  # position 1 is (slightly) more confident
    conf = confidence(logits, logits.argmax(-1), remasking, 0.0, None)
    assert conf.dtype == torch.float64 and conf[0, 1] > conf[0, 0]


@pytest.mark.parametrize("kw,match", [
    (dict(remasking="bogus"), "remasking"),
    (dict(gen_length=10, block_length=4), "multiple of block_length"),
    (dict(gen_length=0), "positive multiple"),
    (dict(gen_length=8, block_length=4, steps=3), "multiple of the number of blocks"),
    (dict(steps=0), "positive multiple"),
])
def test_invalid_arguments(bb, kw, match):
    args = dict(gen_length=8, steps=4)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        generate(bb, [_prompt(bb)], **args)


@pytest.mark.parametrize("kw,err,match", [
    (dict(gen_length=8.0), TypeError, "gen_length=8.0 must be an int"),
    (dict(steps=4.0), TypeError, "steps=4.0 must be an int"),
    (dict(block_length=True), TypeError, "block_length=True must be an int"),
    (dict(temperature=-0.5), ValueError, "temperature=-0.5 must be a number >= 0"),
    (dict(temperature=float("nan")), ValueError, "temperature=nan"),
])
def test_argument_types_and_signs_are_checked(bb, kw, err, match):
    args = dict(gen_length=8, steps=4)
    args.update(kw)
    with pytest.raises(err, match=match):
        generate(bb, [_prompt(bb)], **args)


@pytest.mark.parametrize("prompts", [[], torch.zeros(0, 5, dtype=torch.long)])
def test_no_prompts_is_a_clear_error(bb, prompts):
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        generate(bb, prompts, gen_length=8, steps=4)
    with pytest.raises(ValueError, match="prompt list is empty"):
        left_pad([], 0)


def test_causal_backbone_is_rejected(tiny_tokenizer):
    arm = make_tiny_backbone(tiny_tokenizer, causal=True)
    with pytest.raises(ValueError, match="autoregressive"):
        generate(arm, [[1, 2, 3]], gen_length=4, steps=2)


# --- the step clock ----------------------------------------------------------------------------
def test_step_clock_in_on_step_and_hooks(bb):
    calls, in_forward = [], []

    def on_step(k, x):
        assert bb.step == k
        calls.append(k)

    h = bb.model.register_forward_hook(lambda *a: in_forward.append(bb.step))
    try:
        bb.step = "before"
        generate(bb, [_prompt(bb)], gen_length=8, steps=6, block_length=4, on_step=on_step)
    finally:
        h.remove()
    assert calls == list(range(6)) and in_forward == list(range(6))
    assert bb.step == "before"


def test_step_clock_restored_after_an_exception(bb):
    bb.step = 41

    def boom(k, x):
        if k == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        generate(bb, [_prompt(bb)], gen_length=8, steps=4, on_step=boom)
    assert bb.step == 41


def test_step_clock_without_previous_value(tiny_tokenizer):
    bb = make_tiny_backbone(tiny_tokenizer)
    assert getattr(bb, "step", None) is None
    generate(bb, [_prompt(bb)], gen_length=4, steps=2)
    assert getattr(bb, "step", None) is None


# --- autoregressive baseline -------------------------------------------------------------------
def test_generate_autoregressive_matches_a_manual_greedy_loop(tiny_tokenizer):
    arm = _sharpen(make_tiny_backbone(tiny_tokenizer, causal=True))
    prompts = [_prompt(arm, "who ?"), _prompt(arm)]
    out = generate_autoregressive(arm, prompts, max_new_tokens=6)
    P = max(len(p) for p in prompts)
    assert out.shape == (2, P + 6)
    for r, p in enumerate(prompts):
        x, done = torch.tensor([p]), False
        for _ in range(6):
            nxt = arm.eos_id if done else int(arm.logits(x)[0, -1].argmax())
            done = done or nxt == arm.eos_id
            x = torch.cat([x, torch.tensor([[nxt]])], 1)
        assert out[r, P:].tolist() == x[0, len(p):].tolist()


def test_generate_autoregressive_stops_running_once_every_row_ended(tiny_tokenizer):
    arm = make_tiny_backbone(tiny_tokenizer, causal=True)
    calls, orig = [], arm.logits_at

    def eos_first(ids, att, rows, cols):
        calls.append(1)
        out = orig(ids, att, rows, cols)
        out[:, arm.eos_id] = out.max() + 1  # every row ends at once
        return out

    arm.logits_at = eos_first
    prompts = [_prompt(arm, "who ?"), _prompt(arm)]
    out = generate_autoregressive(arm, prompts, max_new_tokens=6)
    P = max(len(p) for p in prompts)
    assert out.shape == (2, P + 6) and (out[:, P:] == arm.eos_id).all()
    assert len(calls) == 1


def test_generate_autoregressive_rejects_mdlm(bb):
    with pytest.raises(ValueError, match="not autoregressive"):
        generate_autoregressive(bb, [[1, 2]], max_new_tokens=2)
