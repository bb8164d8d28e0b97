"""The edit memory (`timerome.memory`): Eq. 10-12, streaming, install/restore, capture, persistence."""
import json

import pytest
import torch

from timerome.data import Fact
from timerome.capture import capture_keys
from timerome.memory import EditMemory, GatedEdit
from timerome.sampler import generate
from timerome.tracer import SubjectError, subject_positions

from conftest import make_tiny_backbone, record, scale_blocks

LAYER = 1


def fact(question, answer, subject, index=0, split="toy"):
    if subject in question:
        s, where = question.index(subject), "question"
    else:
        s, where = answer.index(subject), "answer"
    return Fact(question=question, answer=answer, subject=subject, subject_rule="given", split=split, index=index,
                subject_span=(s, s + len(subject)), subject_in=where)


FACTS = [fact("who wrote the red book ?", "alice wrote it in paris", "red book", 0),
         fact("who painted a blue sea near rome ?", "bob", "blue sea", 1),
         fact("what does carol sing ?", "songs about snow", "carol", 2),
         fact("where was the red book written ?", "paris", "red book", 3)]


def keys(n=12, H=16, seed=0, common=3.0):
    """Synthetic keys with a shared component (as real residuals have): UUᵀ is ill-conditioned."""
    g = torch.Generator().manual_seed(seed)
    shared = common * torch.randn(1, H, generator=g, dtype=torch.float64)
    U = torch.randn(n, H, generator=g, dtype=torch.float64) + shared
    return U, torch.randn(n, H, generator=g, dtype=torch.float64)


def reference_delta(U, D, h, lam, alpha, q):
    """Eq. 11-12 written out: explicit inverse, then TopQ one token at a time."""
    G = torch.linalg.inv(U @ U.T + lam * torch.eye(U.shape[0], dtype=torch.float64))
    flat = h.reshape(-1, h.shape[-1])
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        c = G @ U @ flat[t]
        if 0 < q < len(c):
            keep = torch.zeros_like(c)
            top = sorted(range(len(c)), key=lambda i: -abs(float(c[i])))[:q]
            keep[top] = c[top]
            c = keep
        out[t] = alpha * D.T @ c
    return out.reshape(h.shape)


@pytest.fixture
def bb(tiny_tokenizer):
    return scale_blocks(make_tiny_backbone(tiny_tokenizer, layers=3, d=32))


def ids_of(bb, f):
    prompt, _ = subject_positions(bb, f)
    return torch.tensor([prompt + bb.encode(bb.answer_prefix + f.answer)])


# ============================================================================ Eq. 10-12 numerics
@pytest.mark.parametrize("n,H,q", [(12, 16, 0),   # dense, low-rank path (H >= 2|F|)
                                   (12, 8, 0),    # dense, one H×H matrix (H < 2|F|)
                                   (12, 16, 12),  # q >= |F| is dense
                                   (12, 16, 5),   # TopQ by scatter + matmul
                                   (40, 16, 2),   # TopQ by gathering q rows of D (8q <= |F|)
                                   (40, 16, 1)])
def test_delta_matches_the_dense_formula(n, H, q):
    U, D = keys(n, H)
    mem = EditMemory(U, D, lam=0.3, alpha=0.7, q=q)
    h = torch.randn(3, 5, H, dtype=torch.float64) + U[:3, None]  # tokens near some keys
    ref = reference_delta(U, D, h, 0.3, 0.7, q)
    assert torch.allclose(mem.delta(h), ref, rtol=1e-9, atol=1e-9 * ref.abs().max())
    # the float32 forward path (what a float32 model uses) agrees to float32 precision
    d32 = mem.delta(h.float())
    assert d32.dtype == torch.float32
    assert torch.allclose(d32.double(), ref, rtol=1e-3, atol=1e-4 * ref.abs().max())


def test_topq_keeps_q_coefficients_per_token():
    U, D = keys(20, 24, common=0.0)
    mem = EditMemory(U, D, lam=0.1, alpha=1.0, q=3)
    h = torch.randn(7, 24, dtype=torch.float64)
    c = mem.coefficients(h)
    # each token's delta is α Dᵀ c restricted to exactly its own 3 largest |c| (D has full row rank)
    coef = torch.linalg.lstsq(D.T, mem.delta(h).T).solution.T  # recover the used coefficients
    for t in range(7):
        used = (coef[t].abs() > 1e-8).nonzero().flatten()
        assert sorted(used.tolist()) == sorted(c[t].abs().topk(3).indices.tolist())
        assert torch.allclose(coef[t, used], c[t, used])
    assert len({tuple(sorted((coef[t].abs() > 1e-8).nonzero().flatten().tolist())) for t in range(7)}) > 1


@pytest.mark.parametrize("gather", [True, False])  # q of many (gathered rows) and q of few (scatter)
def test_topq_ties_are_decided_in_float64_then_by_index(gather):
    """Coefficients equal in float32 but not in float64 are ranked by their float64 values; exact ties
    go to the lower index. (W is set by hand to make the ties exact.)"""
    n, H = (16, 20) if gather else (3, 20)  # H >= n: the used coefficients are recoverable
    U, D = keys(n, H)
    mem = EditMemory(U, D, lam=1.0, alpha=1.0, q=1, gram="facts")
    W = torch.zeros(n, H, dtype=torch.float64)
    W[0, 0], W[1, 0], W[2, 0] = 1.0, 1.0 + 2.0 ** -30, -(1.0 + 2.0 ** -30)  # 1 and 2 tie in float64 too
    mem.W, mem._cache = W, {}
    h = torch.zeros(5, H)
    h[:, 0] = 1.0
    assert len(set(mem.coefficients(h)[0, :3].abs().tolist())) == 1  # one float32 value
    used = torch.linalg.lstsq(D.T.double(), mem.delta(h).double().T).solution.T
    assert (used.abs() > 1e-3).nonzero()[:, 1].tolist() == [1] * 5


def test_alpha_and_q_can_change_without_refactorising():
    U, D = keys(10, 16)
    mem = EditMemory(U, D, lam=0.5, alpha=1.0, q=0)
    h = torch.randn(4, 16, dtype=torch.float64)
    L = mem.L
    mem.alpha, mem.q = 2.0, 3
    assert mem.L is L
    assert torch.allclose(mem.delta(h), reference_delta(U, D, h, 0.5, 2.0, 3))


def test_gated_edit_eq10():
    g = torch.Generator().manual_seed(1)
    u, d = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    e = GatedEdit(u, d, alpha=0.5, g_max=1.5, eps=1e-3)
    h = torch.stack([u, -u, 3 * u, 0.5 * u, torch.randn(16, generator=g, dtype=torch.float64)])
    gate = ((h @ u) / (u @ u + 1e-3)).clamp(0, 1.5)
    assert torch.allclose(e.delta(h), 0.5 * gate[:, None] * d)
    assert e.gate(h)[1] == 0 and e.gate(h)[2] == 1.5  # clipped at 0 and at g_max
    assert abs(float(e.gate(h)[0]) - float(u @ u / (u @ u + 1e-3))) < 1e-12


def test_single_fact_memory_vs_gated_edit(bb):
    """Both write along d_z; the memory's coefficient is ridge-shrunk <u,h>/(|u|²+λ), unclipped."""
    e = GatedEdit.build(bb, FACTS[0], LAYER, alpha=1.0, g_max=10.0, eps=0.25)
    mem = EditMemory.build(bb, FACTS[:1], LAYER, lam=0.25, alpha=1.0, q=0)
    assert torch.equal(e.u, mem.U[0]) and torch.equal(e.d, mem.D[0])
    h = mem.U[0][None] * torch.tensor([[0.5], [1.0], [2.0]], dtype=torch.float64)
    assert torch.allclose(e.delta(h), mem.delta(h))


# ==================================================================================== streaming
@pytest.mark.parametrize("H,start,form", [(40, 1, "facts"),    # |F| <= H: the |F|×|F| Gram grows
                                          (8, 12, "hidden")])    # |F| > H: the H×H Gram is updated
def test_streaming_insert_and_remove_match_a_from_scratch_build(H, start, form):
    U, D = keys(30, H, common=5.0)
    mem = EditMemory(U[:start], D[:start], lam=0.05, alpha=1.0, q=4, keys=[f"f{i}" for i in range(start)])
    assert mem.gram == form
    for i in range(start, 30):
        mem.insert(U[i], D[i], f"f{i}")
    gone = ["f0", "f13", "f29", "f7"]
    for k in gone:
        mem.remove(k)
    left = [i for i in range(30) if f"f{i}" not in gone]
    mem.insert(U[13], D[13], "f13")  # re-insert after removals
    left.append(13)
    assert mem.gram == form  # the form is kept while streaming
    ref = EditMemory(U[left], D[left], lam=0.05, alpha=1.0, q=4, keys=[f"f{i}" for i in left])
    assert mem.keys == ref.keys and torch.equal(mem.U, ref.U) and torch.equal(mem.D, ref.D)
    rel = lambda a, b: float((a - b).norm() / b.norm())
    assert rel(mem.W, ref.W) < 1e-5
    gram = mem.U @ mem.U.T if form == "facts" else mem.U.T @ mem.U
    assert torch.allclose(mem.L @ mem.L.T, gram + 0.05 * torch.eye(len(gram), dtype=torch.float64))
    assert torch.equal(mem.L, mem.L.tril())
    h = torch.randn(5, H, dtype=torch.float64) + U[left[:5]]
    assert rel(mem.delta(h), ref.delta(h)) < 1e-5
    assert rel(mem.delta(h), reference_delta(ref.U, ref.D, h, 0.05, 1.0, 4)) < 1e-5


def test_both_gram_forms_give_the_same_edit():
    U, D = keys(12, 10)
    h = torch.randn(6, 10, dtype=torch.float64)
    hidden = EditMemory(U, D, lam=0.2, alpha=1.0, q=3)
    facts = EditMemory(U[:10], D[:10], lam=0.2, alpha=1.0, q=3)
    assert (hidden.gram, facts.gram) == ("hidden", "facts")
    facts.insert(U[10], D[10], 10)
    facts.insert(U[11], D[11], 11)
    assert torch.allclose(hidden.W, facts.W, rtol=1e-9, atol=1e-12)
    assert torch.allclose(hidden.delta(h), reference_delta(U, D, h, 0.2, 1.0, 3))


def test_streaming_from_empty_and_back():
    U, D = keys(5, 8)
    mem = EditMemory.empty(8, lam=0.2, alpha=1.0, q=0)
    h = torch.randn(3, 8, dtype=torch.float64)
    assert len(mem) == 0 and torch.equal(mem.delta(h), torch.zeros_like(h))
    for i in range(5):
        mem.insert(U[i], D[i], i)
    assert torch.allclose(mem.delta(h), reference_delta(U, D, h, 0.2, 1.0, 0))
    for i in [2, 0, 4, 1, 3]:
        mem.remove(i)
    assert len(mem) == 0 and mem.L.shape == (0, 0) and torch.equal(mem.delta(h), torch.zeros_like(h))


def test_memories_own_their_inputs():
    """Two memories from the same float64 U, D: removing from one leaves the caller's tensors and
    the other memory untouched (each keeps copies, not the caller's storage)."""
    U, D = keys(8, 12)
    U0, D0 = U.clone(), D.clone()
    a, b = EditMemory(U, D, lam=0.3, alpha=1.0, q=2), EditMemory(U, D, lam=0.3, alpha=1.0, q=2)
    a.remove(3)
    assert torch.equal(U, U0) and torch.equal(D, D0)
    assert torch.equal(b.W, EditMemory(b.U, b.D, lam=0.3, alpha=1.0, q=2).W)
    u, d = U0[3].clone(), D0[3].clone()
    a.insert(u, d, "x")
    u.zero_(), d.zero_()  # the caller reuses its vectors: the memory keeps what was inserted
    assert torch.equal(a.U[-1], U0[3]) and torch.equal(a.D[-1], D0[3])
    g = GatedEdit(U[0], D[0], alpha=1.0)
    U[0] = 0.0
    assert torch.equal(g.u, U0[0])


def test_remove_all_restores_no_edit_logits_exactly(bb):
    mem = EditMemory.build(bb, FACTS, LAYER, lam=1.0, alpha=2.0, q=2)
    x = ids_of(bb, FACTS[0])
    base = bb.logits(x)
    with mem.installed(bb):
        assert not torch.allclose(bb.logits(x), base)  # the edit does something
        for k in list(mem.keys):
            mem.remove(k)
        assert torch.equal(bb.logits(x), base)  # an empty memory is no edit at all
    k = capture_keys(bb, FACTS[:1], LAYER)
    mem.insert(k["U"][0], k["D"][0], k["fact_ids"][0])
    with mem.installed(bb):
        assert not torch.equal(bb.logits(x), base)


# ====================================================================================== install
def test_installed_adds_delta_to_the_hooked_output(bb):
    mem = EditMemory.build(bb, FACTS, LAYER, lam=1.0, alpha=1.0, q=2)
    x = ids_of(bb, FACTS[1])
    point = f"blocks.{LAYER}.resid_post"
    with record(bb, point) as clean:
        bb.logits(x)
    with mem.installed(bb), record(bb, point) as edited:  # capture hooks after the edit: sees its result
        bb.logits(x)
    h0 = clean[0]
    assert torch.allclose(edited[0], h0 + mem.delta(h0), rtol=0, atol=1e-5 * float(h0.abs().max()))
    assert not torch.allclose(edited[0], h0)


@pytest.mark.parametrize("module", ["resid", "attn", "mlp"])
def test_bitwise_restoration_after_an_exception(bb, module):
    mem = EditMemory.build(bb, FACTS, LAYER, module=module, lam=1.0, alpha=3.0, q=0)
    x = ids_of(bb, FACTS[2])
    base = bb.logits(x)
    with pytest.raises(RuntimeError, match="boom"):
        with mem.installed(bb):
            assert not torch.equal(bb.logits(x), base)
            raise RuntimeError("boom")
    assert torch.equal(bb.logits(x), base)
    assert all(not m._forward_hooks for m in bb.model.modules())


def test_steps_restricts_the_edit_to_chosen_denoising_steps(bb):
    mem = EditMemory.build(bb, FACTS, LAYER, lam=1.0, alpha=3.0, q=2)
    prompt = [subject_positions(bb, FACTS[0])[0]]
    point = f"blocks.{LAYER}.resid_post"
    with record(bb, point) as clean:
        generate(bb, prompt, gen_length=6, steps=3)
    with mem.installed(bb, steps={1}), record(bb, point) as edited:
        generate(bb, prompt, gen_length=6, steps=3)
    c, e = clean, edited
    assert torch.equal(e[0], c[0])  # step 0: no edit
    # step 1 sees the same input as the clean run (step 0 committed the same tokens): edited there
    assert torch.allclose(e[1], c[1] + mem.delta(c[1]), rtol=0, atol=1e-5 * float(c[1].abs().max()))
    assert not torch.allclose(e[1], c[1])
    x = ids_of(bb, FACTS[0])
    base = bb.logits(x)
    with mem.installed(bb, steps=[1]):
        assert torch.equal(bb.logits(x), base)  # outside a sampler there is no step: no edit
    with mem.installed(bb, steps=-1):
        assert not torch.equal(bb.logits(x), base)  # k* = -1: every forward


# ====================================================================================== capture
def test_build_matches_a_single_unpadded_forward_per_fact(bb):
    mem = EditMemory.build(bb, FACTS, LAYER, lam=1.0, alpha=1.0, q=2, batch_size=3)
    assert mem.keys == [f.fact_id for f in FACTS] and set(mem.timings) == {"capture_s", "solve_s"}
    point = f"blocks.{LAYER}.resid_post"
    tgt = bb.encode(bb.answer_prefix + "I don't know.")
    for i, f in enumerate(FACTS):
        prompt, S = subject_positions(bb, f)
        ans = bb.encode(bb.answer_prefix + f.answer)
        with record(bb, point) as a:
            bb.logits(torch.tensor([prompt + ans]))
        with record(bb, point) as t:
            bb.logits(torch.tensor([prompt + tgt]))
        P = len(prompt)
        ha, ht = a[0][0].double(), t[0][0].double()
        u, v_o, v_t = ha[S].mean(0), ha[P:P + len(ans)].mean(0), ht[P:P + len(tgt)].mean(0)
        assert torch.allclose(mem.U[i], u, atol=1e-5 * float(u.abs().max()))
        assert torch.allclose(mem.D[i], v_t - v_o, atol=1e-5 * float(ha.abs().max()))


def test_capture_early_exit_and_batch_size_do_not_change_the_keys(bb):
    a = capture_keys(bb, FACTS, LAYER, module="mlp", batch_size=1)
    b = capture_keys(bb, FACTS, LAYER, module="mlp", batch_size=1, early_exit=False)
    c = capture_keys(bb, FACTS, LAYER, module="mlp", batch_size=4)
    assert torch.equal(a["U"], b["U"]) and torch.equal(a["D"], b["D"])
    assert torch.allclose(a["U"], c["U"], atol=1e-5 * float(a["U"].abs().max()))


def test_capture_sees_step_zero_and_restores_the_clock(bb):
    seen = []
    h = bb.blocks[0].register_forward_hook(lambda *a: seen.append(bb.step))
    try:
        bb.step = "outer"
        capture_keys(bb, FACTS[:2], LAYER)
    finally:
        h.remove()
    assert seen and set(seen) == {0} and bb.step == "outer"


def test_subject_outside_the_question(bb):
    bad = fact("who wrote it ?", "alice wrote the red book", "red book", 9)
    with pytest.raises(SubjectError, match="toy:9"):
        EditMemory.build(bb, FACTS + [bad], LAYER, lam=1.0, alpha=1.0, q=0)
    mem = EditMemory.build(bb, FACTS + [bad], LAYER, lam=1.0, alpha=1.0, q=0, skip_unlocatable=True)
    assert mem.skipped == ["toy:9"] and len(mem) == len(FACTS)


# ================================================================================== persistence
def test_save_load_round_trip(bb, tmp_path):
    mem = EditMemory.build(bb, FACTS[:3], LAYER, lam=0.5, alpha=1.5, q=2, target="no idea .")
    k = capture_keys(bb, FACTS[3:], LAYER, target="no idea .")
    mem.insert(k["U"][0], k["D"][0], k["fact_ids"][0])
    mem.remove(FACTS[1].fact_id)
    mem.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "memory.json").read_text())
    assert (meta["layer"], meta["module"], meta["alpha"], meta["lam"], meta["q"]) == (LAYER, "resid", 1.5, 0.5, 2)
    assert meta["keys"] == mem.keys and meta["backbone"] == bb.name and meta["hidden_size"] == 32
    back = EditMemory.load(tmp_path / "m", backbone=bb)
    assert back.keys == mem.keys and torch.equal(back.U, mem.U) and torch.equal(back.D, mem.D)
    assert (back.layer, back.module, back.target) == (LAYER, "resid", "no idea .")
    assert (back.alpha, back.q, back.lam) == (1.5, 2, 0.5)
    x = ids_of(bb, FACTS[0])
    with mem.installed(bb):
        a = bb.logits(x)
    with back.installed(bb):  # layer and module come from the file
        b = bb.logits(x)
    assert torch.allclose(a, b, atol=1e-5)
    ref = EditMemory(mem.U, mem.D, lam=0.5, alpha=1.5, q=2)  # load refactorises: a from-scratch build
    h = torch.randn(4, 32, dtype=torch.float64)
    assert torch.equal(back.delta(h), ref.delta(h))


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "memory.json").write_text('{"format": "timerome-edit'), "memory.json: corrupt.*not valid JSON"),
    (lambda d: _edit_meta(d, lambda m: m.pop("n_facts")), r"memory.json: corrupt.*missing.*'n_facts'"),
    (lambda d: _edit_meta(d, lambda m: m.update(lam="abc")), r"memory.json: lam='abc'"),
    (lambda d: _edit_meta(d, lambda m: m.update(keys=[1])), r"memory.json: field 'keys'"),
    (lambda d: (d / "memory.json").write_text("[1, 2]"), "memory.json: not a timerome-edit-memory"),
    (lambda d: (d / "memory.safetensors").write_bytes(b"\x00garbage"), "memory.safetensors: corrupt"),
])
def test_load_corrupt_memory_names_the_file(tmp_path, damage, match):
    U, D = keys(3, 8)
    path = EditMemory(U, D, lam=1.0, alpha=1.0, q=0).save(tmp_path / "m")
    damage(path)
    with pytest.raises(ValueError, match=match):
        EditMemory.load(path)


def _edit_meta(path, change):
    meta = json.loads((path / "memory.json").read_text())
    change(meta)
    (path / "memory.json").write_text(json.dumps(meta))


def test_save_load_empty_memory(tmp_path):
    mem = EditMemory.empty(8, lam=1.0, alpha=1.0, q=2, layer=3)
    back = EditMemory.load(mem.save(tmp_path / "e"))
    assert len(back) == 0 and back.hidden_size == 8 and back.layer == 3


def test_wrong_hidden_size_fails_clearly(bb, tiny_tokenizer, tmp_path):
    mem = EditMemory.build(bb, FACTS[:2], LAYER, lam=1.0, alpha=1.0, q=0)
    mem.save(tmp_path / "m")
    other = make_tiny_backbone(tiny_tokenizer, layers=3, d=16)
    with pytest.raises(ValueError, match="hidden size 32.*hidden size 16"):
        EditMemory.load(tmp_path / "m", backbone=other)
    with pytest.raises(ValueError, match="hidden size 32.*hidden size 16"):
        with EditMemory.load(tmp_path / "m").installed(other):
            pass
    with pytest.raises(FileNotFoundError, match="not a saved edit memory"):
        EditMemory.load(tmp_path)


# =================================================================================== validation
@pytest.mark.parametrize("kwargs,match", [
    (dict(lam=0.0), "lam=0.0 must be a finite number > 0"),
    (dict(lam=-1.0), "lam=-1.0 must be"),
    (dict(lam=float("nan")), "lam=nan must be"),
    (dict(alpha=float("inf")), "alpha=inf must be a finite number"),
    (dict(q=-1), "q=-1 must be an integer >= 0"),
    (dict(q=1.5), "q=1.5 must be an integer"),
    (dict(keys=["a", "a", "b", "c"]), "unique; repeated: \\['a'\\]"),
    (dict(keys=["a"]), "1 keys for 4 facts"),
])
def test_parameter_validation(kwargs, match):
    U, D = keys(4, 6)
    args = dict(lam=1.0, alpha=1.0, q=0) | kwargs
    with pytest.raises(ValueError, match=match):
        EditMemory(U, D, **args)


def test_matrix_validation():
    U, D = keys(4, 6)
    bad = U.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="U has non-finite entries \\(rows \\[2\\]"):
        EditMemory(bad, D, lam=1.0, alpha=1.0, q=0)
    with pytest.raises(ValueError, match="D has non-finite"):
        EditMemory(U, D * float("inf"), lam=1.0, alpha=1.0, q=0)
    with pytest.raises(ValueError, match="same shape"):
        EditMemory(U, D[:3], lam=1.0, alpha=1.0, q=0)
    with pytest.raises(ValueError, match="at least one fact"):
        EditMemory(U[:0], D[:0], lam=1.0, alpha=1.0, q=0)
    with pytest.raises(ValueError, match="must be a matrix"):
        EditMemory(U[0], D[0], lam=1.0, alpha=1.0, q=0)


def test_streaming_and_install_validation(bb):
    U, D = keys(4, 32)
    mem = EditMemory(U, D, lam=1.0, alpha=1.0, q=0, keys=list("abcd"))
    with pytest.raises(KeyError, match="'a' is already in the memory"):
        mem.insert(U[0], D[0], "a")
    with pytest.raises(KeyError, match="'z' is not in the memory"):
        mem.remove("z")
    with pytest.raises(ValueError, match="u must have shape \\(32,\\)"):
        mem.insert(U[0, :5], D[0], "e")
    with pytest.raises(ValueError, match="d has non-finite"):
        mem.insert(U[0], D[0] * float("nan"), "e")
    with pytest.raises(TypeError, match="str or an int"):
        mem.insert(U[0], D[0], ("tuple", "key"))
    assert len(mem) == 4  # failed inserts change nothing
    with pytest.raises(ValueError, match="no layer given"):
        with mem.installed(bb):
            pass
    with pytest.raises(ValueError, match="steps="):
        with mem.installed(bb, LAYER, steps=[-2]):
            pass
    with pytest.raises(ValueError, match="module='down'"):
        with mem.installed(bb, LAYER, "down"):
            pass
    with pytest.raises(IndexError, match="layer 7 out of range"):
        with mem.installed(bb, 7):
            pass
    with pytest.raises(ValueError, match="the fact list is empty"):
        EditMemory.build(bb, [], LAYER, lam=1.0, alpha=1.0, q=0)
    with pytest.raises(ValueError, match="lam=0 must be"):  # before any capture work
        EditMemory.build(bb, FACTS, LAYER, lam=0, alpha=1.0, q=0)
    with pytest.raises(ValueError, match="g_max"):
        GatedEdit(U[0], D[0], alpha=1.0, g_max=0.0)


# ============================================================================ relative λ
def test_build_with_relative_lambda(bb):
    """lam_relative scales λ by the mean squared key norm; the memory equals the absolute-λ one."""
    k = capture_keys(bb, FACTS, LAYER)
    scale = float(k["U"].pow(2).sum(1).mean())
    rel = EditMemory.build(bb, FACTS, LAYER, lam_relative=0.5, alpha=1.0, q=2)
    assert rel.key_scale == scale and rel.lam == 0.5 * scale and rel.lam_relative == 0.5
    ab = EditMemory.build(bb, FACTS, LAYER, lam=0.5 * scale, alpha=1.0, q=2)
    assert ab.key_scale == scale and ab.lam_relative == pytest.approx(0.5)
    h = torch.randn(2, 5, bb.hidden_size, dtype=torch.float64)
    assert torch.equal(rel.delta(h), ab.delta(h))
    assert EditMemory(k["U"], k["D"], lam=1.0, alpha=1.0, q=2).key_scale is None  # not built from facts


@pytest.mark.parametrize("kw,match", [({}, "exactly one of lam"), ({"lam": 1.0, "lam_relative": 1.0}, "exactly one"),
                                      ({"lam_relative": 0.0}, "lam_relative=0.0 must be")])
def test_build_lambda_arguments(bb, kw, match):
    with pytest.raises(ValueError, match=match):
        EditMemory.build(bb, FACTS, LAYER, alpha=1.0, q=2, **kw)
