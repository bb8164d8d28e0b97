"""The remasking (commit-order) modes of the masked-diffusion sampler, as specifications.

First each mode's confidence against hand arithmetic, then the commit order it produces in
`generate` on a fake backbone whose logits are fixed per position (one commit per step, so
``committed_at`` is exactly the ranking of the positions by confidence).
"""
import contextlib
import math

import pytest
import torch

from timerome.sampler import confidence, generate

LN = math.log
P = [[0.5, 0.25, 0.125, 0.125],     # peaked
     [0.25, 0.25, 0.25, 0.25],      # uniform
     [0.625, 0.125, 0.125, 0.125]]  # most peaked
# each row shifted by a constant: softmax ignores it, so a formula that skips normalising fails
LOGITS = (torch.tensor(P, dtype=torch.float64).log() + torch.tensor([[0.0], [1.0], [-2.0]]))[None]  # [1, 3, 4]
X0 = torch.tensor([[1, 3, 0]])  # the chosen tokens: not the argmax in row 0


def conf(mode, temperature=0.0):
    return confidence(LOGITS, X0, mode, temperature, None)


def expect(*values):
    return torch.tensor([values], dtype=torch.float64)


def test_low_confidence_is_the_probability_of_the_chosen_token_whatever_the_temperature():
    """low_confidence: softmax(logits)[x0], the sampling temperature plays no part."""
    torch.testing.assert_close(conf("low_confidence"), expect(0.25, 0.25, 0.625))
    torch.testing.assert_close(conf("low_confidence", 0.5), expect(0.25, 0.25, 0.625))


def test_entropy_is_the_negative_entropy_of_the_distribution():
    """entropy: sum p ln p over the whole vocabulary (peaked distributions rank first)."""
    want = expect(0.5 * LN(0.5) + 0.25 * LN(0.25) + 2 * 0.125 * LN(0.125),
                  -LN(4),
                  0.625 * LN(0.625) + 3 * 0.125 * LN(0.125))
    torch.testing.assert_close(conf("entropy"), want)


def test_topk_margin_is_top1_minus_top2_probability():
    """topk_margin: p(1st) - p(2nd), independent of the chosen token."""
    torch.testing.assert_close(conf("topk_margin"), expect(0.5 - 0.25, 0.25 - 0.25, 0.625 - 0.125))


def test_maskgit_plus_at_temperature_zero_is_the_probability_of_the_chosen_token():
    """maskgit_plus, greedy: softmax(logits)[x0], as low_confidence."""
    torch.testing.assert_close(conf("maskgit_plus"), expect(0.25, 0.25, 0.625))


def test_maskgit_plus_with_temperature_is_the_probability_under_the_sampling_distribution():
    """maskgit_plus, temperature t > 0: softmax(logits / t)[x0]; t = 0.5 gives p_x0^2 / sum p^2."""
    want = expect(0.25 ** 2 / (0.5 ** 2 + 0.25 ** 2 + 2 * 0.125 ** 2),
                  0.25,
                  0.625 ** 2 / (0.625 ** 2 + 3 * 0.125 ** 2))
    torch.testing.assert_close(conf("maskgit_plus", 0.5), want)


PROMPT = [[1, 2]]


class FakeBackbone:
    """Fixed logits per position, whatever the input; vocabulary 0..5 with 5 the mask token."""
    mask_id, pad_id, device, is_causal, name = 5, 4, torch.device("cpu"), False, "fake"

    def __init__(self, answer_logits):  # [3, 6] for the three answer positions
        self.table = torch.cat([torch.zeros(len(PROMPT[0]), 6), answer_logits.float()])
        self.step = None

    @contextlib.contextmanager
    def at_step(self, k):
        prev, self.step = self.step, k
        try:
            yield
        finally:
            self.step = prev

    def logits(self, x, attention_mask=None):
        return self.table.expand(x.shape[0], -1, -1).clone()



def committed_at(answer_logits, mode, temperature=0.0):
    out = generate(FakeBackbone(answer_logits), PROMPT, gen_length=3, steps=3, remasking=mode,
                   temperature=temperature, return_trajectory=True)
    return out.committed_at[0].tolist(), out.tokens[0, len(PROMPT[0]):].tolist()


# token 0 is every position's argmax; the mask token (last column) is never likely
GREEDY = torch.tensor([[0.50, 0.40, 0.04, 0.03, 0.02, 0.01],   # A: top-1 0.50, margin 0.10, entropy 1.07
                       [0.44, 0.14, 0.14, 0.14, 0.13, 0.01],   # B: top-1 0.44, margin 0.30, entropy 1.50
                       [0.47, 0.45, 0.05, 0.01, 0.01, 0.01]]).log()  # C: 0.47, margin 0.02, entropy 1.00


@pytest.mark.parametrize("mode, order", [("low_confidence", [0, 2, 1]),  # A, C, B by top-1
                                         ("maskgit_plus", [0, 2, 1]),    # the same when greedy
                                         ("topk_margin", [1, 0, 2]),     # B, A, C by margin
                                         ("entropy", [1, 2, 0])])        # C, A, B by entropy
def test_greedy_commit_order_follows_the_mode(mode, order):
    """Greedy: positions are committed most-confident first, confidence as the mode defines it."""
    assert committed_at(GREEDY, mode) == (order, [0, 0, 0])


# token 0 is each candidate; the other content tokens sit 3 or more below it, which at t = 0.1 is
# 30 in logits / t, wider than the Gumbel noise can span (u is clamped to [1e-10, 1 - 1e-10], so
# under 27): sampling always picks token 0.
# The mask token (column 5) is never sampled but still counts in the confidence.
NO = -50.0
SAMPLED = torch.tensor([[0.0, -3.0, -3.0, -3.0, -3.0, NO],  # A: p = 1/(1+4e^-3) = 0.83; at t: 1 - 4e^-30
                        [0.0, NO, NO, NO, NO, -2.0],        # B: p = 1/(1+e^-2) = 0.88;   at t: 1 - e^-20
                        [0.0, NO, NO, NO, NO, -1.0]])       # C: p = 1/(1+e^-1) = 0.73;   at t: 1 - e^-10


@pytest.mark.parametrize("mode, order", [("low_confidence", [1, 0, 2]),  # B, A, C at temperature 1
                                         ("maskgit_plus", [0, 1, 2])])   # A, B, C at the sampling temperature
def test_maskgit_plus_ranks_by_the_sampling_temperature(mode, order):
    """Sampling at t = 0.1: maskgit_plus ranks by softmax(logits / t), low_confidence by softmax(logits)."""
    assert committed_at(SAMPLED, mode, temperature=0.1) == (order, [0, 0, 0])
