"""Backbones: a model, its tokenizer, its mask token, and an adapter naming its hook points.

Every algorithm in this package talks to a `Backbone`, never to a model class directly. The
adapter says, per architecture, which module's output is

* ``embed``      the input token embedding,
* ``resid``  ℓ   the block output (residual stream after block ℓ),
* ``attn``   ℓ   the attention sub-layer output (before it is added to the residual),
* ``mlp``    ℓ   the MLP sub-layer output (before it is added to the residual),
* ``down``   ℓ   the MLP down-projection (a Linear: what ROME/MEMIT-style editors rewrite).

Paths are dotted attribute paths; ``{}`` in a layer path is the layer index.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

WEIGHTS_DIR = Path(__file__).parent / "weights"
KINDS = ("resid", "attn", "mlp")


@dataclass(frozen=True)
class Adapter:
    name: str
    embed: str
    blocks: str  # the ModuleList of transformer blocks
    attn: str  # relative to one block
    mlp: str
    down: str
    shift_logits: bool = False  # Dream: logits at i predict token i+1 (AR initialisation)
    causal: bool = False  # True only for autoregressive baselines
    notes: str = ""


ADAPTERS = {
    a.name: a
    for a in [
        # The project's own tiny models (timerome.tiny.model.TinyLM).
        Adapter("tiny", "embed", "blocks", "attn", "mlp", "mlp.down"),
        Adapter("tiny-causal", "embed", "blocks", "attn", "mlp", "mlp.down", causal=True),
        # LLaDA / MMaDA remote code: model.transformer.{wte, blocks[i].{attn_out, ff_out}}.
        # ff_out is both the MLP output and its down-projection; block outputs are (x, cache).
        Adapter("llada", "model.transformer.wte", "model.transformer.blocks", "attn_out", "ff_out", "ff_out"),
        # Dream: Qwen2 naming, logits shifted by one position.
        Adapter("dream", "model.embed_tokens", "model.layers", "self_attn", "mlp", "mlp.down_proj",
                shift_logits=True),
        # DiffuLLaMA: Llama naming, attention run bidirectionally; like Dream it is adapted from an AR
        # model with the shift operation (DiffuLLaMA inf_diffullama.py: `--shift True  # do not change`).
        Adapter("llama", "model.embed_tokens", "model.layers", "self_attn", "mlp", "mlp.down_proj",
                shift_logits=True),
        # LLaDA-MoE: OLMoE-style naming; the MLP is a sparse mixture (``down`` is the shared expert
        # list's container, so weight editors must pick an expert explicitly).
        Adapter("llada-moe", "model.embed_tokens", "model.layers", "self_attn", "mlp", "mlp.experts",
                notes="mixture-of-experts MLP: `down` is the experts ModuleList; the `mlp` hook is the "
                      "routed experts only (a block-level `shared_expert`, where present, is added "
                      "after it in modeling_lladamoe.py)"),
        # BERT-style MLMs (post-LN): the sub-layer outputs are the dense projections before
        # the residual add + LayerNorm.
        Adapter("bert", "bert.embeddings.word_embeddings", "bert.encoder.layer",
                "attention.output.dense", "output.dense", "output.dense"),
        Adapter("modernbert", "model.embeddings.tok_embeddings", "model.layers", "attn", "mlp", "mlp.Wo"),
    ]
}


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    mod = root
    for part in path.split("."):
        if not hasattr(mod, part) and part.isdigit():
            mod = mod[int(part)]
            continue
        if not hasattr(mod, part):
            raise AttributeError(f"{type(root).__name__} has no submodule '{path}' (failed at '{part}')")
        mod = getattr(mod, part)
    return mod


class Backbone:
    """A frozen model behind one interface: logits, mask token, and named hook points."""

    def __init__(self, model, tokenizer, adapter: Adapter, *, mask_id: int, name: str = "",
                 prompt_template: str = "{question}", answer_prefix: str = " "):
        self.model, self.tokenizer, self.adapter, self.name = model.eval(), tokenizer, adapter, name
        self.mask_id = int(mask_id)
        self.prompt_template, self.answer_prefix = prompt_template, answer_prefix
        self.blocks = get_module(model, adapter.blocks)
        for kind in ("embed", *KINDS, "down"):  # fail now, not mid-experiment
            self.hook_module(0, kind)

    # --- shape facts -------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return self.embedding.weight.shape[1]

    @property
    def embedding(self) -> torch.nn.Embedding:
        return get_module(self.model, self.adapter.embed)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def eos_id(self):
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self):
        pid = self.tokenizer.pad_token_id
        return self.eos_id if pid is None else pid

    @property
    def is_causal(self) -> bool:
        return self.adapter.causal

    # --- hook points -------------------------------------------------------------------------
    def hook_module(self, layer: int, kind: str) -> torch.nn.Module:
        """The module whose output is hook point ``kind`` at ``layer`` (kind 'embed' ignores layer)."""
        if kind == "embed":
            return self.embedding
        if kind not in (*KINDS, "down"):
            raise ValueError(f"unknown hook kind {kind!r}; expected one of embed, resid, attn, mlp, down")
        if not -self.n_layers <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range for {self.name or 'backbone'} with {self.n_layers} layers")
        block = self.blocks[layer]
        return block if kind == "resid" else get_module(block, getattr(self.adapter, kind))

    def hook_point(self, name: str) -> torch.nn.Module:
        """TransformerLens-style names: 'embed', 'resid.3', 'attn.3', 'mlp.3', 'down.3'."""
        if name == "embed":
            return self.embedding
        kind, _, layer = name.partition(".")
        if not layer.lstrip("-").isdigit():
            raise ValueError(f"hook point {name!r} must look like 'resid.<layer>' or 'embed'")
        return self.hook_module(int(layer), kind)

    # --- forward -----------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, V] logits where position i scores the token *at* i (Dream's shift undone)."""
        return self.forward_logits(input_ids, attention_mask)

    @torch.no_grad()
    def logits_at(self, input_ids, attention_mask, rows, cols) -> torch.Tensor:
        """[N, V]: ``logits(input_ids, attention_mask)[rows, cols]`` without the full [B, T, V].

        The LM head is the biggest matmul of a small model's forward (45% of the tiny backbone's),
        and a likelihood reads only the masked answer positions; a pre-hook on the output head
        feeds it just those hidden states. Models without a findable head take the full path.
        """
        rows, cols = torch.as_tensor(rows, device=input_ids.device), torch.as_tensor(cols, device=input_ids.device)
        head = self._output_head()
        if head is None:
            return self.logits(input_ids, attention_mask)[rows, cols]
        raw = (cols - 1).clamp(min=0) if self.adapter.shift_logits else cols  # Dream: i is scored at i-1
        def select(mod, args):
            h = args[0]
            if not (h.is_floating_point() and h.dim() == 3 and h.shape[:2] == input_ids.shape):
                raise RuntimeError(f"{self.name}: the output head got input of shape {tuple(h.shape)}, not the "
                                   f"[B, T, H] hidden states; use logits() for this model")
            return (h[rows, raw][None], *args[1:])

        handle = head.register_forward_pre_hook(select)
        try:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            handle.remove()
        logits = out if torch.is_tensor(out) else out.logits
        if logits.shape[:2] != (1, len(rows)):
            raise RuntimeError(f"{self.name}: the output head hook gave logits of shape {tuple(logits.shape)}")
        return logits[0]

    def _output_head(self):
        head = getattr(self.model, "lm_head", None)
        if head is None and hasattr(self.model, "get_output_embeddings"):
            head = self.model.get_output_embeddings()
        return head if isinstance(head, torch.nn.Linear) else None  # tied/functional heads: full path

    def forward_logits(self, input_ids, attention_mask=None):
        """`logits` with autograd left on (for fine-tuning and gradient baselines)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        logits = out if torch.is_tensor(out) else out.logits
        if self.adapter.shift_logits:  # Dream predicts i+1 at i; realign so i scores i
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    # --- text helpers ------------------------------------------------------------------------
    def prompt(self, question: str) -> str:
        return self.prompt_template.format(question=question)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, question: str) -> list[int]:
        """The ids a question is given to the model as: BOS (if the tokenizer has one) + prompt."""
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + self.encode(self.prompt(question))

    def __repr__(self):
        return (f"Backbone({self.name!r}, adapter={self.adapter.name}, layers={self.n_layers}, "
                f"hidden={self.hidden_size}, mask_id={self.mask_id})")


# ---------------------------------------------------------------------------------------------
def as_dtype(dtype, *, allow_auto: bool = False):
    """A torch floating dtype from a dtype or its name ("bfloat16", "torch.float16"); "auto"
    passes through where the loader supports it (HF). Anything else: a ValueError naming it."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str):
        if dtype == "auto" and allow_auto:
            return dtype
        got = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(got, torch.dtype) and got.is_floating_point:
            return got
    raise ValueError(f"dtype={dtype!r} is not a floating-point torch dtype "
                     f"(e.g. torch.float32 or 'bfloat16'{', or auto' if allow_auto else ''})")


def _load_tiny(path: Path, device, dtype):
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    from .tiny.model import TinyConfig, TinyLM

    meta = json.loads((path / "backbone.json").read_text())
    cfg = TinyConfig.load(path / "config.json")
    model = TinyLM(cfg)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **meta["special_tokens"])
    dtype = as_dtype(dtype, allow_auto=True)
    model.to(device=device or "cpu", dtype=torch.float32 if dtype in (None, "auto") else dtype).requires_grad_(False)  # frozen
    adapter = ADAPTERS["tiny-causal" if cfg.causal else "tiny"]
    return Backbone(model, tok, adapter, mask_id=tok.convert_tokens_to_ids(meta["special_tokens"]["mask_token"]),
                    name=meta["name"], prompt_template=meta["prompt_template"], answer_prefix=meta["answer_prefix"])


def tiny_names() -> list[str]:
    return sorted(p.parent.name for p in WEIGHTS_DIR.glob("*/backbone.json")) if WEIGHTS_DIR.exists() else []


def load_backbone(name_or_path, *, trust_remote_code=False, device=None, dtype=None, adapter=None,
                  mask_id=None, prompt_template="{question}"):
    """Load a tiny embedded model by name, a saved tiny model directory, or a hub/local HF model."""
    as_dtype(dtype, allow_auto=True)  # a bad dtype fails before any loading
    path = Path(name_or_path)
    if (WEIGHTS_DIR / str(name_or_path) / "backbone.json").exists():
        return _load_tiny(WEIGHTS_DIR / str(name_or_path), device, dtype)
    if (path / "backbone.json").exists():
        return _load_tiny(path, device, dtype)
    from .hf import load_hf_backbone  # real backbones: imported only when used

    return load_hf_backbone(name_or_path, trust_remote_code=trust_remote_code, device=device, dtype=dtype,
                            adapter=adapter, mask_id=mask_id, prompt_template=prompt_template)
