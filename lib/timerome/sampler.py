"""The reverse (denoising) process of a masked diffusion LM, as LLaDA samples it.

Start from ``[prompt | MASK x gen_length]``. The answer is split into blocks of ``block_length``
(semi-autoregressive when smaller than ``gen_length``); each block gets ``steps / n_blocks``
forwards. At every forward each masked position proposes a candidate (argmax of the logits,
Gumbel-max when ``temperature > 0``) with a confidence; the ``k`` most confident candidates
inside the current block are committed, where ``k`` spreads the block's mask count evenly over
its steps (remainder to the earliest steps). Only masks of the current block are candidates (a
mask id inside the prompt is context and never filled in), and the mask token itself is never
proposed as a candidate (confidences are still read from the full distribution, as in LLaDA).

Each forward runs inside ``backbone.at_step(k)`` (k the global denoising step, 0-based), so an
edit can act at chosen steps only; ``on_step(k, x)`` is called before each forward. `propose` and
`commit_mask` are the two halves of a greedy step, shared with the tracer.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

REMASKING = ("low_confidence", "random", "entropy", "topk_margin", "maskgit_plus")


class Generation(NamedTuple):
    tokens: torch.Tensor  # [B, P + gen_length]
    committed_at: torch.Tensor  # [B, gen_length]: the step at which each answer position was committed
    prompt_length: int


def num_transfer_tokens(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """[B] masks in a block -> [B, steps] tokens to commit per step, remainder to early steps."""
    base = mask_count // steps
    rem = mask_count % steps
    out = base[:, None].repeat(1, steps)
    out += (torch.arange(steps, device=mask_count.device)[None, :] < rem[:, None]).long()
    return out


def left_pad(prompts, pad_id: int, device=None):
    """List of token-id lists -> (ids [B, P], attention_mask [B, P]) padded on the left."""
    if not len(prompts):
        raise ValueError("no prompts to pad: the prompt list is empty")
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    att = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, P - len(p):] = torch.as_tensor(p, dtype=torch.long)
            att[i, P - len(p):] = 1
    return ids.to(device), att.to(device)


def confidence(logits, x0, remasking, temperature, generator):
    """Per-position confidence, in float64: the commit order ranks these, and float32 round-off
    would turn near-ties into exact ties (or swap them) depending on the machine."""
    if remasking == "random":
        return torch.rand(x0.shape, generator=generator, device=x0.device)
    if remasking == "maskgit_plus" and temperature > 0:  # Dream: prob under the sampling distribution
        return F.softmax(logits.double() / temperature, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
    p = F.softmax(logits.double(), dim=-1)
    if remasking in ("low_confidence", "maskgit_plus"):
        return p.gather(-1, x0[..., None]).squeeze(-1)
    if remasking == "entropy":  # negative entropy: peaked distributions commit first
        return (p * torch.log(p.clamp_min(1e-12))).sum(-1)
    top2 = p.topk(2, dim=-1).values  # topk_margin
    return top2[..., 0] - top2[..., 1]


def propose(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Greedy candidates: the argmax at every position, the runner-up where the argmax is the mask
    token (committing it would leave the position masked). Only the offending positions are copied."""
    x0 = logits.argmax(-1)
    bad = x0 == mask_id
    if bad.any():
        alt = logits[bad].float()
        alt[:, mask_id] = -torch.inf
        x0[bad] = alt.argmax(-1)
    return x0


def commit_mask(conf: torch.Tensor, masked: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: per row, the ``n[b]`` most confident of the ``masked`` positions. Ranked in
    float64 with exact ties to the lower position (a stable sort), so round-off cannot reorder them."""
    conf = torch.where(masked, conf.double(), torch.full_like(conf, -torch.inf, dtype=torch.float64))
    order = conf.argsort(dim=1, descending=True, stable=True)
    take = torch.arange(conf.shape[1], device=conf.device)[None, :] < n[:, None]
    commit = torch.zeros_like(masked)
    rows = torch.arange(conf.shape[0], device=conf.device)[:, None].expand_as(order)
    commit[rows[take], order[take]] = True
    return commit


@torch.no_grad()
def generate(backbone, prompt_ids, *, gen_length: int, steps: int, block_length: int | None = None,
             remasking: str = "low_confidence", temperature: float = 0.0, seed: int | None = None,
             attention_mask: torch.Tensor | None = None, return_trajectory: bool = False, on_step=None,
             suffix=None):
    """Sample answers for a batch of prompts; returns token ids [B, P + gen_length].

    ``prompt_ids`` is a [B, P] tensor (with ``attention_mask`` when left-padded) or a list of
    token-id lists of any lengths (left-padded here; padding is invisible to the model).
    With ``return_trajectory`` a `Generation` also gives the commit step of every position.
    ``suffix``: token ids fixed after the generated slots (e.g. the EOS an answer is trained with),
    visible to every forward and not returned.
    """
    if remasking not in REMASKING:
        raise ValueError(f"remasking={remasking!r}; expected one of {REMASKING}")
    block_length = gen_length if block_length is None else block_length
    for name, v in (("gen_length", gen_length), ("steps", steps), ("block_length", block_length)):
        if isinstance(v, bool) or not isinstance(v, int):  # 8.0 would fail later inside torch
            raise TypeError(f"{name}={v!r} must be an int, got {type(v).__name__}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature={temperature!r} must be a number >= 0 (0 = greedy)")
    if gen_length <= 0 or block_length <= 0 or gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} must be a positive multiple of block_length={block_length}")
    n_blocks = gen_length // block_length
    if steps <= 0 or steps % n_blocks:
        raise ValueError(f"steps={steps} must be a positive multiple of the number of blocks ({n_blocks})")
    if backbone.is_causal:
        raise ValueError(f"{backbone.name or 'this backbone'} is autoregressive; masked-diffusion sampling needs a bidirectional model")

    device = backbone.device
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: generate needs at least one prompt")
    if isinstance(prompt_ids, (list, tuple)):
        prompt_ids, attention_mask = left_pad(prompt_ids, backbone.pad_id, device)
    prompt_ids = prompt_ids.to(device)
    B, P = prompt_ids.shape
    tail = torch.as_tensor(list(suffix or []), dtype=torch.long, device=device)[None].expand(B, -1)
    x = torch.cat([prompt_ids, torch.full((B, gen_length), backbone.mask_id, dtype=torch.long, device=device), tail], 1)
    att = None
    if attention_mask is not None:
        att = torch.cat([attention_mask.to(device), torch.ones(B, gen_length + tail.shape[1], dtype=attention_mask.dtype,
                                                               device=device)], 1)
    generator = torch.Generator(device=device)
    generator.manual_seed(0 if seed is None else int(seed))
    committed_at = torch.full((B, gen_length), -1, dtype=torch.long, device=device)
    steps_per_block = steps // n_blocks

    k = 0
    for b in range(n_blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        schedule = num_transfer_tokens((x[:, lo:hi] == backbone.mask_id).sum(1), steps_per_block)
        for i in range(steps_per_block):
            with backbone.at_step(k):
                if on_step is not None:
                    on_step(k, x)
                logits = backbone.logits(x, att)
            masked = x == backbone.mask_id
            masked[:, :lo] = False  # only the current block is filled: a mask id inside the
            masked[:, hi:] = False  # prompt is context, and later blocks wait their turn
            # the mask token is never a candidate; confidences still use the full distribution (LLaDA)
            if temperature > 0:  # Gumbel-max sampling of the candidates
                u = torch.rand(logits.shape, generator=generator, device=device).clamp_(1e-10, 1 - 1e-10)
                g = logits.float() / temperature - torch.log(-torch.log(u))
                g[..., backbone.mask_id] = -torch.inf
                x0 = g.argmax(-1)
            else:
                x0 = propose(logits, backbone.mask_id)
            conf = confidence(logits, x0, remasking, temperature, generator)
            commit = commit_mask(conf, masked, schedule[:, i])
            x = torch.where(commit, x0, x)
            committed_at[commit[:, P:P + gen_length]] = k
            k += 1
    x = x[:, :P + gen_length]
    if return_trajectory:
        return Generation(x, committed_at, P)
    return x


@torch.no_grad()
def generate_autoregressive(backbone, prompt_ids, *, max_new_tokens: int):
    """Greedy left-to-right decoding for the causal baselines; returns [B, P + max_new_tokens].

    ``prompt_ids`` is a list of token-id lists (left-padded here). Rows that emitted EOS keep
    emitting EOS, so the output lines up with `generate`'s.
    """
    if not backbone.is_causal:
        raise ValueError(f"{backbone.name or 'this backbone'} is not autoregressive; use generate()")
    x, att = left_pad(prompt_ids, backbone.pad_id, backbone.device)
    B, P = x.shape
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    rows = torch.arange(B, device=x.device)
    for _ in range(max_new_tokens):
        if done.all():  # the rest would be EOS: append it without running the model
            x = torch.cat([x, torch.full((B, P + max_new_tokens - x.shape[1]), backbone.eos_id, dtype=x.dtype,
                                         device=x.device)], 1)
            break
        nxt = backbone.logits_at(x, att, rows, torch.full_like(rows, x.shape[1] - 1)).argmax(-1)  # last position only
        nxt = torch.where(done, torch.full_like(nxt, backbone.eos_id), nxt)
        done |= nxt == backbone.eos_id
        x = torch.cat([x, nxt[:, None]], 1)
        att = torch.cat([att, torch.ones_like(att[:, :1])], 1)
    return x
