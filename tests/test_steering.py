"""Inference-time baselines: ActSteer (mean-difference steering) and RMULike (this artifact's reading)."""
import math

import pytest
import torch

import timerome
from timerome import data, splits
from timerome.baselines.steering import ActSteer, RMULike, control_vector
from timerome.hooks import has_hooks
from timerome.likelihood import answer_logprob, encode_example
from timerome.sampler import left_pad

LAYER = 1
AT = f"blocks.{LAYER}.resid_post"


@pytest.fixture(scope="module")
def bb():
    return timerome.load_backbone("tiny-mdlm")


@pytest.fixture(scope="module")
def forget():
    return data.load_tofu("forget01")


@pytest.fixture(scope="module")
def retain():
    return splits.anchor_facts(max_examples=40)


@pytest.fixture(scope="module")
def steer(bb, forget, retain):
    return ActSteer.build(bb, forget, retain, LAYER)


@pytest.fixture(scope="module")
def rmu(bb, forget):
    return RMULike.build(bb, forget, LAYER)


def _batch(bb, facts):
    return left_pad([sum(encode_example(bb, f.question, f.answer), []) for f in facts], bb.pad_id, bb.device)


def _hooked(bb, ids, att):
    with bb.trace(AT) as seen:
        logits = bb.logits(ids, att)
    return seen[AT].clone(), logits


# --- ActSteer --------------------------------------------------------------------------------
def test_direction_and_scale_are_the_brute_force_mean_difference(bb, forget, retain, steer):
    def per_fact(facts):  # one unpadded full forward per fact
        means, norms = [], []
        for f in facts:
            ids = torch.tensor([sum(encode_example(bb, f.question, f.answer), [])])
            with bb.at_step(0), bb.trace(AT) as seen:
                bb.logits(ids)
            h = seen[AT][0].double()
            means.append(h.mean(0))
            norms.append(h.norm(dim=-1))
        return torch.stack(means).mean(0), torch.cat(norms)

    mf, nf = per_fact(forget)
    mr, nr = per_fact(retain)
    r = mf - mr
    torch.testing.assert_close(steer.direction, r / r.norm(), atol=1e-5, rtol=0)
    assert steer.direction.norm().item() == pytest.approx(1.0, abs=1e-12)
    assert steer.scale == pytest.approx(torch.cat([nf, nr]).mean().item(), rel=1e-5)
    assert steer.layer == LAYER and steer.module == "resid" and steer.coef == 1.0 and steer.build_s > 0
    assert ActSteer.LABEL == "act_steer"


def test_installed_steering_adds_exactly_minus_coef_scale_direction(bb, forget, steer):
    ids, att = _batch(bb, forget[:6])
    h0, _ = _hooked(bb, ids, att)
    s = steer.with_coef(0.7)
    with s.installed(bb):
        h1, _ = _hooked(bb, ids, att)  # this trace's hook runs after the steering hook: sees the edited h
    d = (-0.7 * steer.scale) * steer.direction
    assert torch.equal(h1, h0 + d.to(h0.dtype))  # every position, padding included
    assert torch.allclose((h1 - h0).double(), d.expand_as(h0), atol=1e-4)


def test_with_coef_returns_a_new_object_without_mutation(steer):
    s = steer.with_coef(2.5)
    assert s is not steer and s.coef == 2.5 and steer.coef == 1.0
    assert s.direction is steer.direction and s.scale == steer.scale and s.build_s == steer.build_s


def test_steering_fires_at_every_denoising_step(bb, forget, steer):
    ids, att = _batch(bb, forget[:2])
    with steer.installed(bb):
        outs = []
        for k in (None, 0, 3, 7):
            with bb.at_step(k):
                outs.append(_hooked(bb, ids, att)[0])
    h0, _ = _hooked(bb, ids, att)
    for h in outs:
        assert not torch.allclose(h, h0)
        assert torch.equal(h, outs[0])


# --- RMULike ---------------------------------------------------------------------------------
def test_control_vector_is_a_fixed_seeded_unit_vector(bb, rmu):
    u = control_vector(bb.hidden_size, 0)
    assert torch.equal(u, control_vector(bb.hidden_size, 0))
    assert not torch.equal(u, control_vector(bb.hidden_size, 1))
    assert u.norm().item() == pytest.approx(1.0, abs=1e-12) and bool((u >= 0).all())
    expected = torch.rand(bb.hidden_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(u, expected / expected.norm(), atol=0, rtol=0)
    assert torch.equal(rmu.control.cpu(), u)
    assert RMULike.LABEL == "rmu_like (this artifact's reading)"


def test_rmu_keys_are_the_captured_subject_keys(bb, forget, rmu):
    from timerome.capture import capture_keys

    U = capture_keys(bb, forget, LAYER, skip_unlocatable=True)["U"]
    torch.testing.assert_close(rmu.keys, U / U.norm(dim=1, keepdim=True))
    assert rmu.tau == 0.8 and rmu.scale > 0


def test_rmu_gate_values():
    H = 4
    keys = torch.eye(H, dtype=torch.float64)[:2]  # forget keys e0, e1
    m = RMULike(keys, control_vector(H, 0), scale=1.0, layer=0, tau=0.5)
    assert m.gate(torch.tensor([3.0, 0, 0, 0])).item() == 1.0          # a forget key (any length)
    assert m.gate(torch.tensor([0, 0, 2.0, -1.0])).item() == 0.0       # orthogonal to every key
    assert m.gate(torch.tensor([-1.0, 0, 0, 0])).item() == 0.0         # anti-aligned: clamped at 0
    h = torch.tensor([1.0, 0, 1.0, 0])                                  # cos = 1/√2 with e0
    assert m.gate(h).item() == pytest.approx((1 / math.sqrt(2) - 0.5) / 0.5, abs=1e-12)
    h2 = torch.tensor([[0, 2.0, 1.0, 0], [1.0, 0, 0, 0]])               # max over keys, per row
    torch.testing.assert_close(m.gate(h2), torch.tensor([((2 / math.sqrt(5)) - 0.5) / 0.5, 1.0],
                                                        dtype=torch.float64))


def test_rmu_installed_adds_the_gated_control_vector(bb, forget, rmu):
    ids, att = _batch(bb, forget[:6])
    h0, _ = _hooked(bb, ids, att)
    m = rmu.with_coef(1.5)
    with m.installed(bb):
        h1, _ = _hooked(bb, ids, att)
    g = m.gate(h0)
    assert bool((g > 0).any()) and bool((g < 1).any())  # the gate is selective on real states
    expected = h0 + ((1.5 * rmu.scale) * g[..., None] * rmu.control).to(h0.dtype)
    assert torch.equal(h1, expected)


# --- both ------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["steer", "rmu"])
def test_hooks_removed_on_exit_and_on_exception(bb, which, request):
    e = request.getfixturevalue(which)
    ids, att = _batch(bb, [data.load_tofu("forget01")[0]])
    assert not has_hooks(bb.model)
    with e.installed(bb):
        assert has_hooks(bb.model)
        bb.logits(ids, att)
    assert not has_hooks(bb.model)
    with pytest.raises(RuntimeError, match="boom"):
        with e.installed(bb):
            bb.logits(ids, att)
            raise RuntimeError("boom")
    assert not has_hooks(bb.model)


@pytest.mark.parametrize("which", ["steer", "rmu"])
def test_coef_zero_leaves_logits_bitwise_unchanged(bb, forget, which, request):
    e = request.getfixturevalue(which).with_coef(0)
    ids, att = _batch(bb, forget[:6])
    _, l0 = _hooked(bb, ids, att)
    with e.installed(bb):
        _, l1 = _hooked(bb, ids, att)
    assert torch.equal(l0, l1)


def test_bad_inputs_raise(bb, forget, retain, steer, rmu):
    with pytest.raises(ValueError, match="forget"):
        ActSteer.build(bb, [], retain, LAYER)
    with pytest.raises(ValueError, match="retain"):
        ActSteer.build(bb, forget, [], LAYER)
    with pytest.raises(ValueError, match="forget"):
        RMULike.build(bb, [], LAYER)
    for layer in (bb.n_layers, 1.5, True):
        with pytest.raises(ValueError, match="layer"):
            ActSteer.build(bb, forget, retain, layer)
        with pytest.raises(ValueError, match="layer"):
            RMULike.build(bb, forget, layer)
    with pytest.raises(ValueError, match="module"):
        ActSteer.build(bb, forget, retain, LAYER, module="mlp_in")
    for coef in (-1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="coef"):
            ActSteer.build(bb, forget, retain, LAYER, coef=coef)
        with pytest.raises(ValueError, match="coef"):
            RMULike.build(bb, forget, LAYER, coef=coef)
        with pytest.raises(ValueError, match="coef"):
            steer.with_coef(coef)
        with pytest.raises(ValueError, match="coef"):
            rmu.with_coef(coef)
    for tau in (1.0, -0.1, float("nan"), 2):
        with pytest.raises(ValueError, match="tau"):
            RMULike.build(bb, forget, LAYER, tau=tau)


# --- end to end ------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["steer", "rmu"])
def test_positive_coef_lowers_the_forget_elbo(bb, forget, which, request):
    e = request.getfixturevalue(which)
    qs, ans = [f.question for f in forget], [f.answer for f in forget]
    base = answer_logprob(bb, qs, ans, n_mc=4, seed=0)
    with e.installed(bb):
        steered = answer_logprob(bb, qs, ans, n_mc=4, seed=0)  # same masks: a paired comparison
    assert steered.mean() < base.mean()
    assert not has_hooks(bb.model)
