"""The gradient baselines' losses against hand-computed cases, and the training protocol."""
import math

import pytest
import torch

import timerome
from timerome import data, splits
from timerome.baselines import objectives as obj
from timerome.baselines import unlearn as U
from timerome.likelihood import answer_logprob


@pytest.fixture(scope="module")
def bb():
    return timerome.load_backbone("tiny-mdlm")


@pytest.fixture(scope="module")
def arm():
    return timerome.load_backbone("tiny-arm")


@pytest.fixture(scope="module")
def forget():
    return data.load_tofu("forget01")[:8]


# --- losses ----------------------------------------------------------------------------------
def test_ga_and_nll_are_the_mean_loglik():
    lp = torch.tensor([-3.0, -5.0])
    assert obj.ga_loss(lp).item() == -4.0 and obj.nll_loss(lp).item() == 4.0


def test_npo_hand_computed():
    lp, ref, beta = torch.tensor([-6.0, -2.0]), torch.tensor([-4.0, -3.0]), 0.5
    # -(2/beta) mean log sigmoid(-beta (lp - ref)) with lp - ref = (-2, 1)
    want = -(2 / beta) * (math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(0.5)))) / 2
    assert obj.npo_loss(lp, ref, beta).item() == pytest.approx(want, rel=1e-6)


def test_npo_gradient_tends_to_ga_as_beta_vanishes():
    lp = torch.tensor([-6.0, -2.0, -9.0], requires_grad=True)
    ref = torch.tensor([-4.0, -3.0, -1.0])
    (g_npo,) = torch.autograd.grad(obj.npo_loss(lp, ref, 1e-4), lp)
    (g_ga,) = torch.autograd.grad(obj.ga_loss(lp), lp)
    assert torch.allclose(g_npo, g_ga, atol=1e-3)
    (g_big,) = torch.autograd.grad(obj.npo_loss(lp, ref, 1.0), lp)  # and differs at a real beta
    assert not torch.allclose(g_big, g_ga, atol=1e-2)


def test_npo_reference_is_not_trained():
    lp, ref = torch.tensor([-6.0], requires_grad=True), torch.tensor([-4.0], requires_grad=True)
    obj.npo_loss(lp, ref, 0.1).backward()
    assert ref.grad is None and lp.grad is not None


def test_simnpo_is_length_normalised():
    lp, n = torch.tensor([-12.0, -3.0]), torch.tensor([4, 1])
    want = -(2 / 4.5) * sum(math.log(1 / (1 + math.exp(-4.5 * 3.0))) for _ in range(2)) / 2  # both -3 per token
    assert obj.simnpo_loss(lp, n, 4.5).item() == pytest.approx(want, rel=1e-6)
    assert obj.simnpo_loss(lp * 10, n * 10, 4.5).item() == pytest.approx(obj.simnpo_loss(lp, n, 4.5).item())
    # the margin delta shifts the per-token NLL
    got = obj.simnpo_loss(torch.tensor([-2.0]), torch.tensor([1]), 1.0, delta=0.5).item()
    assert got == pytest.approx(-2 * math.log(1 / (1 + math.exp(-1.5))), rel=1e-6)


def test_rmu_loss_target_and_retain_term():
    u = obj.control_vector(4, seed=3)
    assert u.norm().item() == pytest.approx(1.0) and torch.equal(u, obj.control_vector(4, seed=3))
    assert (u >= 0).all() and not torch.equal(u, obj.control_vector(4, seed=4))
    c = 2.0
    h_f = (c * u).expand(1, 3, 4).clone()
    m = torch.ones(1, 3, dtype=torch.long)
    h_r, frozen = torch.ones(1, 2, 4), torch.ones(1, 2, 4)
    assert obj.rmu_loss(h_f, c * u, m, h_r, frozen, m[:, :2], 7.0).item() == 0.0
    # one forget position off by 1 in every coordinate (padding ignored), retain off by 2 everywhere
    h_f[0, 0] += 1.0
    m_pad = torch.tensor([[1, 1, 0]])
    h_f[0, 2] += 100.0  # padding: not counted
    got = obj.rmu_loss(h_f, c * u, m_pad, h_r + 2, frozen, m[:, :2], 0.5).item()
    assert got == pytest.approx((4 * 1.0) / (2 * 4) + 0.5 * 4.0)


def test_adaptive_coefficient_follows_the_norm():
    h = torch.tensor([[[3.0, 4.0], [0.0, 1.0], [100.0, 0.0]]])
    assert obj.adaptive_coefficient(h, torch.tensor([[1, 1, 0]]), 2.0) == pytest.approx(2 * (5 + 1) / 2)
    with pytest.raises(ValueError, match="no unpadded"):
        obj.adaptive_coefficient(h, torch.zeros(1, 3), 2.0)


# --- the sequence log-likelihood -----------------------------------------------------------------
def test_causal_sequence_logprob_is_the_exact_likelihood(arm, forget):
    batch = obj.make_batch(arm, forget)
    with torch.no_grad():
        got = obj.sequence_logprob(arm, batch)
    want = answer_logprob(arm, [f.question for f in forget], [f.answer for f in forget])
    assert torch.allclose(got.double(), want, atol=1e-4)


def test_mdlm_sequence_logprob_matches_a_brute_force_draw(bb, forget):
    batch = obj.make_batch(bb, forget[:3])
    masked, t = obj.draw_masks(batch, torch.Generator().manual_seed(0))
    assert not (masked & ~batch.answer).any()  # only answer tokens are ever masked
    with torch.no_grad():
        got = obj.sequence_logprob(bb, batch, (masked, t))
    for b in range(3):
        x = torch.where(masked[b], bb.mask_id, batch.ids[b])[None]
        att = batch.attention[b][None]
        lp = torch.log_softmax(bb.logits(x, att)[0].float(), -1)
        want = sum(lp[i, batch.ids[b, i]].item() for i in masked[b].nonzero().flatten().tolist()) / t[b].item()
        assert got[b].item() == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_every_answer_masked_at_t_one_scores_the_whole_answer(bb, forget):
    batch = obj.make_batch(bb, forget[:2])
    full = (batch.answer.clone(), torch.ones(2))
    with torch.no_grad():
        lp = obj.sequence_logprob(bb, batch, full)
    assert (lp < 0).all() and torch.isfinite(lp).all()
    with pytest.raises(ValueError, match="needs a draw"):
        obj.sequence_logprob(bb, batch)


# --- the protocol --------------------------------------------------------------------------------
def test_hparams_are_validated():
    with pytest.raises(ValueError, match="method="):
        U.UnlearnHParams("sgd")
    with pytest.raises(ValueError, match="lr"):
        U.UnlearnHParams("ga", lr=0)
    with pytest.raises(ValueError, match="epochs"):
        U.UnlearnHParams("ga", epochs=1.5)
    with pytest.raises(ValueError, match="drift_stop"):
        U.UnlearnHParams("ga", drift_stop=-1)
    hp = U.UnlearnHParams("simnpo")
    assert (hp.forget_beta, hp.forget_weight) == (4.5, 0.125)
    assert (U.UnlearnHParams("npo").forget_beta, U.UnlearnHParams("npo").forget_weight) == (0.1, 1.0)
    un = U.UnlearnHParams("npo", retain_weight=4.0).unmitigated()
    assert (un.clip, un.drift_stop, un.retain_weight, un.lr) == (None, None, 1.0, 1e-3)  # the recipe's own retain term


def test_adapters_disabled_is_the_frozen_model(bb, forget):
    from timerome.finetune import add_lora

    copy = U.clone(bb)
    params = add_lora(copy.model, r=4, alpha=8)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.5)  # every adapter matrix nonzero, so the adapted model differs
    ids = obj.make_batch(bb, forget[:2]).ids
    frozen = bb.logits(ids)
    assert not torch.allclose(copy.logits(ids), frozen, atol=1e-3)
    with U.adapters_disabled(copy.model):
        assert torch.allclose(copy.logits(ids), frozen, atol=1e-5)
    assert not torch.allclose(copy.logits(ids), frozen, atol=1e-3)  # back on after the block


def test_early_stopping_rolls_back_within_the_drift_budget(bb, forget):
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    val = splits.retain_facts("validation")[:12]
    hp = U.UnlearnHParams("ga", lr=3e-3, epochs=4, batch_size=4, drift_stop=0.5, eval_every=1, n_mc_val=2)
    res = U.unlearn(bb, forget, [], hp, validation_retain=val)
    assert res.stopped_early and res.kept_step < res.steps
    assert res.history[-1]["drift"] >= 0.5 > res.final_drift
    assert not res.collapsed(0.5)
    # the returned (merged) model is the kept state: its validation RetainLP is the recorded one
    kept = [h for h in res.history if h["step"] == res.kept_step][-1]
    assert U.retain_lp(res.backbone, val, 2) == pytest.approx(kept["retain_val"], abs=1e-3)
    assert all(torch.equal(v, bb.model.state_dict()[k]) for k, v in before.items())  # the input is untouched
    assert not timerome.hooks.has_hooks(bb.model)


@pytest.mark.parametrize("method", ["gd", "npo", "simnpo", "rmu", "adaptive_rmu"])
def test_each_method_trains_and_returns_a_plain_model(bb, forget, method):
    from peft.tuners.tuners_utils import BaseTunerLayer

    anchor = splits.anchor_facts(max_examples=8)
    hp = U.UnlearnHParams(method, lr=1e-3, epochs=1, batch_size=4, drift_stop=None)
    res = U.unlearn(bb, forget, anchor, hp, validation_retain=splits.retain_facts("validation")[:4])
    assert res.steps == 2 and not res.stopped_early
    assert not any(isinstance(m, BaseTunerLayer) for m in res.backbone.model.modules())
    res.backbone.site("blocks.0.mlp_in")  # hook points resolve on the merged model
    changed = [k for k, v in res.backbone.model.state_dict().items() if not torch.equal(v, bb.model.state_dict()[k])]
    assert changed
    if method in ("rmu", "adaptive_rmu"):  # only the MLP down-projections of blocks 0..2 (layer 2 of 4)
        assert set(changed) == {f"blocks.{l}.mlp.down.weight" for l in range(3)}


def test_retain_needed_unless_its_weight_is_zero(bb, forget):
    with pytest.raises(ValueError, match="needs retain facts"):
        U.unlearn(bb, forget, [], U.UnlearnHParams("gd", drift_stop=None), validation_retain=[])
    with pytest.raises(ValueError, match="forget set is empty"):
        U.unlearn(bb, [], [], U.UnlearnHParams("ga", drift_stop=None), validation_retain=[])


def test_rmu_on_a_mixture_of_experts_adapts_every_experts_down_projection(forget):
    moe = timerome.load_backbone("tiny-llada-moe")
    hp = U.UnlearnHParams("adaptive_rmu", lr=1e-3, epochs=1, batch_size=4, drift_stop=None, layer=1)
    res = U.unlearn(moe, forget, splits.anchor_facts(max_examples=4), hp,
                    validation_retain=splits.retain_facts("validation")[:4])
    before = moe.model.state_dict()
    changed = {k for k, v in res.backbone.model.state_dict().items() if not torch.equal(v, before[k])}
    n_exp = moe.model.config.n_experts
    assert changed == {f"blocks.{l}.mlp.experts.{e}.down.weight" for l in (0, 1) for e in range(n_exp)}


def test_rmu_finds_the_blocks_of_a_nested_module_path(forget):
    """A real family's blocks sit deeper than the model's top level (LLaDA: model.transformer.blocks):
    the update layers are matched under the family's block path, not a top-level 'blocks'."""
    from timerome.finetune import lora_targets
    import torch.nn as nn

    inner = nn.Module()
    inner.blocks = nn.ModuleList(nn.ModuleDict({"ff_out": nn.Linear(4, 4)}) for _ in range(3))
    outer = nn.Module()
    outer.model = nn.Module()
    outer.model.transformer = inner
    assert lora_targets(outer, ["ff_out"], [0, 1], blocks="model.transformer.blocks") == [
        "model.transformer.blocks.0.ff_out", "model.transformer.blocks.1.ff_out"]
    with pytest.raises(ValueError, match="no Linear layer matched"):
        lora_targets(outer, ["ff_out"], [0, 1])  # the old top-level default finds nothing here
