"""The losses of the training-time unlearning baselines, on the MDLM objective.

Definitions follow locuslab/open-unlearning (GA, GD, NPO, SimNPO, RMU) and Dang et al. for
Adaptive-RMU. What they all need is a sequence log-likelihood log pi(answer | prompt):

* masked diffusion: the ELBO of the answer from one masked draw per row -- t ~ U (stratified over
  the batch), each answer token masked with probability t, the prompt never masked, the EOS after
  the answer visible (as `likelihood` scores it), log-prob of the masked tokens weighted 1/t. It is
  the objective the tiny backbones were trained with, and an unbiased estimate of the ELBO;
* causal: the exact sum of the answer tokens' log-probs (teacher forcing).

NPO's policy and reference score the *same* draw (`draw_masks` once, both models read it), so the
log-ratio carries no masking noise of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..likelihood import answer_tail, encode_example


@dataclass
class Batch:
    """Tokenised (prompt, answer) pairs, left-padded: ``answer`` marks the scored positions."""
    ids: torch.Tensor        # [B, T] long
    attention: torch.Tensor  # [B, T] long, 0 on padding
    answer: torch.Tensor     # [B, T] bool, the answer tokens (never the prompt or the EOS tail)
    lengths: torch.Tensor    # [B] answer lengths

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.ids, self.attention, self.answer, self.lengths)))


def make_batch(backbone, facts) -> Batch:
    """The facts' ``[prompt ; answer ; EOS tail]`` rows, tokenised as the likelihood scores them."""
    facts = list(facts)
    if not facts:
        raise ValueError("make_batch: no facts")
    tail = answer_tail(backbone)
    rows = [encode_example(backbone, f.question, f.answer) for f in facts]
    T = max(len(p) + len(a) + len(tail) for p, a in rows)
    ids = torch.full((len(rows), T), backbone.pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    ans = torch.zeros((len(rows), T), dtype=torch.bool)
    for b, (p, a) in enumerate(rows):
        seq = p + a + tail
        off = T - len(seq)
        ids[b, off:] = torch.as_tensor(seq)
        att[b, off:] = 1
        ans[b, off + len(p):off + len(p) + len(a)] = True
    return Batch(ids, att, ans, torch.tensor([len(a) for _, a in rows]))


def draw_masks(batch: Batch, gen: torch.Generator, t_min: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """One masked draw per row: (masked [B, T] bool, t [B]); t stratified over the batch and kept
    above ``t_min`` so that 1/t stays bounded."""
    B = batch.ids.shape[0]
    t = ((torch.rand(1, generator=gen) + torch.arange(B) / B) % 1.0) * (1 - t_min) + t_min
    masked = (torch.rand(batch.ids.shape, generator=gen) < t[:, None]) & batch.answer.cpu()
    return masked.to(batch.ids.device), t.to(batch.ids.device)


def sequence_logprob(backbone, batch: Batch, draw=None) -> torch.Tensor:
    """[B] log pi(answer | prompt) with autograd: the one-draw ELBO for an MDLM (``draw`` from
    `draw_masks`), the exact token sum for a causal LM (``draw`` unused)."""
    att = None if bool(batch.attention.all()) else batch.attention
    if backbone.is_causal:  # position i predicts i + 1: read the positions before each answer token
        r, c = batch.answer[:, 1:].nonzero(as_tuple=True)
        return _row_sums(backbone, batch.ids, att, r, c, batch.ids[r, c + 1])
    if draw is None:
        raise ValueError("sequence_logprob: a masked-diffusion backbone needs a draw (draw_masks)")
    masked, t = draw
    r, c = masked.nonzero(as_tuple=True)
    x = torch.where(masked, backbone.mask_id, batch.ids)
    return _row_sums(backbone, x, att, r, c, batch.ids[r, c]) / t


def _row_sums(backbone, ids, att, r, c, target) -> torch.Tensor:
    """[B] sum over the read positions (r, c) of each row of log p(target), autograd on."""
    lp = torch.log_softmax(backbone.forward_logits_at(ids, att, r, c).float(), -1).gather(1, target[:, None])[:, 0]
    return torch.zeros(ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, r, lp)


# --- the losses: each takes sequence log-likelihoods (or activations) and returns a scalar -------
def ga_loss(logp_forget: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: minimise -NLL_f, i.e. the mean forget log-likelihood."""
    return logp_forget.mean()


def nll_loss(logp: torch.Tensor) -> torch.Tensor:
    """The retain anchor (and GD's retain term): the mean negative log-likelihood."""
    return -logp.mean()


def npo_loss(logp_forget: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: -(2/beta) E log sigmoid(-beta (log pi_theta - log pi_ref)). As beta -> 0 its gradient
    is that of GA (the loss tends to 2 log 2 / beta + E[log pi_theta - log pi_ref])."""
    _positive(beta, "beta")
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp_forget - logp_ref.detach())).mean()


def simnpo_loss(logp_forget: torch.Tensor, lengths: torch.Tensor, beta: float, delta: float = 0.0) -> torch.Tensor:
    """SimNPO: NPO without a reference, on the length-normalised log-likelihood with margin delta:
    -(2/beta) E log sigmoid(-beta (log pi_theta / |y| + delta))."""
    _positive(beta, "beta")
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp_forget / lengths.to(logp_forget) + delta)).mean()


def rmu_loss(h_forget: torch.Tensor, control: torch.Tensor, mask_forget: torch.Tensor,
             h_retain: torch.Tensor, h_retain_frozen: torch.Tensor, mask_retain: torch.Tensor,
             retain_weight: float) -> torch.Tensor:
    """RMU: forget activations pushed to the control vector c*u, retain activations held at the
    frozen model's; mean squared error per token over the non-padding positions."""
    def mse(a, b, m):
        m = m.to(a.dtype)[..., None]
        return (((a - b) ** 2) * m).sum() / (m.sum() * a.shape[-1]).clamp(min=1)
    return mse(h_forget, control.expand_as(h_forget), mask_forget) + retain_weight * mse(
        h_retain, h_retain_frozen.detach(), mask_retain)


def control_vector(hidden_size: int, seed: int, *, device=None) -> torch.Tensor:
    """RMU's fixed random direction u: uniform in [0, 1)^H, normalised to unit length (seeded)."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    return (u / u.norm()).float().to(device)


def adaptive_coefficient(h_forget_frozen: torch.Tensor, mask: torch.Tensor, scale: float) -> float:
    """Adaptive-RMU's c for one forget batch: ``scale`` times the frozen model's mean per-token
    activation norm on that batch (Dang et al.: the coefficient follows the layer's norm)."""
    norms = h_forget_frozen.float().norm(dim=-1)[mask.bool()]
    if norms.numel() == 0:
        raise ValueError("adaptive_coefficient: the forget batch has no unpadded position")
    return float(scale * norms.mean())


def _positive(x, name):
    if not (isinstance(x, (int, float)) and x > 0):
        raise ValueError(f"{name}={x!r} must be > 0")
