"""λ tuning (`timerome.tuning`): the choice rule on hand-made sweeps, the sweep on a tiny backbone."""
import math

import pandas as pd
import pytest
import torch

from timerome import tuning as T
from timerome.data import Fact
from timerome.capture import capture_keys
from timerome.memory import EditMemory

from conftest import make_tiny_backbone, scale_blocks


def sweep(d_forget, d_retain, grid=(0.01, 0.1, 1.0, 10.0)):
    return pd.DataFrame({"lam_relative": grid, "lam": [3.0 * r for r in grid], "key_scale": 3.0,
                         "d_forget_val": d_forget, "d_retain_val": d_retain})


# ============================================================================ the rule
@pytest.mark.parametrize("d_retain,budget,chosen", [
    ([-8.0, -4.0, -2.0, -0.5], 5.0, 0.1),    # 0.01 breaks the budget; 0.1 forgets most of the rest
    ([-8.0, -4.0, -2.0, -0.5], 1.0, 10.0),   # only 10 is within budget
    ([-8.0, -5.0, -2.0, -0.5], 5.0, 0.1),    # a drop equal to the budget is within it
    ([-8.0, -4.0, -2.0, -3.0], 1.0, 1.0),    # none within budget: the smallest retain drop
    ([+1.0, -4.0, -2.0, -0.5], 0.0, 0.01),   # a retain gain is within any budget
])
def test_choose_lambda(d_retain, budget, chosen):
    row = T.choose_lambda(sweep([-9.0, -6.0, -3.0, -1.0], d_retain), budget)
    assert row.lam_relative == chosen


def test_choose_lambda_ties_take_the_first_row():
    assert T.choose_lambda(sweep([-2.0, -6.0, -6.0, -1.0], [-1.0] * 4), 5.0).lam_relative == 0.1


def test_choose_lambda_on_a_concatenated_sweep():
    two = pd.concat([sweep([-1.0, -2.0, -3.0, -4.0], [-1.0] * 4), sweep([-9.0, -6.0, -3.0, -1.0], [-1.0] * 4)])
    row = T.choose_lambda(two, 5.0)  # index labels 0-3 twice: still one row
    assert isinstance(row, pd.Series) and (row.lam_relative, row.d_forget_val) == (0.01, -9.0)


@pytest.mark.parametrize("bad,match", [(pd.DataFrame(), "empty"), (sweep([-1.0] * 4, [-1.0] * 4).drop(columns="d_retain_val"),
                                                                   "lacks column"),
                                       (sweep([math.nan, -1.0, -1.0, -1.0], [-1.0] * 4), "NaN")])
def test_choose_lambda_rejects_bad_sweeps(bad, match):
    with pytest.raises(ValueError, match=match):
        T.choose_lambda(bad, 5.0)


@pytest.mark.parametrize("budget", [-1.0, math.inf, "5", True])
def test_choose_lambda_rejects_bad_budgets(budget):
    with pytest.raises(ValueError, match="retain_budget"):
        T.choose_lambda(sweep([-1.0] * 4, [-1.0] * 4), budget)


# ================================================================ measured on a tiny backbone
def fact(question, answer, subject, index):
    s = question.index(subject)
    return Fact(question=question, answer=answer, subject=subject, subject_rule="given", split="toy", index=index,
                subject_span=(s, s + len(subject)), subject_in="question")


FORGET = [fact("who wrote the red book ?", "alice wrote it in paris", "red book", 0),
          fact("who painted a blue sea near rome ?", "bob", "blue sea", 1)]
RETAIN = [fact("what does carol sing ?", "songs about snow", "carol", 2),
          fact("where was the red book written ?", "paris", "red book", 3)]
KW = dict(seeds=(0,), n_mc=2, batch_size=8)


@pytest.fixture
def bb(tiny_tokenizer):
    return scale_blocks(make_tiny_backbone(tiny_tokenizer, layers=3, d=32))


def test_tune_lambda_measures_each_candidate_and_applies_the_rule(bb):
    grid = [0.1, 1.0]
    choice = T.tune_lambda(bb, FORGET, RETAIN, 1, lam_grid=grid, retain_budget=5.0, **KW)
    scale = float(capture_keys(bb, FORGET, 1)["U"].pow(2).sum(1).mean())
    assert choice.key_scale == scale and choice.lam == choice.lam_relative * scale
    assert choice.sweep.lam_relative.tolist() == grid and choice.sweep.layer.tolist() == [1, 1]
    assert choice.lam_relative == T.choose_lambda(choice.sweep, 5.0).lam_relative
    assert choice.rule == T.rule_text(5.0, 1.0, 2)
    # one candidate by hand: the memory of the forget facts at λ = 1 x scale, installed
    base = T.validation_lp(bb, FORGET, RETAIN, **KW)
    mem = EditMemory.build(bb, FORGET, 1, lam_relative=1.0, alpha=1.0, q=2)
    lp = T.validation_lp(bb, FORGET, RETAIN, edit=lambda: mem.installed(bb), **KW)
    row = choice.sweep.iloc[1]
    assert row.d_forget_val == pytest.approx(lp.forget_val - base.forget_val, abs=1e-9)
    assert row.d_retain_val == pytest.approx(lp.retain_val - base.retain_val, abs=1e-9)
    assert row.d_forget_val != 0.0  # the edit is actually installed


def test_tune_lambda_checks_its_arguments_before_measuring(bb):
    with pytest.raises(ValueError, match="lam_grid"):
        T.tune_lambda(bb, FORGET, RETAIN, 1, lam_grid=[], retain_budget=5.0, **KW)
    with pytest.raises(ValueError, match="retain_budget"):
        T.tune_lambda(bb, FORGET, RETAIN, 1, lam_grid=[1.0], retain_budget=-1.0, **KW)


@pytest.mark.parametrize("n_layers,traced", [(4, 0), (4, 3), (2, 1), (32, 19)])
def test_random_layer_is_another_layer_drawn_with_the_seed(n_layers, traced):
    import random

    got = T.random_layer(n_layers, traced, seed=0)
    assert got != traced and 0 <= got < n_layers
    assert got == random.Random(0).choice([l for l in range(n_layers) if l != traced])  # the rule, spelled out
    assert {T.random_layer(n_layers, traced, seed=s) for s in range(2000)} == set(range(n_layers)) - {traced}


def test_random_layer_needs_two_layers():
    with pytest.raises(ValueError, match="no layer other than the traced one"):
        T.random_layer(1, 0)
