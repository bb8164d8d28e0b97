"""The tiny recipe's objective applied to a real backbone with LoRA (the paper's TOFU fine-tune).

The paper fine-tunes each 8B MDLM on TOFU (LoRA r=128, 10 epochs) before editing it. This
reuses `timerome.tiny.train.mdlm_batch` (LLaDA's SFT loss) on any `Backbone`, training only
low-rank adapters on the chosen Linear layers, then merges them into the weights so the result
is a plain frozen backbone again. Meant for a GPU; tested here on tiny stand-ins.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tiny.train import encode_pairs, length_batches, mdlm_batch


class LoRALinear(nn.Module):
    """y = W x + (alpha / r) B A x, with B initialised to zero (starts as the base layer)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / r
        self.A = nn.Parameter(torch.randn(r, base.in_features, device=base.weight.device) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))

    def forward(self, x):
        return self.base(x) + (x.to(self.A.dtype) @ self.A.T @ self.B.T * self.scale).to(x.dtype)

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.scale * self.B @ self.A).to(self.base.weight.dtype)
        return self.base


def _replace(root: nn.Module, pred, make):
    for name, child in list(root.named_children()):
        if isinstance(child, nn.Linear) and pred(name):
            setattr(root, name, make(child))
        else:
            _replace(child, pred, make)


def add_lora(model: nn.Module, *, r: int, alpha: float, targets=None) -> list[nn.Parameter]:
    """Wrap Linear layers whose attribute name is in ``targets`` (default: every Linear except
    the LM head); returns the trainable LoRA parameters (everything else is frozen)."""
    model.requires_grad_(False)
    pred = (lambda n: n not in ("lm_head", "ff_out_lm")) if targets is None else (lambda n: n in targets)
    _replace(model, pred, lambda lin: LoRALinear(lin, r, alpha))
    params = [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.A, m.B)]
    if not params:
        raise ValueError(f"no Linear layer matched the LoRA targets {targets}")
    return params


def merge_lora(model: nn.Module) -> nn.Module:
    _replace_lora = lambda root: [setattr(root, n, c.merged()) if isinstance(c, LoRALinear) else _replace_lora(c)
                                  for n, c in list(root.named_children())]
    _replace_lora(model)
    return model.requires_grad_(False)


def finetune_lora(backbone, facts, *, r: int = 128, alpha: float | None = None, epochs: int = 10,
                  batch_size: int = 8, lr: float = 1e-4, targets=None, seed: int = 0, extra_eos: int = 8,
                  log=print) -> list[dict]:
    """Fine-tune ``backbone`` in place on ``facts`` with the masked-diffusion SFT loss via LoRA,
    then merge the adapters. Returns the per-epoch loss history."""
    if backbone.is_causal:
        raise ValueError("finetune_lora trains masked-diffusion backbones; this one is autoregressive")
    tok = backbone.tokenizer
    if tok.eos_token_id is None:
        raise ValueError(f"the tokenizer of {backbone.name!r} has no EOS token; the recipe fills answers with EOS")
    examples = encode_pairs(tok, [(f.question, f.answer) for f in facts], backbone.prompt_template, backbone.answer_prefix)
    if tok.bos_token_id is None:  # encode_pairs prepends BOS; models without one get none
        for ex in examples:
            ex.prompt = ex.prompt[1:]
    params = add_lora(backbone.model, r=r, alpha=alpha if alpha is not None else 2 * r, targets=targets)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    history = []
    backbone.model.train()
    try:
        for epoch in range(epochs):
            total, n = 0.0, 0
            for idx in length_batches(examples, batch_size, rng):
                x, xin, masked, w = mdlm_batch(examples, idx, eos_id=tok.eos_token_id, mask_id=backbone.mask_id,
                                               extra_eos=rng.randint(0, extra_eos), gen=gen)
                x, xin, masked, w = (t.to(backbone.device) for t in (x, xin, masked, w))
                logits = backbone.forward_logits(xin)[masked]
                loss = (F.cross_entropy(logits.float(), x[masked], reduction="none") * w[masked]).sum() / len(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, n = total + loss.item(), n + 1
            history.append({"epoch": epoch + 1, "loss": total / n})
            log(f"epoch {epoch + 1}: loss {total / n:.4f}")
    finally:
        backbone.model.eval()
        merge_lora(backbone.model)
    return history
