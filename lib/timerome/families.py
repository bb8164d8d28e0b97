"""One record per model family: where its hook points live and how it is loaded.

Adding a backbone means adding one `Family` here and one case to tests/test_backbones_hf.py.
Module paths are dotted attribute paths; ``blocks`` is the ModuleList of transformer blocks and
the other paths are relative to one block. The naming of each family was checked against public
copies of its modelling code:

* LLaDA / MMaDA (``modeling_llada.py``; MMaDA subclasses it): ``model.transformer.{wte, blocks}``;
  a block has ``attn_out`` (attention output projection) and ``ff_out`` (the MLP down-projection,
  whose output is the MLP output), returns ``(x, cache)``, and attends bidirectionally. Mask token
  ``<|mdm_mask|>`` = 126336.
* LLaDA-MoE (``modeling_lladamoe.py``): OLMoE naming; the MLP is a sparse mixture, so there is no
  single down-projection (the weight editors do not apply; RMU adapts every expert's ``down_proj``,
  per-expert Linears in its remote code). Its config also says
  ``model_type == "llada"``: only ``architectures`` tells it apart. Mask ``<|mask|>`` = 156895.
* Dream (``modeling_dream.py``): Qwen2 naming, bidirectional SDPA, logits at i predict token i+1
  (AR initialisation). Mask ``<|mask|>`` = 151666.
* DiffuLLaMA: a stock Llama checkpoint run with full attention and Dream's logit shift
  (``inf_diffullama.py``: ``--shift True  # do not change``); mask id falls back to 811.
* BERT / ModernBERT: post-LN masked LMs; sub-layer outputs are the dense projections before the
  residual add and LayerNorm.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    embed: str  # the input token embedding
    blocks: str  # the ModuleList of blocks
    attn_out: str  # attention sub-layer (output before the residual add), relative to a block
    mlp_out: str  # MLP sub-layer (output before the residual add)
    mlp_down: str | None  # the MLP down-projection (a Linear); its input is ``mlp_in``. None: no single one
    expert_down: str | None = None  # mixture of experts: the last name of each expert's down-projection Linear
    shift_logits: bool = False  # logits at i predict token i+1 (AR-initialised MDLMs)
    causal: bool = False  # autoregressive baselines only
    remote_code: bool = False  # the checkpoint ships its own modelling code
    masked_lm: bool = False  # loaded with AutoModelForMaskedLM
    model_types: tuple = ()  # config.model_type values (lower case) that mean this family
    architectures: tuple = ()  # config.architectures entries that mean this family (checked first)
    mask_tokens: tuple = ()  # mask token strings to look up when the tokenizer has no mask_token
    mask_id: int | None = None  # the family's documented mask id, the last fallback
    notes: str = ""


FAMILIES = {f.name: f for f in [
    # The project's own tiny models (timerome.tiny.model.TinyLM).
    Family("tiny", "embed", "blocks", "attn", "mlp", "mlp.down"),
    Family("tiny-causal", "embed", "blocks", "attn", "mlp", "mlp.down", causal=True),
    Family("tiny-shifted", "embed", "blocks", "attn", "mlp", "mlp.down", shift_logits=True,
           notes="an AR-initialised tiny MDLM (tiny-dream, tiny-diffullama): output i predicts token i+1"),
    Family("tiny-moe", "embed", "blocks", "attn", "mlp", None, expert_down="down",
           notes="tiny mixture-of-experts MDLM (tiny-llada-moe): no single down-projection"),
    Family("llada", "model.transformer.wte", "model.transformer.blocks", "attn_out", "ff_out", "ff_out",
           remote_code=True, model_types=("llada", "mmada"),
           architectures=("LLaDAModelLM", "MMadaModelLM", "MMaDAModelLM"),
           mask_tokens=("<|mdm_mask|>", "[MDM_MASK]"), mask_id=126336,
           notes="block outputs are (x, cache); blocks must be a ModuleList (block_group_size == 1)"),
    Family("llada-moe", "model.embed_tokens", "model.layers", "self_attn", "mlp", None, expert_down="down_proj",
           remote_code=True,
           model_types=("lladamoe", "llada_moe", "llada-moe"), architectures=("LLaDAMoEModelLM",),
           mask_tokens=("<|mask|>", "<|mdm_mask|>"), mask_id=156895,
           notes="mixture-of-experts MLP: the mlp_out point is the routed experts only (a block-level "
                 "shared_expert, where present, is added after it); no single down-projection"),
    Family("dream", "model.embed_tokens", "model.layers", "self_attn", "mlp", "mlp.down_proj", shift_logits=True,
           remote_code=True, model_types=("dream",), architectures=("DreamModel",), mask_tokens=("<|mask|>",),
           mask_id=151666),
    Family("llama", "model.embed_tokens", "model.layers", "self_attn", "mlp", "mlp.down_proj", shift_logits=True,
           model_types=("llama",), mask_id=811, notes="DiffuLLaMA: a Llama checkpoint run bidirectionally"),
    Family("llama-causal", "model.embed_tokens", "model.layers", "self_attn", "mlp", "mlp.down_proj", causal=True,
           notes="a Llama checkpoint as the autoregressive model it is (SmolLM2-135M, timerome.smollm2); "
                 "never inferred: config model_type 'llama' means DiffuLLaMA"),
    Family("bert", "bert.embeddings.word_embeddings", "bert.encoder.layer", "attention.output.dense",
           "output.dense", "output.dense", masked_lm=True, model_types=("bert",), mask_tokens=("[MASK]",)),
    Family("modernbert", "model.embeddings.tok_embeddings", "model.layers", "attn", "mlp", "mlp.Wo",
           masked_lm=True, model_types=("modernbert",), mask_tokens=("[MASK]",)),
]}
TINY_FAMILIES = ("tiny", "tiny-causal", "tiny-shifted", "tiny-moe")  # the rest are loaded through transformers


def tiny_family(cfg) -> Family:
    """The record of a `timerome.tiny.model.TinyConfig`: causal, shifted, mixture of experts or plain."""
    if cfg.causal:
        return FAMILIES["tiny-causal"]
    if cfg.n_experts and cfg.shift_logits:
        raise ValueError("no tiny family is both shifted and a mixture of experts")
    return FAMILIES["tiny-moe" if cfg.n_experts else "tiny-shifted" if cfg.shift_logits else "tiny"]


class UnknownFamily(ValueError):
    """No family matches a model; the message lists the known ones."""


def known_families_text() -> str:
    return "\n".join(f"  {f.name!r}: embed={f.embed}, blocks={f.blocks}" + (" (logits shifted)" * f.shift_logits)
                     for f in FAMILIES.values() if f.name not in TINY_FAMILIES)


def config_value(config, key, default=None):
    """``key`` of a config object or ``config.json`` dict (``default`` if absent or no config)."""
    if config is None:
        return default
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def infer_family(config) -> str:
    """The family name for a config object or ``config.json`` dict (``architectures`` first)."""
    model_type = str(config_value(config, "model_type") or "").lower()
    archs = list(config_value(config, "architectures") or [])
    for f in FAMILIES.values():
        if any(a in f.architectures for a in archs):
            return f.name
    if model_type == "llada" and any("moe" in a.lower() for a in archs):  # LLaDA-MoE shares model_type
        return "llada-moe"
    for f in FAMILIES.values():
        if model_type in f.model_types:
            return f.name
    raise UnknownFamily(
        f"cannot infer a model family for model_type={model_type!r}, architectures={archs}. "
        f"Known families:\n{known_families_text()}\n"
        "Pass one explicitly, e.g. load_backbone(path, family='llama') or "
        "wrap_hf_model(model, tokenizer, family='dream'); the module naming must match "
        "(see timerome.families.FAMILIES).")


def get_family(family) -> Family:
    if isinstance(family, Family):
        return family
    if family not in FAMILIES:
        raise UnknownFamily(f"unknown family {family!r}. Known families:\n{known_families_text()}")
    return FAMILIES[family]
