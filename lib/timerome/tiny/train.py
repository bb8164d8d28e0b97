"""The project's recipe for the tiny backbones: a BPE tokenizer and a from-scratch training run.

Masked diffusion (``objective="mdlm"``), as in LLaDA's SFT: per example draw t ~ U(0, 1)
(stratified over the batch to cut variance), mask each *answer* token with probability t (the
prompt is never masked), and take the cross-entropy on the masked tokens weighted by 1/t,
normalised by the answer length. Answers end with EOS and are filled with EOS up to a canvas
whose length is drawn between the batch's longest answer and ``canvas`` (the sampler's gen_length)
for a share ``canvas_prob`` of the batches (the others stop a few slots past the batch's longest
answer, which costs less): the sampler fills a fixed-length canvas, so training must show answers
closing anywhere inside it.

Autoregressive (``objective="arm"``): next-token cross-entropy on the answer tokens and the
first EOS, causal attention, the same data and size.

Everything is seeded; with ``torch.use_deterministic_algorithms`` and one thread count the run
is repeatable bit for bit on one machine.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import TinyConfig, TinyLM

SPECIAL_TOKENS = {"pad_token": "<pad>", "mask_token": "<mask>", "eos_token": "<eos>", "bos_token": "<bos>"}


def train_tokenizer(texts, vocab_size: int):
    """Byte-level BPE on the world's text, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


@dataclass
class Example:
    prompt: list[int]  # BOS + prompt tokens
    answer: list[int]  # answer tokens + EOS


def encode_pairs(tokenizer, pairs, prompt_template: str, answer_prefix: str):
    """(question, answer) pairs -> Examples with the backbone's prompt format."""
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)
    return [Example([tokenizer.bos_token_id] + enc(prompt_template.format(question=q)),
                    enc(answer_prefix + a) + [tokenizer.eos_token_id]) for q, a in pairs]


def length_batches(examples, batch_size: int, rng: random.Random):
    """Batches of similar total length (less EOS fill), in random order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt) + len(examples[i].answer) + rng.random() * 8)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def mdlm_batch(examples, idx, *, eos_id: int, mask_id: int, extra_eos: int, gen: torch.Generator,
               masking: str = "bernoulli", canvas: int = 0, canvas_prob: float = 1.0):
    """Tokens, masked input, loss weights for one masked-diffusion batch.

    ``masking="bernoulli"`` is LLaDA's estimator: each answer token masked with probability t,
    weight 1/t. ``"exact"`` masks exactly l ~ U{1..L} tokens with weight L/l: the same objective
    in expectation (both equal sum_m E[CE | m masked]), but every row has a masked token and the
    per-row loss is bounded (it is the mean CE over the masked tokens), so far less gradient noise.
    """
    T = max(len(examples[i].prompt) + len(examples[i].answer) for i in idx) + extra_eos
    if canvas and float(torch.rand(1, generator=gen)) < canvas_prob:  # answer region of a random length up to the inference canvas
        P, A = max(len(examples[i].prompt) for i in idx), max(len(examples[i].answer) for i in idx)
        T = max(T, P + int(torch.randint(A, max(A, canvas) + 1, (1,), generator=gen)))
    B = len(idx)
    x = torch.full((B, T), eos_id, dtype=torch.long)
    is_answer = torch.zeros((B, T), dtype=torch.bool)
    for r, i in enumerate(idx):
        ex = examples[i]
        x[r, :len(ex.prompt)] = torch.tensor(ex.prompt)
        x[r, len(ex.prompt):len(ex.prompt) + len(ex.answer)] = torch.tensor(ex.answer)
        is_answer[r, len(ex.prompt):] = True  # answer + EOS fill
    # stratified t over the batch, kept away from 0 so 1/t stays bounded
    t = ((torch.rand(1, generator=gen) + torch.arange(B) / B) % 1.0) * (1 - 1e-3) + 1e-3
    L = is_answer.sum(1, keepdim=True)
    if masking == "bernoulli":
        masked = (torch.rand((B, T), generator=gen) < t[:, None]) & is_answer
        weight = (1.0 / t)[:, None] / L  # 1/t, normalised by answer length
    elif masking == "exact":
        l = (t[:, None] * L).ceil().clamp(1, None)  # l in 1..L, uniform when t is
        score = torch.rand((B, T), generator=gen).masked_fill(~is_answer, 2.0)
        masked = score.argsort(1).argsort(1) < l  # the l answer positions with the lowest scores
        weight = 1.0 / l  # (L/l) / L
    else:
        raise ValueError(f"masking must be 'bernoulli' or 'exact', got {masking!r}")
    return x, torch.where(masked, mask_id, x), masked, weight.expand(B, T)


def arm_batch(examples, idx, *, pad_id: int):
    T = max(len(examples[i].prompt) + len(examples[i].answer) for i in idx)
    B = len(idx)
    x = torch.full((B, T), pad_id, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    target = torch.zeros((B, T), dtype=torch.bool)  # positions whose token is predicted from the left
    for r, i in enumerate(idx):
        ex = examples[i]
        n = len(ex.prompt) + len(ex.answer)
        x[r, :n] = torch.tensor(ex.prompt + ex.answer)
        att[r, :n] = 1
        target[r, len(ex.prompt):n] = True
    return x, att, target


def train(cfg: TinyConfig, examples, *, objective: str, epochs: int, batch_size: int = 32, lr: float = 3e-3,
          warmup: int = 50, weight_decay: float = 0.0, extra_eos: int = 8, seed: int = 0,
          special_ids: dict, masking: str = "bernoulli", canvas: int = 0, canvas_prob: float = 1.0, bf16: bool = False,
          init_state=None, anneal_steps: int = 0, aux_weight: float = 0.01, eval_fn=None, eval_every: int = 0,
          log=print):
    """Train a TinyLM from scratch, or from ``init_state`` (a state dict); returns (model, history of dicts).

    ``bf16`` runs the forward under CPU bfloat16 autocast (fp32 master weights and loss): faster
    on CPUs with AVX512-BF16 at larger widths, no gain at the embedded models' width.
    A ``shift_logits`` config scores token j at output j − 1 (an AR-initialised MDLM). ``anneal_steps``
    > 0 (DiffuLLaMA's attention-mask annealing, masked diffusion only): step s attends through the
    causal mask opened at random, each (query, key) pair with probability min(1, s / anneal_steps),
    so the model moves from its causal initialisation to full attention. A mixture-of-experts config
    adds ``aux_weight`` times its load-balancing loss.
    """
    if objective not in ("mdlm", "arm"):
        raise ValueError(f"objective must be 'mdlm' or 'arm', got {objective!r}")
    if cfg.causal != (objective == "arm"):
        raise ValueError(f"config.causal={cfg.causal} does not match objective={objective!r}")
    if anneal_steps and objective != "mdlm":
        raise ValueError("anneal_steps (attention-mask annealing) adapts a causal model to masked diffusion: objective 'mdlm'")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TinyLM(cfg).train()
    if init_state is not None:  # a warm restart: these weights, a fresh optimiser and schedule
        model.load_state_dict({k: v.float() for k, v in init_state.items()})
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = max(1, epochs * steps_per_epoch)  # (epochs=0 returns the initial model)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    history, t0, step = [], time.perf_counter(), 0
    for epoch in range(epochs):
        running, n = 0.0, 0
        for idx in length_batches(examples, batch_size, rng):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if objective == "mdlm":
                    x, xin, masked, w = mdlm_batch(examples, idx, eos_id=special_ids["eos"], mask_id=special_ids["mask"],
                                                   extra_eos=rng.randint(0, extra_eos), gen=gen,
                                                   masking=masking, canvas=canvas, canvas_prob=canvas_prob)
                    pattern = None
                    if anneal_steps:
                        T = xin.shape[1]
                        r = min(1.0, step / anneal_steps)
                        pattern = torch.ones(T, T, dtype=torch.bool).tril() | (torch.rand((T, T), generator=gen) < r)
                    h = model.hidden(xin, pattern=pattern)
                    if cfg.shift_logits:  # token j is predicted at j - 1 (the prompt's BOS is never masked)
                        h = torch.cat([h[:, :1], h[:, :-1]], dim=1)
                    logits = model.lm_head(h[masked])  # the LM head only where it is scored
                    ce = F.cross_entropy(logits.float(), x[masked], reduction="none")
                    loss = (ce * w[masked]).sum() / len(idx) + aux_weight * model.aux_loss()
                else:
                    x, att, target = arm_batch(examples, idx, pad_id=special_ids["pad"])
                    logits = model.lm_head(model.hidden(x, att)[:, :-1][target[:, 1:]])
                    loss = F.cross_entropy(logits.float(), x[:, 1:][target[:, 1:]]) + aux_weight * model.aux_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running, n, step = running + loss.item(), n + 1, step + 1
        rec = {"epoch": epoch + 1, "step": step, "loss": running / n, "seconds": time.perf_counter() - t0}
        if eval_fn is not None and eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            model.eval()
            rec.update(eval_fn(model))
            model.train()
        history.append(rec)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
    return model.eval(), history
