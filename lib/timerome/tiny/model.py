"""A small transformer that trains on two CPU cores: the embedded default backbone.

One class serves both the masked-diffusion models (bidirectional attention) and the matched
autoregressive model (causal attention). Two block styles:

* ``llama``: pre-RMSNorm, rotary positions, SwiGLU MLP (the LLaDA / Llama block);
* ``bert``:  pre-LayerNorm, learned absolute positions, GELU MLP (a BERT/GPT-2 style block).

Two switches make the tiny analogues of the MDLM family (Table II) differ the way the real ones do:

* ``shift_logits``: the output at position i predicts token i+1, as in MDLMs adapted from an
  autoregressive model (Dream, DiffuLLaMA); `Backbone.logits` undoes the shift, as for real Dream;
* ``n_experts`` > 0: the MLP is a sparse mixture of experts (`MoE`, LLaDA-MoE): a linear router
  sends each token to its ``expert_top_k`` experts, weighted by the softmax of their router logits.
  There is then no single down-projection (``blocks[i].mlp.experts[e].down``).

``hidden(..., pattern=)`` replaces the model's own attention pattern (causal or full) by a given
[T, T] or [B, T, T] boolean one: DiffuLLaMA's attention-mask annealing trains with the causal mask
opened at random.

Module names are chosen so the hook points read like TransformerLens: ``embed``, and per layer
``blocks[i]`` (its output is the residual stream, ``resid``), ``blocks[i].attn`` (attention
sub-layer output, before the residual add), ``blocks[i].mlp`` (MLP output) and
``blocks[i].mlp.down`` (the MLP down-projection that weight editors rewrite).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TinyConfig:
    vocab_size: int
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    max_len: int = 256
    block: str = "llama"  # "llama" | "bert"
    causal: bool = False  # False: masked diffusion LM; True: autoregressive LM
    rope_theta: float = 10000.0
    shift_logits: bool = False  # output i predicts token i+1 (an AR-initialised MDLM)
    n_experts: int = 0  # > 0: a mixture-of-experts MLP
    expert_top_k: int = 2

    def __post_init__(self):
        if self.block not in ("llama", "bert"):
            raise ValueError(f"TinyConfig.block must be 'llama' or 'bert', got {self.block!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.shift_logits and self.causal:
            raise ValueError("TinyConfig.shift_logits is for masked-diffusion models (a causal model predicts i+1 anyway)")
        if self.n_experts < 0 or (self.n_experts and not 1 <= self.expert_top_k <= self.n_experts):
            raise ValueError(f"TinyConfig: need n_experts >= 0 and 1 <= expert_top_k <= n_experts, got "
                             f"n_experts={self.n_experts}, expert_top_k={self.expert_top_k}")

    def save(self, path):
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path):
        return cls(**json.loads(Path(path).read_text()))


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def _rope(positions, head_dim, theta):
    """positions [B, T] -> (cos, sin), each [B, 1, T, head_dim/2] (broadcast over heads)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    ang = positions.float()[..., None] * inv
    return ang.cos()[:, None], ang.sin()[:, None]


def _apply_rope(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.n_heads, self.causal = cfg.n_heads, cfg.causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.block == "bert")
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.block == "bert")

    def forward(self, x, key_mask=None, rope=None, pattern=None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, T, hd]
        if rope is not None:
            q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        mask = None
        if key_mask is not None or pattern is not None:
            eye = torch.eye(T, dtype=torch.bool, device=x.device)
            if pattern is not None:  # [T, T] or [B, T, T]: which keys each query attends to
                mask = pattern if pattern.dim() == 2 else pattern[:, None]
            else:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device)
                mask = mask.tril() if self.causal else mask
            if key_mask is not None:  # padding keys are invisible to every query
                mask = mask & key_mask[:, None, None, :].bool()
            # a padding query sees itself, so no row is fully masked (which would give NaN)
            mask = mask | eye
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.swiglu = cfg.block == "llama"
        bias = not self.swiglu
        self.up = nn.Linear(cfg.d_model, (2 if self.swiglu else 1) * cfg.d_mlp, bias=bias)
        self.down = nn.Linear(cfg.d_mlp, cfg.d_model, bias=bias)

    def forward(self, x):
        if self.swiglu:
            gate, up = self.up(x).chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)
        return self.down(F.gelu(self.up(x)))


class MoE(nn.Module):
    """A sparse mixture of ``n_experts`` MLPs: each token goes to the ``top_k`` experts with the
    largest router logits, weighted by the softmax over those logits. Every expert runs on every
    token and unrouted outputs get weight 0 (exact, and cheap at this size). ``aux_loss`` holds the
    last forward's load-balancing loss (Switch Transformer: n_experts · Σ_e f_e p_e, f_e the share
    of routed slots, p_e the mean router probability), which training adds."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.top_k = cfg.expert_top_k
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.n_experts))
        self.aux_loss = None

    def routing(self, x) -> torch.Tensor:
        """[..., n_experts] weights: softmax over each token's top-k router logits, 0 elsewhere."""
        logits = self.router(x)
        top, idx = logits.topk(self.top_k, dim=-1)
        return torch.zeros_like(logits).scatter(-1, idx, top.softmax(-1))

    def forward(self, x):
        w = self.routing(x)
        if self.training:
            E = w.shape[-1]
            f = (w > 0).float().flatten(0, -2).mean(0) / self.top_k
            p = self.router(x).softmax(-1).flatten(0, -2).mean(0)
            self.aux_loss = E * (f * p).sum()
        return sum(w[..., e:e + 1] * expert(x) for e, expert in enumerate(self.experts))


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        Norm = RMSNorm if cfg.block == "llama" else nn.LayerNorm
        self.ln1, self.attn = Norm(cfg.d_model), Attention(cfg)
        self.ln2, self.mlp = Norm(cfg.d_model), (MoE(cfg) if cfg.n_experts else MLP(cfg))

    def forward(self, x, key_mask=None, rope=None, pattern=None):
        x = x + self.attn(self.ln1(x), key_mask, rope, pattern)
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.block == "bert" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = RMSNorm(cfg.d_model) if cfg.block == "llama" else nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def hidden(self, input_ids, attention_mask=None, pattern=None):
        """Final-layer hidden states [B, T, D] (before the LM head); ``pattern``: see the module docstring."""
        T = input_ids.shape[1]
        if T > self.config.max_len:
            raise ValueError(f"sequence length {T} exceeds the model's max_len {self.config.max_len}")
        x = self.embed(input_ids)
        rope = None
        # Positions count real tokens only, so left padding is invisible (absolute positions too).
        if attention_mask is None:
            positions = torch.arange(T, device=input_ids.device).expand(input_ids.shape[0], T)
        else:
            positions = (attention_mask.long().cumsum(1) - 1).clamp_min(0)
        if self.pos is not None:
            x = x + self.pos(positions)
        else:
            rope = _rope(positions, self.config.d_model // self.config.n_heads, self.config.rope_theta)
        for block in self.blocks:
            x = block(x, attention_mask, rope, pattern)
        return self.ln_f(x)

    def aux_loss(self):
        """The summed load-balancing loss of the MoE layers' last forward (0 without experts)."""
        losses = [b.mlp.aux_loss for b in self.blocks if isinstance(b.mlp, MoE) and b.mlp.aux_loss is not None]
        return sum(losses) if losses else 0.0

    def forward(self, input_ids, attention_mask=None):
        return self.lm_head(self.hidden(input_ids, attention_mask))

    def n_params(self):
        return sum(p.numel() for p in self.parameters())
