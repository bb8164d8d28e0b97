"""ROME, MEMIT and AlphaEdit on the tiny backbones: closed forms, exact restoration, v*, the
statistics cache, hyperparameter checks, and an end-to-end edit that lowers the forget ELBO."""
import copy

import pytest
import torch

import timerome
import timerome.data
import timerome.tracer
from timerome.baselines import alphaedit, editing, memit, rome
from timerome.hooks import has_hooks
from timerome.likelihood import answer_logprob

# Few Adam steps, few statistics texts, two prefixes: the whole file stays fast on two cores. The
# end-to-end test keeps the default 25 steps (few steps leave δ, and so the edit, small).
FAST = dict(v_steps=6, mom2_n_samples=120, n_prefixes=2)
E2E = dict(mom2_n_samples=300, n_prefixes=2)


@pytest.fixture(scope="module")
def mdlm():
    return timerome.load_backbone("tiny-mdlm")


@pytest.fixture(scope="module")
def arm():
    return timerome.load_backbone("tiny-arm")


@pytest.fixture(scope="module")
def facts(data_root):
    fs = timerome.data.load_tofu("forget01", data_root)
    return [fs[1], fs[2], fs[21], fs[22]]  # both authors, subject in the question


@pytest.fixture(scope="module")
def corpus(data_root):
    return editing.corpus_texts(data_root)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mom2")


def _weights(bb):
    return [bb.down_proj(l).weight.detach().clone() for l in range(bb.n_layers)]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _spd(d, gen, small=0):
    """A random symmetric positive-definite [d, d] matrix; ``small`` eigenvalues near zero."""
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    ev = torch.rand(d, generator=gen, dtype=torch.float64) + 0.5
    ev[:small] = 1e-6 * torch.rand(small, generator=gen, dtype=torch.float64)
    return U @ torch.diag(ev) @ U.T, U, ev


# ----------------------------------------------------------------------------- (1) ROME's closed form
def test_rank_one_update_is_the_constrained_least_squares_solution():
    g = torch.Generator().manual_seed(0)
    d, out = 12, 7
    C, _, _ = _spd(d, g)
    W, k, v, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((out, d), (d,), (out,), (out,)))
    dW = rome.rank_one_update(W, k, v, C, bias=b)
    # Independently: min tr(ΔW C ΔWᵀ) s.t. ΔW k = v - W k - b, as its KKT system [[C, k], [kᵀ, 0]].
    kkt = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    kkt[:d, :d], kkt[:d, d], kkt[d, :d] = C, k, k
    rhs = torch.zeros(d + 1, out, dtype=torch.float64)
    rhs[d] = v - W @ k - b
    ref = torch.linalg.lstsq(kkt, rhs).solution[:d].T
    torch.testing.assert_close(dW, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close((W + dW) @ k + b, v, rtol=1e-10, atol=1e-10)
    assert torch.linalg.matrix_rank(dW) == 1


def test_rome_edit_maps_each_key_to_its_target_value(mdlm, facts, corpus, cache):
    w0 = _weights(mdlm)
    hp = rome.ROMEHParams(layer=1, **FAST)
    edit = rome.build(mdlm, facts[:2], hp, corpus=corpus, cache_dir=cache)
    assert _same(w0, _weights(mdlm)), "build must leave the backbone unchanged"
    assert edit.layers == (1,) and edit.method == "rome"
    last = edit.info["per_fact"][-1]  # sequential: the last fact's key is exactly mapped to its v*
    with edit.applied(mdlm):
        W = mdlm.down_proj(1).weight.double()
        torch.testing.assert_close(W @ last["key"], last["v_star"], rtol=1e-4, atol=1e-4)
        assert (W @ last["key"] - last["v_star"]).norm() < 1e-3 * last["v_star"].norm()


# ----------------------------------------------------------------------------- (2) MEMIT's closed form
def test_memit_update_is_the_regularised_least_squares_solution():
    g = torch.Generator().manual_seed(1)
    n, d, out, lam = 5, 12, 7, 2.5
    C, _, _ = _spd(d, g)
    K, R = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, out, generator=g, dtype=torch.float64)
    dW = memit.memit_update(K, R, C, lam)
    ref = R.T @ K @ torch.linalg.inv(lam * C + K.T @ K)
    torch.testing.assert_close(dW, ref, rtol=1e-9, atol=1e-10)
    # the gradient of |ΔW Kᵀ - Rᵀ|² + λ tr(ΔW C ΔWᵀ) vanishes, and the fit is better than ΔW = 0
    torch.testing.assert_close(dW @ K.T @ K - R.T @ K + lam * dW @ C, torch.zeros(out, d, dtype=torch.float64),
                               rtol=0, atol=1e-9)
    assert (dW @ K.T - R.T).norm() < R.norm()


# ----------------------------------------------------------------------------- (3) AlphaEdit's null space
def test_alphaedit_projector_and_preserved_keys():
    g = torch.Generator().manual_seed(2)
    n, d, out, small = 4, 12, 7, 5
    C, U, ev = _spd(d, g, small=small)
    P = alphaedit.null_projector(C, 1e-3)
    torch.testing.assert_close(P @ P, P, rtol=0, atol=1e-12)
    torch.testing.assert_close(P, P.T, rtol=0, atol=1e-12)
    assert round(float(P.trace())) == small
    K, R = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, out, generator=g, dtype=torch.float64)
    prev = torch.randn(3, d, generator=g, dtype=torch.float64)
    for p in (None, prev.T @ prev):
        dW = alphaedit.alphaedit_update(K, R, P, 10.0, p)
        k0 = (torch.eye(d, dtype=torch.float64) - P) @ torch.randn(d, 20, generator=g, dtype=torch.float64)
        assert (dW @ k0).abs().max() < 1e-10 * max(1.0, float(dW.abs().max()))  # preserved keys do not move
        assert dW.abs().max() > 1e-3  # ... while the edit is not empty
        # AlphaEdit's solve written out: ΔW = Rᵀ K P ((KᵀK + prev) P + α I)⁻¹
        M = K.T @ K + (0 if p is None else p)
        ref = R.T @ K @ P @ torch.linalg.inv(M @ P + 10.0 * torch.eye(d, dtype=torch.float64))
        torch.testing.assert_close(dW, ref, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------- (4) exact restoration
def test_applied_restores_the_weights_bitwise_also_on_error(mdlm):
    g = torch.Generator().manual_seed(3)
    w0 = _weights(mdlm)
    deltas = {l: 1e-3 * torch.randn(*mdlm.down_proj(l).weight.shape, generator=g, dtype=torch.float64) for l in (0, 2)}
    edit = editing.Edit("test", mdlm.name, deltas, ("f",), (), None, "t", 0.0)
    for _ in range(2):  # re-enterable
        with edit.applied(mdlm):
            assert not torch.equal(mdlm.down_proj(0).weight, w0[0]) and torch.equal(mdlm.down_proj(1).weight, w0[1])
            expect = (w0[2].double() + deltas[2]).to(w0[2].dtype)
            assert torch.equal(mdlm.down_proj(2).weight, expect)
        assert _same(w0, _weights(mdlm))
    with pytest.raises(RuntimeError, match="boom"):
        with edit.applied(mdlm):
            raise RuntimeError("boom")
    assert _same(w0, _weights(mdlm))
    bad = editing.Edit("test", mdlm.name, {0: deltas[0], 1: torch.zeros(3, 3, dtype=torch.float64)}, (), (), None, "t", 0.0)
    with pytest.raises(ValueError, match="shape"):
        with bad.applied(mdlm):
            pass
    assert _same(w0, _weights(mdlm))  # layer 0 was already written when layer 1 failed
    other = copy.deepcopy(mdlm)
    edit.apply_(other)
    assert torch.equal(other.down_proj(2).weight, expect) and _same(w0, _weights(mdlm))
    with pytest.raises(ValueError, match="built on"):
        editing.Edit("test", "another", deltas, (), (), None, "t", 0.0).applied(mdlm)


# ----------------------------------------------------------------------------- (5) the target value
@pytest.mark.parametrize("name", ["mdlm", "arm"])
def test_v_star_optimisation_lowers_the_target_ce(name, mdlm, arm, facts, corpus):
    bb = mdlm if name == "mdlm" else arm
    (r,), _ = editing.prepare_requests(bb, facts[:1])
    seq, look, labels = editing._target_rows(bb, r, [[]])[0]
    assert look == r.last and seq[:len(r.prompt)] == list(r.prompt)
    if bb.is_causal:  # teacher forcing: position i predicts token i+1
        assert [seq[p + 1] if p + 1 < len(seq) else None for p, _ in labels][:-1] == list(r.target[:-1])
    else:  # the target positions are masked, and scored where they are
        assert all(seq[p] == bb.mask_id for p, _ in labels) and [t for _, t in labels] == list(r.target)
    w0 = _weights(bb)
    hp = editing.VHParams(v_steps=8)
    prefixes = editing.context_prefixes(bb, 2, corpus=corpus)
    vs = editing.optimize_delta(bb, r, 1, hp, prefixes)
    assert vs.nll < vs.nll_init - 0.3, (vs.nll_init, vs.nll)
    assert vs.delta.norm() <= hp.clamp_norm_factor * vs.h.norm() * (1 + 1e-5)
    assert _same(w0, _weights(bb)) and not has_hooks(bb.model)


# ----------------------------------------------------------------------------- (6) the statistics cache
def test_second_moment_cache(mdlm, corpus, tmp_path, monkeypatch):
    texts = corpus[:40]
    C1 = editing.second_moments(mdlm, [1], n_samples=30, texts=texts, cache_dir=tmp_path)[1]
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == 1 and C1.dtype == torch.float64
    torch.testing.assert_close(C1, C1.T, rtol=0, atol=0)
    assert float(torch.linalg.eigvalsh(C1)[0]) > -1e-8

    def no_forward(*a, **k):
        raise AssertionError("the second call must read the cache, not run the model")
    with monkeypatch.context() as m:
        m.setattr(mdlm, "logits", no_forward)
        assert torch.equal(editing.second_moments(mdlm, [1], n_samples=30, texts=texts, cache_dir=tmp_path)[1], C1)
    editing.second_moments(mdlm, [2], n_samples=30, texts=texts, cache_dir=tmp_path)
    editing.second_moments(mdlm, [1], n_samples=30, texts=corpus[40:80], cache_dir=tmp_path)
    editing.second_moments(mdlm, [1], n_samples=20, texts=texts, cache_dir=tmp_path)
    assert len(set(tmp_path.glob("*.pt"))) == 4  # layer, corpus and n each name their own file

    # the statistic itself: E[k kᵀ] over every position of [BOS prompt ; answer ; EOS], nothing masked
    few = corpus[:3]
    Cf = editing.second_moments(mdlm, [1], n_samples=3, texts=few, cache_dir=tmp_path / "few")[1]
    ks = []
    for q, a in few:
        ids = torch.tensor([mdlm.prompt_ids(q) + mdlm.answer_ids(a) + [mdlm.eos_id]])
        with mdlm.trace("blocks.1.mlp_in") as seen:
            mdlm.logits(ids)
        ks.append(seen["blocks.1.mlp_in"][0].double())
    K = torch.cat(ks)
    torch.testing.assert_close(Cf, K.T @ K / len(K), rtol=1e-4, atol=1e-6)

    files[0].write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=files[0].name):
        editing.second_moments(mdlm, [1], n_samples=30, texts=texts, cache_dir=tmp_path)
    blob = torch.load(sorted((tmp_path / "few").glob("*.pt"))[0], weights_only=True)
    torch.save(blob, files[0])  # a valid file of other statistics under this name
    with pytest.raises(ValueError, match=f"{files[0].name}: cached .* does not match"):
        editing.second_moments(mdlm, [1], n_samples=30, texts=texts, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- (7) hyperparameters
@pytest.mark.parametrize("cls, field, value", [
    (rome.ROMEHParams, "v_lr", -1.0), (rome.ROMEHParams, "v_steps", 2.5), (rome.ROMEHParams, "layer", -1),
    (rome.ROMEHParams, "clamp_norm_factor", 0.0), (rome.ROMEHParams, "kl_prompt", "no subject"),
    (rome.ROMEHParams, "mom2_masking", "some"), (rome.ROMEHParams, "mom2_n_samples", 0),
    (memit.MEMITHParams, "layers", (2, 1)), (memit.MEMITHParams, "layers", ()),
    (memit.MEMITHParams, "mom2_update_weight", float("nan")), (memit.MEMITHParams, "kl_factor", -0.1),
    (alphaedit.AlphaEditHParams, "nullspace_threshold", 2.0), (alphaedit.AlphaEditHParams, "l2", 0.0),
    (alphaedit.AlphaEditHParams, "v_weight_decay", True),
])
def test_bad_hyperparameters_name_the_field(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}="):
        cls(**{field: value})


def test_out_of_range_layers_fail_before_work(mdlm, facts):
    with pytest.raises(ValueError, match="layer"):
        rome.build(mdlm, facts, rome.ROMEHParams(layer=4))
    with pytest.raises(ValueError, match="layers"):
        memit.build(mdlm, facts, memit.MEMITHParams(layers=(2, 3, 4)))


# ----------------------------------------------------------------------------- (8) end to end
def test_each_editor_lowers_the_forget_elbo(mdlm, facts, corpus, cache):
    qs, ans = [f.question for f in facts], [f.answer for f in facts]
    base = answer_logprob(mdlm, qs, ans, n_mc=4)
    w0 = _weights(mdlm)
    builds = {"rome": rome.build(mdlm, facts, rome.ROMEHParams(**E2E), corpus=corpus, cache_dir=cache),
              "memit": memit.build(mdlm, facts, memit.MEMITHParams(**E2E), corpus=corpus, cache_dir=cache),
              "alphaedit": alphaedit.build(mdlm, facts, alphaedit.AlphaEditHParams(**E2E), corpus=corpus,
                                           cache_dir=cache)}
    assert _same(w0, _weights(mdlm)), "a build must leave the backbone unchanged"
    drops = {}
    for name, edit in builds.items():
        assert edit.fact_ids == tuple(f.fact_id for f in facts) and edit.build_s > 0
        with edit.applied(mdlm):
            drops[name] = float((answer_logprob(mdlm, qs, ans, n_mc=4) - base).mean())
        assert _same(w0, _weights(mdlm))
    print("mean ΔELBO (nats):", {k: round(v, 2) for k, v in drops.items()})
    assert all(d < -0.5 for d in drops.values()), drops  # common random numbers: the MC noise cancels
    z = builds["memit"].info["z_error"]  # each layer's least-squares step closes part of the gap at L
    assert z[-1] < z[0]
    # AlphaEdit: ΔW leaves the preserved subspace (P k0 = 0) of each layer's statistics unchanged
    hp = builds["alphaedit"].hparams
    C = editing.second_moments(mdlm, hp.layers, n_samples=hp.mom2_n_samples, texts=corpus, cache_dir=cache)
    for l, dW in builds["alphaedit"].deltas.items():
        P = alphaedit.null_projector(C[l], hp.nullspace_threshold)
        keep = torch.eye(P.shape[0], dtype=torch.float64) - P
        assert (dW @ keep).norm() <= 1e-8 * max(1.0, float(dW.norm()))
    # the Table I protocol enters the edit once around a whole evaluation
    from timerome.metrics import evaluate
    rows = evaluate(mdlm, {"forget01": facts[:2]}, edit=lambda: builds["memit"].applied(mdlm), rouge=False,
                    with_truth_ratio=False, n_mc=4)
    assert len(rows) == 2 and _same(w0, _weights(mdlm))


def test_causal_backbone_and_sequential_alphaedit(arm, mdlm, facts, corpus, cache, data_root):
    w0 = _weights(arm)
    e = memit.build(arm, facts[:2], memit.MEMITHParams(**FAST), corpus=corpus, cache_dir=cache)
    assert _same(w0, _weights(arm)) and e.layers == (0, 1, 2) and e.info["z_error"][-1] < e.info["z_error"][0]
    with pytest.raises(ValueError, match="causal"):
        editing.second_moments(arm, [1], texts=corpus[:5], masking="answer", cache_dir=cache)
    # sequential AlphaEdit: the second batch is built on the first, which enters K_pᵀK_p
    hp = alphaedit.AlphaEditHParams(**FAST)
    first = alphaedit.build(mdlm, facts[:2], hp, corpus=corpus, cache_dir=cache)
    both = alphaedit.build(mdlm, facts[2:], hp, corpus=corpus, cache_dir=cache, previous=first)
    assert both.fact_ids == tuple(f.fact_id for f in facts)
    for l in hp.layers:
        assert both.info["key_cov"][l].shape == (344, 344)
        assert float((both.info["key_cov"][l] - first.info["key_cov"][l]).trace()) > 0
        if first.info["null_dims"][l]:  # a layer without null directions gets ΔW = 0 from every batch
            assert not torch.equal(both.deltas[l], first.deltas[l])
        else:
            assert not both.deltas[l].any()
    with pytest.raises(ValueError, match="not an AlphaEdit edit"):
        alphaedit.build(mdlm, facts[2:], hp, corpus=corpus, cache_dir=cache, previous=e)


def test_facts_without_a_located_subject(mdlm, data_root, corpus, cache):
    fs = timerome.data.load_tofu("forget01", data_root)
    assert fs[0].subject_in == "answer"  # its subject cannot be keyed in the question
    e = rome.build(mdlm, [fs[0], fs[1]], rome.ROMEHParams(v_steps=1, mom2_n_samples=120, n_prefixes=0),
                   corpus=corpus, cache_dir=cache)
    assert e.fact_ids == (fs[1].fact_id,) and e.skipped == (fs[0].fact_id,)
    with pytest.raises(timerome.tracer.SubjectError):
        rome.build(mdlm, [fs[0]], rome.ROMEHParams(**FAST), corpus=corpus, cache_dir=cache, skip_unlocatable=False)


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit"])
def test_editors_are_not_applicable_to_a_mixture_of_experts(method, facts):
    from timerome.baselines import builders

    moe = timerome.load_backbone("tiny-llada-moe")
    with pytest.raises(builders.NotApplicable, match="has none"):
        builders.build(method, builders.Context(moe, facts))
