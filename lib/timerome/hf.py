"""Hugging Face backbones: load (or wrap) a real model and give it a `Backbone` interface.

Two entry points:

* `load_hf_backbone(name_or_path, ...)` reads ``config.json`` first, picks the adapter, checks
  the remote-code policy, and only then loads weights with ``transformers`` ``from_pretrained``.
* `wrap_hf_model(model, tokenizer, ...)` wraps an already-built ``(model, tokenizer)`` pair
  (tests build tiny random models this way; it is also the way in for checkpoints whose code is
  a Python package rather than hub remote code, e.g. MMaDA built with its own repository).

Adapter naming was checked against public copies of each family's modelling code:

* LLaDA (``modeling_llada.py``, checked in zqc214/dllm-askv ``model/modeling_llada.py``, a copy of
  ML-GSAI/LLaDA's remote code): ``LLaDAModelLM.model`` is an ``LLaDAModel`` whose ``transformer``
  ModuleDict holds ``wte``, ``ln_f``, ``ff_out`` and ``blocks`` (a ModuleList when
  ``block_group_size == 1``; ``block_groups`` otherwise, which this adapter does not cover).
  ``LLaDALlamaBlock`` has ``q_proj/k_proj/v_proj``, ``attn_out`` (attention output projection),
  ``ff_proj`` (gate), ``up_proj``, ``ff_out`` (down projection = MLP output before the residual
  add), and ``forward`` returns ``(x, cache)``. Attention always runs with ``is_causal=False``.
  ``LLaDAModelLM.forward`` returns ``CausalLMOutputWithPast(logits=...)``; no logit shift.
  Config ``model_type == "llada"``; mask token ``<|mdm_mask|>`` = 126336.
* MMaDA (``MMadaModelLM(LLaDAModelLM)`` with ``MMadaConfig.model_type == "mmada"``, seen in several
  public MMaDA forks' ``modeling_mmada.py``): identical naming to LLaDA; its generation code uses
  ``mask_token_id = 126336``.
* LLaDA-MoE (``modeling_lladamoe.py`` / ``configuration_lladamoe.py``, checked in
  InfiniTensor/InfiniLM): OLMoE-style. ``LLaDAMoEModelLM.model.{embed_tokens, layers[i]}``;
  decoder layer has ``self_attn`` (returns ``(out, weights, past)``), ``mlp`` (a
  ``LLaDAMoESparseMoeBlock`` whose forward returns a plain tensor, with ``gate`` and ``experts``
  = ModuleList of ``LLaDAMoEMLP{gate,up,down}_proj``; dense layers have a plain ``LLaDAMoEMLP``),
  and optionally a block-level ``shared_expert`` added after ``mlp``. The layer returns a tuple
  ``(hidden,)``. Attention mask and causality are forced off in the remote code. Its config ALSO
  says ``model_type == "llada"``; only ``architectures == ["LLaDAMoEModelLM"]`` tells it apart.
  Mask token ``<|mask|>`` = 156895 (dInfer's LLaDA-MoE decoder uses ``mask_id=156895``).
* Dream (``modeling_dream.py``, checked in lingjiechen2/dllm
  ``dllm/pipelines/dream/models/modeling_dream.py``): ``DreamModel.model`` is a Qwen2-style
  ``DreamBaseModel.{embed_tokens, layers[i].{self_attn, mlp.{gate,up,down}_proj}}``; attention is
  SDPA with ``is_causal=False`` hard-coded; config ``model_type == "Dream"``; logits at ``i`` predict
  token ``i+1`` (AR initialisation). Mask token ``<|mask|>`` = 151666.
* DiffuLLaMA (montehoover/DiffuLLaMA ``inf_diffullama.py``, ``model.py``, ``attention_patch.py``,
  ``LLaMA-Factory/src/llamafactory/model/loader.py``): a stock ``LlamaForCausalLM`` checkpoint run
  with an all-visible 4-D attention mask (bidirectional), ``--shift True  # do not change this``
  (logits shifted like Dream), and ``tokenizer.mask_token_id`` falling back to 811.

Bidirectional attention in transformers 5.23 (verified empirically on a tiny random
LlamaForCausalLM, see tests/test_backbones_hf.py): two switches are needed.
``config.is_causal = False`` makes ``masking_utils.create_causal_mask`` build a bidirectional mask
(alone it suffices for eager and SDPA); setting ``module.is_causal = False`` on every attention module
makes SDPA / flash-attention kernels non-causal when no mask tensor is passed (alone it is NOT enough
for eager attention, which relies on the mask). `make_bidirectional` does both, and
`check_bidirectional` tests the result.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .backbones import ADAPTERS, Adapter, Backbone, as_dtype

__all__ = [
    "BackboneLoadError",
    "RemoteCodeRequired",
    "UnknownArchitecture",
    "load_hf_backbone",
    "wrap_hf_model",
    "infer_adapter",
    "resolve_mask_id",
    "make_bidirectional",
    "check_bidirectional",
]

# Adapters a real HF model can use (the tiny ones are this project's own TinyLM).
HF_ADAPTERS = ("llada", "llada-moe", "dream", "llama", "bert", "modernbert")
_MASKED_LM_ADAPTERS = ("bert", "modernbert")

# model_type (lower-cased) -> adapter. "llada" is split on `architectures` (LLaDA-MoE shares it).
_MODEL_TYPES = {
    "llada": "llada",
    "mmada": "llada",
    "lladamoe": "llada-moe",
    "llada_moe": "llada-moe",
    "llada-moe": "llada-moe",
    "dream": "dream",
    "llama": "llama",  # DiffuLLaMA ships as a plain Llama checkpoint
    "bert": "bert",
    "modernbert": "modernbert",
}
# Architecture class names -> adapter (checked before model_type).
_ARCHITECTURES = {
    "LLaDAModelLM": "llada",
    "MMadaModelLM": "llada",
    "MMaDAModelLM": "llada",
    "LLaDAMoEModelLM": "llada-moe",
    "DreamModel": "dream",
}

# Mask-token fallbacks when the tokenizer has no `mask_token`: token strings first (looked up in the
# vocabulary, never through `convert_tokens_to_ids`, which silently returns the unk id), then ids.
_MASK_TOKEN_NAMES = {
    "llada": ("<|mdm_mask|>", "[MDM_MASK]"),
    "llada-moe": ("<|mask|>", "<|mdm_mask|>"),
    "dream": ("<|mask|>",),
    "llama": (),
    "bert": ("[MASK]",),
    "modernbert": ("[MASK]",),
}
_MASK_IDS = {"llada": 126336, "llada-moe": 156895, "dream": 151666, "llama": 811}


class BackboneLoadError(ValueError):
    """A model could not be turned into a Backbone; the message says what to do."""


class RemoteCodeRequired(BackboneLoadError):
    pass


class UnknownArchitecture(BackboneLoadError):
    pass


# ---------------------------------------------------------------------------------------------
def _get(config, key, default=None):
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _known_adapters_text() -> str:
    lines = []
    for name in HF_ADAPTERS:
        a = ADAPTERS[name]
        extra = " (logits shifted)" if a.shift_logits else ""
        lines.append(f"  {name!r}: embed={a.embed}, blocks={a.blocks}{extra}")
    return "\n".join(lines)


def infer_adapter(config) -> str:
    """Adapter name for a config object or ``config.json`` dict, from ``architectures`` / ``model_type``."""
    model_type = str(_get(config, "model_type", "") or "")
    archs = list(_get(config, "architectures", None) or [])
    for arch in archs:
        if arch in _ARCHITECTURES:
            return _ARCHITECTURES[arch]
    if model_type.lower() == "llada" and any("moe" in a.lower() for a in archs):
        return "llada-moe"
    if model_type.lower() in _MODEL_TYPES:
        return _MODEL_TYPES[model_type.lower()]
    raise UnknownArchitecture(
        f"cannot infer a hook adapter for model_type={model_type!r}, architectures={archs}. "
        f"Known adapters:\n{_known_adapters_text()}\n"
        "Pass one explicitly, e.g. load_hf_backbone(path, adapter='llama') or "
        "wrap_hf_model(model, tokenizer, adapter='dream'); the module naming must match "
        "(see timerome.backbones.ADAPTERS)."
    )


def _get_adapter(adapter, config) -> Adapter:
    if isinstance(adapter, Adapter):
        return adapter
    name = adapter if adapter is not None else infer_adapter(config)
    if name not in ADAPTERS:
        raise UnknownArchitecture(f"unknown adapter {name!r}. Known adapters:\n{_known_adapters_text()}")
    return ADAPTERS[name]


def _vocab_rows(model) -> int | None:
    try:
        return int(model.get_input_embeddings().weight.shape[0])
    except Exception:  # noqa: BLE001 - non-HF module trees have no get_input_embeddings
        return None


def resolve_mask_id(tokenizer, adapter: str | Adapter, *, config=None, mask_id=None, vocab_size=None) -> int:
    """Explicit id, else ``tokenizer.mask_token_id``, else ``config.mask_token_id``, else the family's
    known mask token (by name, then by id); each candidate must fit the embedding matrix."""
    name = adapter.name if isinstance(adapter, Adapter) else adapter

    def fits(i):
        return i is not None and int(i) >= 0 and (vocab_size is None or int(i) < vocab_size)

    if mask_id is not None:
        if not fits(mask_id):
            raise BackboneLoadError(f"mask_id={mask_id} is outside the vocabulary (size {vocab_size})")
        return int(mask_id)
    tried = []
    candidates = [("tokenizer.mask_token_id", getattr(tokenizer, "mask_token_id", None)),
                  ("config.mask_token_id", _get(config, "mask_token_id"))]
    vocab = {}
    if tokenizer is not None and hasattr(tokenizer, "get_vocab"):
        try:
            vocab = tokenizer.get_vocab()
        except Exception:  # noqa: BLE001
            vocab = {}
    for tok in _MASK_TOKEN_NAMES.get(name, ()):
        candidates.append((f"token {tok!r}", vocab.get(tok)))
    if name in _MASK_IDS:
        candidates.append((f"{name} default id", _MASK_IDS[name]))
    for label, cand in candidates:
        if cand is None:
            continue
        if fits(cand):
            return int(cand)
        tried.append(f"{label}={cand} (outside vocabulary of {vocab_size})")
    raise BackboneLoadError(
        f"cannot determine the mask token id for adapter {name!r}: the tokenizer has no mask_token"
        + (f"; rejected: {', '.join(tried)}" if tried else "")
        + ". Pass mask_id=... explicitly."
    )


# ---------------------------------------------------------------------------------------------
def make_bidirectional(model: torch.nn.Module) -> int:
    """Switch a transformers decoder to full (non-causal) attention in place; returns how many
    attention modules had an ``is_causal`` flag turned off.

    transformers 5.23: ``config.is_causal = False`` routes ``create_causal_mask`` (and the sliding-
    window variant) to ``create_bidirectional_mask``; ``module.is_causal = False`` stops the SDPA /
    flash integrations from applying a causal mask when the mask tensor was skipped. Remote-code
    LLaDA / LLaDA-MoE / Dream are already non-causal; this is a no-op on their attention.
    """
    from transformers import PretrainedConfig

    seen, flipped = set(), 0
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if isinstance(cfg, PretrainedConfig) and id(cfg) not in seen:
            seen.add(id(cfg))
            cfg.is_causal = False
            for sub in ("text_config", "decoder"):  # composite configs
                subcfg = getattr(cfg, sub, None)
                if isinstance(subcfg, PretrainedConfig):
                    subcfg.is_causal = False
        if isinstance(getattr(mod, "is_causal", None), bool):
            if mod.is_causal:
                flipped += 1
            mod.is_causal = False
    return flipped


@torch.no_grad()
def check_bidirectional(backbone: Backbone, *, length: int = 4) -> bool:
    """True if changing the LAST token changes position 0's logits (through `Backbone.logits`) by
    clearly more than the run-to-run noise of the same forward."""
    vocab = _vocab_rows(backbone.model) or backbone.embedding.weight.shape[0]
    m = backbone.mask_id
    a = torch.full((1, length), m, dtype=torch.long, device=backbone.device)
    a[0, -1] = (m + 1) % vocab
    b = a.clone()
    b[0, -1] = (m + 2) % vocab
    la, la2, lb = backbone.logits(a), backbone.logits(a), backbone.logits(b)
    noise = (la[:, 0] - la2[:, 0]).abs().max().item()
    change = (la[:, 0] - lb[:, 0]).abs().max().item()
    return change > max(10 * noise, 1e-6 * max(1.0, la[:, 0].abs().max().item()))


# ---------------------------------------------------------------------------------------------
def wrap_hf_model(model, tokenizer, *, adapter=None, mask_id=None, name: str = "",
                  prompt_template: str = "{question}", answer_prefix: str = " ",
                  check: bool = True) -> Backbone:
    """Wrap a built ``(model, tokenizer)`` as a `Backbone`.

    ``adapter``: an adapter name (see `timerome.backbones.ADAPTERS`), an `Adapter`, or None to infer
    it from ``model.config``. Non-causal adapters get their attention switched to bidirectional in
    place (`make_bidirectional`) and, with ``check``, verified (`check_bidirectional`).
    """
    if "{question}" not in prompt_template:
        raise BackboneLoadError(f"prompt_template must contain '{{question}}', got {prompt_template!r}")
    config = getattr(model, "config", None)
    ad = _get_adapter(adapter, config)
    if not ad.causal:
        make_bidirectional(model)
    mid = resolve_mask_id(tokenizer, ad, config=config, mask_id=mask_id, vocab_size=_vocab_rows(model))
    name = name or str(_get(config, "_name_or_path", "") or _get(config, "name_or_path", "") or ad.name)
    try:
        bb = Backbone(model, tokenizer, ad, mask_id=mid, name=name, prompt_template=prompt_template,
                      answer_prefix=answer_prefix)
    except AttributeError as e:
        raise BackboneLoadError(
            f"{type(model).__name__} does not have the module naming of adapter {ad.name!r} ({e}). "
            f"Known adapters:\n{_known_adapters_text()}"
        ) from e
    if check and not ad.causal and not check_bidirectional(bb):
        raise BackboneLoadError(
            f"{name}: attention is still causal after make_bidirectional (a later token does not change "
            "earlier logits); this model's attention implementation is not covered by timerome.hf"
        )
    return bb


def _read_config_dict(name_or_path, **kwargs) -> dict:
    path = Path(str(name_or_path))
    if (path / "config.json").is_file():  # local directory: no hub code path at all
        import json

        return json.loads((path / "config.json").read_text())
    from transformers import PretrainedConfig

    cfg, _ = PretrainedConfig.get_config_dict(str(name_or_path), **kwargs)
    return cfg


def load_hf_backbone(name_or_path, *, trust_remote_code=False, device=None, dtype=None, adapter=None,
                     mask_id=None, prompt_template="{question}", check: bool = True) -> Backbone:
    """Load a hub id or local directory with ``transformers`` and wrap it as a `Backbone`.

    The raw ``config.json`` is read first: the adapter is inferred (or taken from ``adapter``) and the
    remote-code policy checked before any weights or code are fetched. ``trust_remote_code`` is off
    unless the caller turns it on; LLaDA, MMaDA, LLaDA-MoE and Dream need it.
    """
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
                              AutoTokenizer)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg_dict = _read_config_dict(name_or_path)
    ad = _get_adapter(adapter, cfg_dict)
    model_type = cfg_dict.get("model_type")
    auto_map = cfg_dict.get("auto_map") or {}
    native = model_type in CONFIG_MAPPING
    if not native:
        if not auto_map:
            raise UnknownArchitecture(
                f"{name_or_path}: model_type {model_type!r} is neither built into transformers "
                f"{_transformers_version()} nor shipped as remote code (no auto_map in config.json). "
                "Build the model with its own package and pass it to timerome.hf.wrap_hf_model(model, "
                f"tokenizer, adapter={ad.name!r})."
            )
        if not trust_remote_code:
            raise RemoteCodeRequired(
                f"{name_or_path}: model_type {model_type!r} ({ad.name} family) is implemented by code "
                f"shipped with the checkpoint ({', '.join(sorted(set(auto_map.values())))}). Read that "
                "code, then pass trust_remote_code=True to load_backbone / load_hf_backbone to run it."
            )
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)

    if ad.name in _MASKED_LM_ADAPTERS:
        order = [("AutoModelForMaskedLM", AutoModelForMaskedLM)]
    else:
        order = [("AutoModelForCausalLM", AutoModelForCausalLM), ("AutoModel", AutoModel)]
    if not native:  # remote code: only auto classes its config maps
        order = [(k, c) for k, c in order if k in auto_map] or [("AutoModel", AutoModel)]
    auto_cls = order[0][1]
    kwargs = {"config": config, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = _as_dtype(dtype)
    model = auto_cls.from_pretrained(name_or_path, **kwargs)
    if device is not None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return wrap_hf_model(model, tokenizer, adapter=ad, mask_id=mask_id, name=str(name_or_path),
                         prompt_template=prompt_template, check=check)


def _as_dtype(dtype):
    return as_dtype(dtype, allow_auto=True)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
