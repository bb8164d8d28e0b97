"""Real-architecture backbones (timerome.hf) on tiny random stand-ins; nothing is downloaded.

Each family except the project's own "tiny"/"tiny-causal" gets a tiny randomly initialised model
with the real family's module naming: native transformers classes where they exist (Llama for
DiffuLLaMA, Qwen2 for Dream, OLMoE for LLaDA-MoE, BERT, ModernBERT) and, for LLaDA / MMaDA (remote
code only), a test-only module tree reproducing ``model.transformer.{wte, blocks[i].{attn_out,
ff_proj, up_proj, ff_out}}`` and the ``(x, cache)`` block output.
"""
from __future__ import annotations

import json
import os
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import transformers as tf
from timerome.backbones import Backbone, get_module, point
from timerome.families import FAMILIES, TINY_FAMILIES, UnknownFamily, infer_family
from timerome.hooks import has_hooks
from timerome.loading import (BackboneLoadError, RemoteCodeRequired, UnknownArchitecture, check_bidirectional,
                              load_backbone, load_hf_backbone, make_bidirectional, resolve_mask_id,
                         wrap_hf_model)

tf.logging.set_verbosity_error()

V, H, FF, L, HEADS = 64, 16, 32, 2, 2
WORDS = "the capital of france is paris germany berlin who wrote hamlet shakespeare a city".split()
SPECIALS = ["[PAD]", "[UNK]", "[MASK]", "<eos>", "<bos>"]


def make_tokenizer(mask_token="[MASK]", extra=()):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate([*SPECIALS, *extra, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = dict(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="<eos>", bos_token="<bos>")
    if mask_token:
        kw["mask_token"] = mask_token
    return tf.PreTrainedTokenizerFast(**kw)


# --- LLaDA / MMaDA stand-in (test only): naming of modeling_llada.py's LLaDALlamaBlock ---------------
class _LLaDALlamaBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn_norm, self.ff_norm = nn.RMSNorm(H), nn.RMSNorm(H)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(H, H, bias=False) for _ in range(3))
        self.attn_out = nn.Linear(H, H, bias=False)
        self.ff_proj, self.up_proj = nn.Linear(H, FF, bias=False), nn.Linear(H, FF, bias=False)
        self.ff_out = nn.Linear(FF, H, bias=False)
        self.act = nn.SiLU()

    def attention(self, q, k, v):
        B, T, C = q.shape
        q, k, v = (t.view(B, T, HEADS, C // HEADS).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=False)  # LLaDA: never causal
        return self.attn_out(att.transpose(1, 2).reshape(B, T, C)), None

    def forward(self, x, attention_bias=None, layer_past=None, use_cache=False):
        h = self.attn_norm(x)
        att, cache = self.attention(self.q_proj(h), self.k_proj(h), self.v_proj(h))
        x = x + att
        h = self.ff_norm(x)
        x = x + self.ff_out(self.act(self.ff_proj(h)) * self.up_proj(h))
        return x, cache


class _LLaDAModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, H), wpe=nn.Embedding(32, H), ln_f=nn.RMSNorm(H),
            blocks=nn.ModuleList(_LLaDALlamaBlock() for _ in range(L)), ff_out=nn.Linear(H, V, bias=False)))

    def forward(self, input_ids, attention_mask=None):
        x = self.transformer.wte(input_ids) + self.transformer.wpe(torch.arange(input_ids.shape[1]))
        for block in self.transformer.blocks:
            x, _ = block(x)
        return types.SimpleNamespace(logits=self.transformer.ff_out(self.transformer.ln_f(x)))


class _LLaDAModelLM(nn.Module):
    def __init__(self, model_type="llada", arch="LLaDAModelLM"):
        super().__init__()
        self.config = types.SimpleNamespace(model_type=model_type, architectures=[arch], _name_or_path=arch)
        self.model = _LLaDAModel()

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return self.model(input_ids, attention_mask)


# --- native stand-ins ----------------------------------------------------------------------------
_DEC = dict(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=HEADS,
            num_key_value_heads=HEADS, pad_token_id=0, bos_token_id=4, eos_token_id=3, max_position_embeddings=64)


def tiny_llama(attn="sdpa"):
    return tf.LlamaForCausalLM(tf.LlamaConfig(**_DEC, attn_implementation=attn))


def tiny_qwen2():
    return tf.Qwen2ForCausalLM(tf.Qwen2Config(**_DEC, attn_implementation="sdpa"))


def tiny_olmoe():
    return tf.OlmoeForCausalLM(tf.OlmoeConfig(**_DEC, num_experts=4, num_experts_per_tok=2,
                                              attn_implementation="sdpa"))


def tiny_bert():
    return tf.BertForMaskedLM(tf.BertConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                            num_attention_heads=HEADS, max_position_embeddings=64, pad_token_id=0))


def tiny_modernbert():
    return tf.ModernBertForMaskedLM(tf.ModernBertConfig(
        vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=HEADS,
        max_position_embeddings=64, pad_token_id=0, bos_token_id=4, eos_token_id=3, cls_token_id=4,
        sep_token_id=3, mask_token_id=2, global_attn_every_n_layers=1, attn_implementation="sdpa"))


# case -> (builder, family argument (None = inferred), expected family, expected paths)
_LLADA_PATHS = dict(embed="model.transformer.wte", block="model.transformer.blocks.{}",
                    attn="model.transformer.blocks.{}.attn_out", mlp="model.transformer.blocks.{}.ff_out",
                    down="model.transformer.blocks.{}.ff_out")
_QWEN_PATHS = dict(embed="model.embed_tokens", block="model.layers.{}", attn="model.layers.{}.self_attn",
                   mlp="model.layers.{}.mlp", down="model.layers.{}.mlp.down_proj")
CASES = {
    "llada": (lambda: _LLaDAModelLM("llada", "LLaDAModelLM"), None, "llada", _LLADA_PATHS),
    "mmada": (lambda: _LLaDAModelLM("mmada", "MMadaModelLM"), None, "llada", _LLADA_PATHS),
    "llada-moe": (tiny_olmoe, "llada-moe", "llada-moe", {**_QWEN_PATHS, "down": "model.layers.{}.mlp.experts"}),
    "dream": (tiny_qwen2, "dream", "dream", _QWEN_PATHS),
    "diffullama": (tiny_llama, None, "llama", _QWEN_PATHS),
    "smollm2": (tiny_llama, "llama-causal", "llama-causal", _QWEN_PATHS),  # a Llama kept causal
    "bert": (tiny_bert, None, "bert", dict(
        embed="bert.embeddings.word_embeddings", block="bert.encoder.layer.{}",
        attn="bert.encoder.layer.{}.attention.output.dense", mlp="bert.encoder.layer.{}.output.dense",
        down="bert.encoder.layer.{}.output.dense")),
    "modernbert": (tiny_modernbert, None, "modernbert", dict(
        embed="model.embeddings.tok_embeddings", block="model.layers.{}", attn="model.layers.{}.attn",
        mlp="model.layers.{}.mlp", down="model.layers.{}.mlp.Wo")),
}
DIFFUSION = ("llada", "mmada", "llada-moe", "dream", "diffullama")


def test_every_hf_family_has_a_case():
    covered = {c[2] for c in CASES.values()}
    assert covered == set(FAMILIES) - set(TINY_FAMILIES)


@pytest.fixture(scope="module")
def backbones():
    out = {}
    for case, (build, family, _, _) in CASES.items():
        torch.manual_seed(0)
        out[case] = wrap_hf_model(build(), make_tokenizer(), family=family, name=case)
    return out


def ids(B=2, T=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(len(SPECIALS), V, (B, T), generator=g)


@pytest.mark.parametrize("case", CASES)
def test_shape_facts(backbones, case):
    bb = backbones[case]
    assert isinstance(bb, Backbone)
    assert bb.family is FAMILIES[CASES[case][2]]
    assert bb.n_layers == L and bb.hidden_size == H
    assert bb.mask_id == bb.tokenizer.mask_token_id == 2
    assert bb.is_causal == (case == "smollm2")  # llama-causal keeps its causal mask
    assert bb.prompt("q?") == "q?" and case in repr(bb)


@pytest.mark.parametrize("case", CASES)
def test_hook_points_match_real_naming(backbones, case):
    """Every point of the vocabulary reads the module the family's own code names (pinned per family)."""
    bb, paths = backbones[case], CASES[case][3]
    assert bb.site("embed") == (get_module(bb.model, paths["embed"]), "output")
    for layer in range(L):
        assert bb.site(point("resid", layer)) == (get_module(bb.model, paths["block"].format(layer)), "output")
        assert point("resid", layer) == f"blocks.{layer}.resid_post"
        for kind, suffix in (("attn", "attn_out"), ("mlp", "mlp_out")):
            assert point(kind, layer) == f"blocks.{layer}.{suffix}"
            assert bb.site(point(kind, layer)) == (get_module(bb.model, paths[kind].format(layer)), "output")
        if case != "llada-moe":  # a mixture of experts has no single down-projection
            assert bb.site(f"blocks.{layer}.mlp_in") == (get_module(bb.model, paths["down"].format(layer)), "input")
            assert isinstance(bb.down_proj(layer), nn.Linear)
    assert bb.site("blocks.-1.resid_post") == bb.site("blocks.1.resid_post")
    with pytest.raises(IndexError):
        bb.site(f"blocks.{L}.resid_post")
    with pytest.raises(ValueError, match="hook point 'resid.0'"):
        bb.site("resid.0")
    if case == "llada-moe":
        with pytest.raises(ValueError, match="no single MLP down-projection"):
            bb.site("blocks.0.mlp_in")


@pytest.mark.parametrize("case", CASES)
def test_trace_records_BTH_at_every_point(backbones, case):
    bb = backbones[case]
    names = [point(k, l) for l in range(L) for k in ("resid", "attn", "mlp")]
    names += [] if case == "llada-moe" else [f"blocks.{l}.mlp_in" for l in range(L)]
    with bb.trace(names) as seen:
        bb.logits(ids(B=2, T=5))
    for n in names:
        t = seen[n]
        width = t.shape[-1] if n.endswith("mlp_in") else H  # the down-projection input is the MLP width
        assert torch.is_tensor(t) and t.shape == (2, 5, width), (n, getattr(t, "shape", type(t)))
    assert not has_hooks(bb.model)  # hooks are gone afterwards


@pytest.mark.parametrize("case", CASES)
def test_trace_edit_changes_logits_and_restores_bitwise(backbones, case):
    bb, x = backbones[case], ids()
    before = bb.logits(x)
    with bb.trace("blocks.0.resid_post", edit=lambda _p, h: h + 1.0):
        edited = bb.logits(x)
    assert not torch.allclose(edited, before)
    assert torch.equal(bb.logits(x), before)
    with pytest.raises(RuntimeError, match="boom"):
        with bb.trace("blocks.0.resid_post", edit=lambda _p, h: h + 1.0):
            assert not torch.allclose(bb.logits(x), before)
            raise RuntimeError("boom")
    assert torch.equal(bb.logits(x), before)
    assert not has_hooks(bb.model)


@pytest.mark.parametrize("case", CASES)
def test_trace_stop_after_ends_the_forward_there(backbones, case):
    """stop_after: the points up to it are recorded, later ones never run, and the block is left normally."""
    bb = backbones[case]
    first, later = "blocks.0.resid_post", "blocks.1.resid_post"
    with bb.trace([first, later], stop_after=first) as seen:
        bb.logits(ids())
        raise AssertionError("unreachable: the forward stops inside logits()")
    assert set(seen) == {first} and not has_hooks(bb.model)


@pytest.mark.parametrize("case", CASES)
def test_logits_shape_and_shift(backbones, case):
    bb, x = backbones[case], ids(B=3, T=6)
    out = bb.logits(x)
    assert out.shape == (3, 6, V)
    with torch.no_grad():
        raw = bb.model(input_ids=x).logits
    if bb.family.shift_logits:  # Dream / DiffuLLaMA: raw position i scores token i+1
        assert case in ("dream", "diffullama")
        assert torch.equal(out[:, 1:], raw[:, :-1]) and torch.equal(out[:, 0], raw[:, 0])
        assert not torch.equal(out, raw)
    else:
        assert torch.equal(out, raw)


@pytest.mark.parametrize("case", CASES)
def test_logits_at_equals_indexed_logits(backbones, case):
    bb, x = backbones[case], ids(B=3, T=6)
    att = torch.ones_like(x)
    att[1, :2] = 0  # left padding
    rows, cols = [0, 0, 1, 2, 2], [0, 5, 3, 1, 4]
    assert torch.allclose(bb.logits_at(x, att, rows, cols), bb.logits(x, att)[rows, cols], atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_bidirectional_unless_causal(backbones, case):
    bb = backbones[case]
    a = ids(B=1, T=6)
    b = a.clone()
    b[0, -1] = (a[0, -1] + 1 - len(SPECIALS)) % (V - len(SPECIALS)) + len(SPECIALS)
    la, lb = bb.logits(a), bb.logits(b)
    if bb.is_causal:  # an autoregressive model: a later token changes nothing before it
        assert torch.equal(la[:, :5], lb[:, :5]) and not check_bidirectional(bb)
        return
    assert not torch.allclose(la[:, :2], lb[:, :2]), "a later token must change earlier positions"
    assert check_bidirectional(bb)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_stock_llama_is_causal_until_made_bidirectional(attn):
    torch.manual_seed(0)
    model, tok = tiny_llama(attn), make_tokenizer()
    causal = Backbone(model, tok, FAMILIES["llama"], mask_id=2)  # no make_bidirectional
    assert not check_bidirectional(causal)
    # config.is_causal alone fixes the mask; module.is_causal alone does not fix eager attention
    assert make_bidirectional(model) == L
    assert model.config.is_causal is False
    assert all(layer.self_attn.is_causal is False for layer in model.model.layers)
    assert check_bidirectional(causal)


@pytest.mark.parametrize("case", ["diffullama", "dream", "llada-moe"])
def test_padding_mask_still_respected_when_bidirectional(backbones, case):
    bb = backbones[case]
    x = ids(B=1, T=6)
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1 - len(SPECIALS)) % (V - len(SPECIALS)) + len(SPECIALS)
    mask = torch.ones_like(x)
    mask[0, -1] = 0  # the last token is padding: changing it must not move any other position
    lx, ly = bb.logits(x, attention_mask=mask), bb.logits(y, attention_mask=mask)
    torch.testing.assert_close(lx[:, :4], ly[:, :4])  # (with a shift, realigned 0..3 = raw 0..2)


# --- family inference and mask ids ------------------------------------------------------------
@pytest.mark.parametrize("cfg,expected", [
    ({"model_type": "llada", "architectures": ["LLaDAModelLM"]}, "llada"),
    ({"model_type": "llada", "architectures": ["LLaDAMoEModelLM"]}, "llada-moe"),  # real LLaDA-MoE config
    ({"model_type": "lladamoe"}, "llada-moe"),
    ({"model_type": "mmada", "architectures": ["MMadaModelLM"]}, "llada"),
    ({"model_type": "Dream", "architectures": ["DreamModel"]}, "dream"),
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "llama"),
    ({"model_type": "bert"}, "bert"),
    ({"model_type": "modernbert"}, "modernbert"),
])
def test_infer_family(cfg, expected):
    assert infer_family(cfg) == expected


def test_unknown_architecture_clear_error():
    with pytest.raises(UnknownFamily, match=r"(?s)gpt2.*Known families.*'llada'.*family="):
        infer_family({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=H, n_layer=L, n_head=HEADS, n_positions=32))
    with pytest.raises(UnknownArchitecture, match="Known families"):
        wrap_hf_model(gpt2, make_tokenizer())
    with pytest.raises(BackboneLoadError, match="module naming of family 'llama'"):
        wrap_hf_model(gpt2, make_tokenizer(), family="llama")
    with pytest.raises(UnknownArchitecture, match="unknown family 'nope'"):
        wrap_hf_model(gpt2, make_tokenizer(), family="nope")


def test_mask_id_resolution():
    no_mask = make_tokenizer(mask_token=None, extra=("<|mdm_mask|>", "<|mask|>"))
    assert no_mask.mask_token_id is None
    assert resolve_mask_id(no_mask, "llada", vocab_size=V) == 5  # by name, not the unk id
    assert resolve_mask_id(no_mask, "dream", vocab_size=V) == 6
    assert resolve_mask_id(no_mask, "llada-moe", vocab_size=V) == 6
    assert resolve_mask_id(no_mask, "llada", vocab_size=200_000) == 5
    bare = make_tokenizer(mask_token=None)
    assert resolve_mask_id(bare, "llada", vocab_size=126_464) == 126336  # LLaDA default id
    assert resolve_mask_id(bare, "llama", vocab_size=32_000) == 811  # DiffuLLaMA loader fallback
    assert resolve_mask_id(bare, "llama", config={"mask_token_id": 7}, vocab_size=V) == 7
    assert resolve_mask_id(bare, "bert", mask_id=9, vocab_size=V) == 9
    with pytest.raises(BackboneLoadError, match=r"(?s)126336.*outside.*mask_id="):
        resolve_mask_id(bare, "llada", vocab_size=V)
    with pytest.raises(BackboneLoadError, match="outside the vocabulary"):
        resolve_mask_id(bare, "bert", mask_id=V, vocab_size=V)
    assert resolve_mask_id(bare, "bert", vocab_size=V) == 2  # BERT's "[MASK]" by name
    with pytest.raises(BackboneLoadError, match=r"(?s)811.*mask_id="):
        wrap_hf_model(tiny_llama(), bare)
    bb = wrap_hf_model(tiny_bert(), bare, mask_id=2, prompt_template="Q: {question} A:")
    assert bb.mask_id == 2 and bb.prompt("x") == "Q: x A:"
    with pytest.raises(BackboneLoadError, match="question"):
        wrap_hf_model(tiny_bert(), bare, mask_id=2, prompt_template="no placeholder")


# --- loading from disk (offline) -----------------------------------------------------------------
def _save(tmp_path, model, tok):
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path


def test_load_saved_llama_as_diffullama(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    ref = tiny_llama()
    path = _save(tmp_path, ref, make_tokenizer())
    bb = load_backbone(str(path), dtype=torch.float32, prompt_template="Question: {question}\nAnswer:")
    assert bb.family.name == "llama" and bb.family.shift_logits
    assert bb.n_layers == L and bb.hidden_size == H and bb.mask_id == 2
    assert bb.prompt("x") == "Question: x\nAnswer:" and bb.name == str(path)
    assert check_bidirectional(bb)
    x = ids()
    with torch.no_grad():
        make_bidirectional(ref)
        raw = ref.eval()(input_ids=x).logits
    torch.testing.assert_close(bb.logits(x), torch.cat([raw[:, :1], raw[:, :-1]], 1))
    with bb.trace("blocks.1.resid_post") as seen:
        bb.logits(x)
    assert seen["blocks.1.resid_post"].shape == (2, 5, H)


def test_load_saved_bert_with_dtype_and_device(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _save(tmp_path, tiny_bert(), make_tokenizer())
    bb = load_hf_backbone(path, dtype="bfloat16", device="cpu")
    assert bb.family.name == "bert" and bb.mask_id == 2
    assert bb.embedding.weight.dtype == torch.bfloat16 and bb.device.type == "cpu"
    assert bb.logits(ids()).shape == (2, 5, V)


def test_load_saved_qwen2_with_explicit_dream_family(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _save(tmp_path, tiny_qwen2(), make_tokenizer())
    with pytest.raises(UnknownArchitecture, match="qwen2"):
        load_hf_backbone(path)  # a native Qwen2 checkpoint is not assumed to be Dream
    bb = load_hf_backbone(path, family="dream")
    assert bb.family.shift_logits and check_bidirectional(bb)


def _write_config(tmp_path, cfg):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


@pytest.mark.parametrize("cfg", [
    {"model_type": "llada", "architectures": ["LLaDAModelLM"],
     "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"}},
    {"model_type": "llada", "architectures": ["LLaDAMoEModelLM"],
     "auto_map": {"AutoConfig": "configuration_lladamoe.LLaDAConfig",
                  "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM"}},
    {"model_type": "Dream", "architectures": ["DreamModel"],
     "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"}},
])
def test_remote_code_needs_explicit_trust(tmp_path, cfg):
    path = _write_config(tmp_path / "ckpt", cfg)
    with pytest.raises(RemoteCodeRequired, match=r"(?s)remote|shipped.*trust_remote_code=True"):
        load_hf_backbone(path)
    with pytest.raises(RemoteCodeRequired, match="trust_remote_code=True"):
        load_backbone(str(path))  # the public entry point dispatches here


def test_unknown_architecture_on_disk(tmp_path):
    gpt2 = _write_config(tmp_path / "gpt2", tf.GPT2Config(n_layer=1).to_dict())
    with pytest.raises(UnknownArchitecture, match=r"(?s)Known families.*family="):
        load_hf_backbone(gpt2)
    # MMaDA-style config with neither native support nor remote code: build it, then wrap it
    mmada = _write_config(tmp_path / "mmada", {"model_type": "mmada", "architectures": ["MMadaModelLM"]})
    with pytest.raises(UnknownArchitecture, match="wrap_hf_model"):
        load_hf_backbone(mmada, trust_remote_code=True)
