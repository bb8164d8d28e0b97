"""The `Backbone`: a frozen model, its tokenizer and mask token, named hook points, and the denoising clock.

Every algorithm talks to a `Backbone`, never to a model class. Hook points (one vocabulary for
every family, `timerome.families` says where each lives):

* ``embed``                   the input token embedding's output;
* ``blocks.<l>.resid_post``   block l's output (the residual stream after block l);
* ``blocks.<l>.attn_out``     the attention sub-layer's output, before it is added to the residual;
* ``blocks.<l>.mlp_out``      the MLP sub-layer's output, before it is added to the residual;
* ``blocks.<l>.mlp_in``       the MLP down-projection's input (what ROME/MEMIT keys are read from).

A *module*, in this package's API, is always the paper's m ∈ {resid, attn, mlp} (what is traced
or edited at a layer); ``point(module, l)`` names its hook point. A torch module behind a point is
its *site*. `trace` is the one way to read or edit hook points; `at_step` sets the denoising step ``step``
that step-restricted edits read (None outside a sampler or tracer).
"""
from __future__ import annotations

import contextlib

import torch

from .families import Family
from .hooks import hooked

MODULES = ("resid", "attn", "mlp")  # the paper's module m
_SUFFIX = {"resid": "resid_post", "attn": "attn_out", "mlp": "mlp_out"}
POINT_SUFFIXES = (*_SUFFIX.values(), "mlp_in")


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


def point(module: str, layer: int) -> str:
    """The hook point of the paper's ``module`` at ``layer``: point('resid', 3) = 'blocks.3.resid_post'."""
    if module not in _SUFFIX:
        raise ValueError(f"module={module!r}; expected one of {MODULES}")
    return f"blocks.{int(layer)}.{_SUFFIX[module]}"


class Backbone:
    """A frozen model behind one interface: logits, mask token, hook points and the denoising step."""

    def __init__(self, model, tokenizer, family: Family, *, mask_id: int, name: str = "",
                 prompt_template: str = "{question}", answer_prefix: str = " "):
        self.model, self.tokenizer, self.family, self.name = model.eval(), tokenizer, family, name
        self.mask_id = int(mask_id)
        self.prompt_template, self.answer_prefix = prompt_template, answer_prefix
        self.step: int | None = None  # the denoising step of the running forward (`at_step`)
        self.blocks = get_module(model, family.blocks)
        for p in ("embed", *(f"blocks.0.{s}" for s in POINT_SUFFIXES if s != "mlp_in" or family.mlp_down)):
            self.site(p)  # fail now, not mid-experiment

    # --- shape facts -------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return self.embedding.weight.shape[1]

    @property
    def embedding(self) -> torch.nn.Embedding:
        return get_module(self.model, self.family.embed)

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
        return self.family.causal

    # --- hook points -------------------------------------------------------------------------
    def site(self, name: str) -> tuple[torch.nn.Module, str]:
        """(torch module, "output" | "input") that hook point ``name`` reads."""
        if name == "embed":
            return self.embedding, "output"
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "blocks" or not parts[1].lstrip("-").isdigit() or parts[2] not in POINT_SUFFIXES:
            raise ValueError(f"hook point {name!r}: expected 'embed' or 'blocks.<layer>.<{'|'.join(POINT_SUFFIXES)}>'")
        layer, suffix = int(parts[1]), parts[2]
        if not -self.n_layers <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range for {self.name or 'backbone'} with {self.n_layers} layers")
        block, fam = self.blocks[layer], self.family
        if suffix == "resid_post":
            return block, "output"
        if suffix == "mlp_in":
            if fam.mlp_down is None:
                raise ValueError(f"family {fam.name!r} has no single MLP down-projection ({fam.notes})")
            return get_module(block, fam.mlp_down), "input"
        return get_module(block, fam.attn_out if suffix == "attn_out" else fam.mlp_out), "output"

    def down_proj(self, layer: int) -> torch.nn.Linear:
        """The MLP down-projection of ``layer`` (the Linear whose input is ``blocks.<layer>.mlp_in``)."""
        return self.site(f"blocks.{int(layer)}.mlp_in")[0]

    def trace(self, points, *, edit=None, stop_after: str | None = None):
        """Context manager over hook points: ``edit(point, h)`` may return a replacement for h (None
        keeps it); the yielded dict holds each point's (edited) h of the latest forward; with
        ``stop_after`` the forward ends after that point (``with`` absorbs it), as ROME's TraceDict.

            with bb.trace(["blocks.0.resid_post"], stop_after="blocks.0.resid_post") as seen:
                bb.logits(ids)
            h = seen["blocks.0.resid_post"]
        """
        points = [points] if isinstance(points, str) else list(points)
        return hooked({p: self.site(p) for p in points}, edit=edit, stop_after=stop_after)

    @contextlib.contextmanager
    def at_step(self, k: int | tuple | None):
        """While active, ``self.step`` is the denoising step ``k`` (restored on exit); a tuple gives one
        step per batch row (`likelihood.ELBOOptions.step_clock`)."""
        prev, self.step = self.step, k
        try:
            yield self
        finally:
            self.step = prev

    # --- forward -----------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, V] logits where position i scores the token *at* i (Dream's shift undone)."""
        return self.forward_logits(input_ids, attention_mask)

    @torch.no_grad()
    def logits_at(self, input_ids, attention_mask, rows, cols) -> torch.Tensor:
        """[N, V]: ``logits(input_ids, attention_mask)[rows, cols]`` without the full [B, T, V]."""
        return self.forward_logits_at(input_ids, attention_mask, rows, cols)

    def forward_logits_at(self, input_ids, attention_mask, rows, cols) -> torch.Tensor:
        """`logits_at` with autograd left on (edit optimisation, gradient baselines).

        The LM head is the biggest matmul of a small model's forward and a likelihood or a loss reads
        only some positions, so the head is fed just those hidden states (a pre-hook). Models
        without a findable Linear head take the full path.
        """
        rows, cols = torch.as_tensor(rows, device=input_ids.device), torch.as_tensor(cols, device=input_ids.device)
        head = self._output_head()
        if head is None:
            return self.forward_logits(input_ids, attention_mask)[rows, cols]
        raw = (cols - 1).clamp(min=0) if self.family.shift_logits else cols  # Dream: i is scored at i-1

        def select(_name, h):
            if not (h.is_floating_point() and h.dim() == 3 and h.shape[:2] == input_ids.shape):
                raise RuntimeError(f"{self.name}: the output head got input of shape {tuple(h.shape)}, not the "
                                   f"[B, T, H] hidden states; use logits() for this model")
            return h[rows, raw][None]

        with hooked({"head_in": (head, "input")}, edit=select):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
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
        if self.family.shift_logits:  # Dream predicts i+1 at i; realign so i scores i
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    # --- text --------------------------------------------------------------------------------
    def prompt(self, question: str) -> str:
        return self.prompt_template.format(question=question)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, question: str) -> list[int]:
        """The ids a question is given to the model as: BOS (if the tokenizer has one) + prompt."""
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + self.encode(self.prompt(question))

    def answer_ids(self, answer: str, what: str = "answer") -> list[int]:
        """The ids an answer is scored or generated as (``answer_prefix`` + answer, no EOS); an
        answer that encodes to no tokens is an error (``what`` names it in the message)."""
        ids = list(self.encode(self.answer_prefix + answer))
        if not ids:
            raise ValueError(f"{what} {answer!r} encodes to no tokens (answer_prefix={self.answer_prefix!r})")
        return ids

    def __repr__(self):
        return (f"Backbone({self.name!r}, family={self.family.name}, layers={self.n_layers}, "
                f"hidden={self.hidden_size}, mask_id={self.mask_id})")


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
