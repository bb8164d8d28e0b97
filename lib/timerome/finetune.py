"""The tiny recipe's objective applied to a real backbone with LoRA (the paper's TOFU fine-tune).

The paper fine-tunes each 8B MDLM on TOFU (LoRA r=128, 10 epochs) before editing it. This
reuses `timerome.tiny.train.mdlm_batch` (LLaDA's SFT loss) on any `Backbone`, training only
low-rank adapters (peft LoRA) on the chosen Linear layers, then merges them into the weights so
the result is a plain frozen backbone again. The gradient unlearning baselines use the same
`add_lora` / `merge_lora`. Meant for a GPU; tested here on tiny stand-ins.
"""
from __future__ import annotations

import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tiny.train import encode_pairs, length_batches, mdlm_batch


HEAD_NAMES = ("lm_head", "ff_out_lm")  # output heads are never adapted


def lora_targets(model: nn.Module, targets=None, layers=None, blocks: str = "blocks") -> list[str]:
    """Full names of the Linear modules to adapt: those whose last name component is in ``targets``
    (default: every Linear but the LM head) and, with ``layers``, that sit in block ``<blocks>.<l>``
    for an l in it. Remote-code models (LLaDA) are matched the same way, by module name."""
    want = None if targets is None else set(targets)
    prefixes = None if layers is None else tuple(f"{blocks}.{int(l)}." for l in layers)
    names = []
    for name, mod in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if not isinstance(mod, nn.Linear) or last in HEAD_NAMES:
            continue
        if (want is None or last in want) and (prefixes is None or name.startswith(prefixes)):
            names.append(name)
    if not names:
        raise ValueError(f"no Linear layer matched the LoRA targets {targets}"
                         + ("" if layers is None else f" in blocks {list(layers)} of '{blocks}'"))
    return names


def add_lora(model: nn.Module, *, r: int, alpha: float, targets=None, layers=None, blocks: str = "blocks") -> list[nn.Parameter]:
    """Inject peft LoRA adapters (B = 0, so the model starts unchanged) into the Linear layers
    `lora_targets` picks, in place (module paths and hook points stay where they were); every
    other parameter is frozen. Returns the trainable adapter parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    names = lora_targets(model, targets, layers, blocks)
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=names, bias="none"), model)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight and put the plain Linear back in its place."""
    from peft.tuners.lora import LoraLayer

    for name, mod in list(model.named_modules()):
        if isinstance(mod, LoraLayer):
            mod.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, mod.get_base_layer())
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
