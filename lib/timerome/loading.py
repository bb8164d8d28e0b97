"""Loading backbones: the embedded tiny models, and real models through Hugging Face transformers.

* `load_backbone(name_or_path, ...)`: a tiny model by name or directory, else `load_hf_backbone`.
* `load_hf_backbone(name_or_path, ...)` reads ``config.json`` first, picks the family, checks
  the remote-code policy, and only then loads weights with ``transformers`` ``from_pretrained``.
* `wrap_hf_model(model, tokenizer, ...)` wraps an already-built ``(model, tokenizer)`` pair
  (tests build tiny random models this way; it is also the way in for checkpoints whose code is
  a Python package rather than hub remote code, e.g. MMaDA built with its own repository).

Where each family's hook points live, and why, is `timerome.families`.

Bidirectional attention in transformers 5.23 (verified empirically on a tiny random
LlamaForCausalLM, see tests/test_backbones_hf.py): two switches are needed.
``config.is_causal = False`` makes ``masking_utils.create_causal_mask`` build a bidirectional mask
(alone it suffices for eager and SDPA); setting ``module.is_causal = False`` on every attention module
makes SDPA / flash-attention kernels non-causal when no mask tensor is passed (alone it is NOT enough
for eager attention, which relies on the mask). `make_bidirectional` does both, and
`check_bidirectional` tests the result.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .backbones import Backbone, as_dtype
from .families import (Family, UnknownFamily, config_value, get_family, infer_family, known_families_text,
                       tiny_family)

WEIGHTS_DIR = Path(__file__).parent / "weights"

__all__ = [
    "BackboneLoadError",
    "RemoteCodeRequired",
    "UnknownArchitecture",
    "load_hf_backbone",
    "wrap_hf_model",
    "load_backbone",
    "tiny_names",
    "resolve_mask_id",
    "make_bidirectional",
    "check_bidirectional",
]


class BackboneLoadError(ValueError):
    """A model could not be turned into a Backbone; the message says what to do."""


class RemoteCodeRequired(BackboneLoadError):
    pass


class UnknownArchitecture(BackboneLoadError, UnknownFamily):
    pass


# ---------------------------------------------------------------------------------------------
def _get_family(family, config) -> Family:
    try:
        return get_family(family if family is not None else infer_family(config))
    except UnknownFamily as e:
        raise UnknownArchitecture(str(e)) from None


def _vocab_rows(model) -> int | None:
    try:
        return int(model.get_input_embeddings().weight.shape[0])
    except Exception:  # noqa: BLE001 - non-HF module trees have no get_input_embeddings
        return None


def resolve_mask_id(tokenizer, family: str | Family, *, config=None, mask_id=None, vocab_size=None) -> int:
    """Explicit id, else ``tokenizer.mask_token_id``, else ``config.mask_token_id``, else the family's
    known mask token (by name, then by id); each candidate must fit the embedding matrix."""
    fam = get_family(family)
    name = fam.name

    def fits(i):
        return i is not None and int(i) >= 0 and (vocab_size is None or int(i) < vocab_size)

    if mask_id is not None:
        if not fits(mask_id):
            raise BackboneLoadError(f"mask_id={mask_id} is outside the vocabulary (size {vocab_size})")
        return int(mask_id)
    tried = []
    candidates = [("tokenizer.mask_token_id", getattr(tokenizer, "mask_token_id", None)),
                  ("config.mask_token_id", config_value(config, "mask_token_id"))]
    vocab = {}
    if tokenizer is not None and hasattr(tokenizer, "get_vocab"):
        try:
            vocab = tokenizer.get_vocab()
        except Exception:  # noqa: BLE001
            vocab = {}
    for tok in fam.mask_tokens:
        candidates.append((f"token {tok!r}", vocab.get(tok)))
    if fam.mask_id is not None:
        candidates.append((f"{name} default id", fam.mask_id))
    for label, cand in candidates:
        if cand is None:
            continue
        if fits(cand):
            return int(cand)
        tried.append(f"{label}={cand} (outside vocabulary of {vocab_size})")
    raise BackboneLoadError(
        f"cannot determine the mask token id for family {name!r}: the tokenizer has no mask_token"
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
def wrap_hf_model(model, tokenizer, *, family=None, mask_id=None, name: str = "",
                  prompt_template: str = "{question}", answer_prefix: str = " ",
                  check: bool = True) -> Backbone:
    """Wrap a built ``(model, tokenizer)`` as a `Backbone`.

    ``family``: a family name (see `timerome.families.FAMILIES`), a `Family`, or None to infer
    it from ``model.config``. Non-causal families get their attention switched to bidirectional in
    place (`make_bidirectional`) and, with ``check``, verified (`check_bidirectional`).
    """
    if "{question}" not in prompt_template:
        raise BackboneLoadError(f"prompt_template must contain '{{question}}', got {prompt_template!r}")
    config = getattr(model, "config", None)
    ad = _get_family(family, config)
    if not ad.causal:
        make_bidirectional(model)
    mid = resolve_mask_id(tokenizer, ad, config=config, mask_id=mask_id, vocab_size=_vocab_rows(model))
    name = name or str(config_value(config, "_name_or_path", "") or config_value(config, "name_or_path", "") or ad.name)
    try:
        bb = Backbone(model, tokenizer, ad, mask_id=mid, name=name, prompt_template=prompt_template,
                      answer_prefix=answer_prefix)
    except AttributeError as e:
        raise BackboneLoadError(
            f"{type(model).__name__} does not have the module naming of family {ad.name!r} ({e}). "
            f"Known families:\n{known_families_text()}"
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
        return json.loads((path / "config.json").read_text())
    from transformers import PretrainedConfig

    cfg, _ = PretrainedConfig.get_config_dict(str(name_or_path), **kwargs)
    return cfg


def load_hf_backbone(name_or_path, *, trust_remote_code=False, device=None, dtype=None, family=None,
                     mask_id=None, prompt_template="{question}", check: bool = True) -> Backbone:
    """Load a hub id or local directory with ``transformers`` and wrap it as a `Backbone`.

    The raw ``config.json`` is read first: the family is inferred (or taken from ``family``) and the
    remote-code policy checked before any weights or code are fetched. ``trust_remote_code`` is off
    unless the caller turns it on; LLaDA, MMaDA, LLaDA-MoE and Dream need it.
    """
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
                              AutoTokenizer)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg_dict = _read_config_dict(name_or_path)
    ad = _get_family(family, cfg_dict)
    model_type = cfg_dict.get("model_type")
    auto_map = cfg_dict.get("auto_map") or {}
    native = model_type in CONFIG_MAPPING
    if not native:
        if not auto_map:
            raise UnknownArchitecture(
                f"{name_or_path}: model_type {model_type!r} is neither built into transformers "
                f"{_transformers_version()} nor shipped as remote code (no auto_map in config.json). "
                "Build the model with its own package and pass it to timerome.hf.wrap_hf_model(model, "
                f"tokenizer, family={ad.name!r})."
            )
        if not trust_remote_code:
            raise RemoteCodeRequired(
                f"{name_or_path}: model_type {model_type!r} ({ad.name} family) is implemented by code "
                f"shipped with the checkpoint ({', '.join(sorted(set(auto_map.values())))}). Read that "
                "code, then pass trust_remote_code=True to load_backbone / load_hf_backbone to run it."
            )
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)

    if ad.masked_lm:
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
    return wrap_hf_model(model, tokenizer, family=ad, mask_id=mask_id, name=str(name_or_path),
                         prompt_template=prompt_template, check=check)


def _as_dtype(dtype):
    return as_dtype(dtype, allow_auto=True)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


# ------------------------------------------------------------------------------- tiny models
def _load_tiny(path: Path, device, dtype) -> Backbone:
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    from .tiny.model import TinyConfig, TinyLM

    meta = json.loads((path / "backbone.json").read_text())
    cfg = TinyConfig.load(path / "config.json")
    model = TinyLM(cfg)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **meta["special_tokens"])
    dtype = as_dtype(dtype, allow_auto=True)
    model.to(device=device or "cpu", dtype=torch.float32 if dtype in (None, "auto") else dtype).requires_grad_(False)
    return Backbone(model, tok, tiny_family(cfg),
                    mask_id=tok.convert_tokens_to_ids(meta["special_tokens"]["mask_token"]),
                    name=meta["name"], prompt_template=meta["prompt_template"], answer_prefix=meta["answer_prefix"])


def tiny_names() -> list[str]:
    return sorted(p.parent.name for p in WEIGHTS_DIR.glob("*/backbone.json")) if WEIGHTS_DIR.exists() else []


def load_backbone(name_or_path, *, trust_remote_code=False, device=None, dtype=None, family=None,
                  mask_id=None, prompt_template="{question}") -> Backbone:
    """Load a tiny embedded model by name, a saved tiny model directory, ``"smollm2-135m"``
    (`timerome.smollm2`), or a hub/local HF model."""
    as_dtype(dtype, allow_auto=True)  # a bad dtype fails before any loading
    if str(name_or_path) == "smollm2-135m":  # a registry package's GGUF (timerome.smollm2)
        from . import smollm2

        return smollm2.load(device=device, dtype=dtype)
    path = Path(name_or_path)
    if (WEIGHTS_DIR / str(name_or_path) / "backbone.json").exists():
        return _load_tiny(WEIGHTS_DIR / str(name_or_path), device, dtype)
    if (path / "backbone.json").exists():
        return _load_tiny(path, device, dtype)
    return load_hf_backbone(name_or_path, trust_remote_code=trust_remote_code, device=device, dtype=dtype,
                            family=family, mask_id=mask_id, prompt_template=prompt_template)
