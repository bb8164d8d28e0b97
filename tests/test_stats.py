"""timerome.stats: bootstrap CI, paired t-test, significance stars and table formatting."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from timerome import stats
from timerome.stats import MINUS, bootstrap_ci, fmt_delta, fmt_p, fmt_p_mean_std, mean_std, paired_t, stars


def test_bootstrap_is_the_textbook_percentile_bootstrap():
    x = np.random.default_rng(1).normal(size=30)
    lo, hi = bootstrap_ci(x, n_resamples=2000, seed=3)
    means = x[np.random.default_rng(3).integers(0, 30, (2000, 30))].mean(1)
    assert np.allclose([lo, hi], np.percentile(means, [2.5, 97.5]), atol=1e-12)


def test_bootstrap_contains_mean_shrinks_and_is_reproducible():
    rng = np.random.default_rng(0)
    small, large = rng.normal(2.0, 1.0, 20), rng.normal(2.0, 1.0, 2000)
    for x in (small, large):
        lo, hi = bootstrap_ci(x)
        assert lo < x.mean() < hi
    assert np.diff(bootstrap_ci(large)) < 0.3 * np.diff(bootstrap_ci(small))
    assert bootstrap_ci(small, seed=5) == bootstrap_ci(small, seed=5)
    assert bootstrap_ci(small, seed=5) != bootstrap_ci(small, seed=6)
    assert np.diff(bootstrap_ci(small, level=0.99)) > np.diff(bootstrap_ci(small, level=0.8))
    # any 1-D container works
    assert bootstrap_ci(list(small)) == bootstrap_ci(torch.tensor(small)) == bootstrap_ci(small)


def test_bootstrap_degenerate_and_errors():
    assert bootstrap_ci([3.5]) == (3.5, 3.5)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci(np.ones((2, 3)))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=95)


def test_paired_t_equals_scipy():
    rng = np.random.default_rng(2)
    a = rng.normal(0.5, 1.0, 5)
    b = a - 0.3 + rng.normal(0.0, 0.2, 5)
    t, p = paired_t(a, b)
    ref = scipy.stats.ttest_rel(a, b)
    assert t == pytest.approx(ref.statistic, rel=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-12)
    assert t > 0  # a is larger
    t2, p2 = paired_t(b, a)
    assert t2 == pytest.approx(-t) and p2 == pytest.approx(p)


def test_paired_t_degenerate_and_errors():
    t, p = paired_t([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert math.isnan(t) and math.isnan(p)
    assert paired_t([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == (math.inf, 0.0)
    with pytest.raises(ValueError, match="matched samples"):
        paired_t([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_t([1.0], [2.0])
    with pytest.raises(ValueError, match="empty"):
        paired_t([], [])
    with pytest.raises(ValueError, match="NaN"):
        paired_t([1.0, 2.0, float("nan")], [1.0, 2.0, 3.0])


def test_stars_thresholds():
    assert [stars(p) for p in (0.0, 5e-5, 1e-4, 0.005, 0.01, 0.04, 0.05, 0.5, 1.0)] == \
        ["***", "***", "**", "**", "*", "*", "", "", ""]
    assert stars(None) == "" and stars(float("nan")) == ""
    with pytest.raises(ValueError, match="outside"):
        stars(1.5)
    with pytest.raises(ValueError, match="outside"):
        stars(-0.1)


def test_mean_std_formatting():
    assert mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00"  # sample std (ddof=1)
    assert mean_std([1.0, 2.0], digits=3) == f"1.500 ± {np.std([1.0, 2.0], ddof=1):.3f}"
    assert mean_std([-1.25, -1.25]) == f"{MINUS}1.25 ± 0.00"
    assert mean_std([0.5]) == "0.50 ± n/a"
    assert mean_std([-0.001, 0.001]) == "0.00 ± 0.00"  # no "−0.00"
    with pytest.raises(ValueError, match="empty"):
        mean_std([])
    with pytest.raises(ValueError, match="NaN"):
        mean_std([1.0, float("inf")])


def test_fmt_p_never_rounds_a_small_p_to_zero():
    assert fmt_p(0.3512) == "0.35" and fmt_p(0.1) == "0.10" and fmt_p(1.0) == "1.00"
    assert fmt_p(0.0143) == "0.014" and fmt_p(0.0068) == "0.0068"  # two significant digits below 0.1
    assert fmt_p(0.00999) == "0.010" and fmt_p(0.001) == "0.0010" and fmt_p(0.0995) == "0.10"  # after rounding
    assert fmt_p(0.000999) == "0.0010"
    assert fmt_p(3.24e-4) == "3.2e-4" and fmt_p(1.06e-12) == "1.1e-12"  # e-notation below 0.001
    assert fmt_p(3.24e-4, digits=3) == "3.24e-4" and fmt_p(0.0143, digits=3) == "0.0143"
    assert fmt_p(0.0) == "0"
    assert fmt_p(None) == "n/a" and fmt_p(float("nan")) == "n/a"
    with pytest.raises(ValueError, match="outside"):
        fmt_p(1.5)


def test_fmt_p_mean_std():
    assert fmt_p_mean_std(3.2e-4, 1.1e-4) == "3.2e-4 ± 1.1e-4"
    assert fmt_p_mean_std(0.42, 0.05) == "0.42 ± 0.050"
    assert fmt_p_mean_std(0.02, 0.003) == "0.020 ± 0.0030"
    assert fmt_p_mean_std(5e-5, 0.0) == "5.0e-5 ± 0"
    assert fmt_p_mean_std(0.2, None) == "0.20 ± n/a"
    assert fmt_p_mean_std(0.2, float("nan")) == "0.20"
    with pytest.raises(ValueError, match="negative"):
        fmt_p_mean_std(0.2, -0.1)


def test_fmt_delta():
    assert fmt_delta(-3.2104, 0.003) == f"{MINUS}3.21**"
    assert fmt_delta(1.2, 0.2) == "+1.20"
    assert fmt_delta(0.5, 1e-6, digits=1) == "+0.5***"
    assert fmt_delta(-0.001, 0.04) == "0.00*"
    assert fmt_delta(2.0) == "+2.00"
    with pytest.raises(ValueError, match="finite"):
        fmt_delta(float("nan"), 0.1)


def test_compare_to_baseline_pairs_by_seed():
    import pandas as pd
    from scipy import stats as st
    from timerome.stats import compare_to_baseline

    base = pd.DataFrame({"seed": [0, 1, 2], "ForgetLP": [-10.0, -11.0, -12.0], "KS_p": [0.1, 0.2, 0.3]})
    edit = pd.DataFrame({"seed": [2, 0, 1], "ForgetLP": [-30.0, -20.0, -25.0], "KS_p": [0.5, 0.4, 0.6]})
    t = compare_to_baseline({"no_edit": base, "edit": edit}, ["ForgetLP", "KS_p"], "no_edit", paired=["ForgetLP"])
    row = t.set_index("method").loc["edit"]
    assert row.ForgetLP == -25.0 and row.ForgetLP_std == 5.0
    assert row.d_ForgetLP == -25.0 - (-11.0)
    assert row.p_ForgetLP == pytest.approx(st.ttest_rel([-20, -25, -30], [-10, -11, -12]).pvalue)
    assert "d_KS_p" not in t.columns
    assert t.set_index("method").loc["no_edit"].d_ForgetLP == 0.0
    with pytest.raises(ValueError, match="same seeds"):
        compare_to_baseline({"no_edit": base, "edit": edit.iloc[:2]}, ["ForgetLP"], "no_edit")
    with pytest.raises(ValueError, match="baseline 'x'"):
        compare_to_baseline({"no_edit": base}, ["ForgetLP"], "x")


# --- selectivity ---------------------------------------------------------------------------------
def _brute_selectivity(f, r, fb=None, rb=None, n=200, seed=3, level=0.95):
    """The definition, one resample at a time, with the same draws as `selectivity_ci`."""
    rng = np.random.default_rng(seed)
    fi, ri = rng.integers(0, len(f), (n, len(f))), rng.integers(0, len(r), (n, len(r)))
    vals = []
    for a, b in zip(fi, ri):
        v = np.mean(f[a]) / np.mean(r[b])
        if fb is not None:
            v -= np.mean(fb[a]) / np.mean(rb[b])
        vals.append(v)
    return np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])


def test_selectivity_ci_equals_the_brute_force_bootstrap():
    rng = np.random.default_rng(0)
    f, r = rng.normal(-3, 1, 30), rng.normal(-2, 0.5, 40)
    est, lo, hi = stats.selectivity_ci(f, r, n_resamples=200, seed=3)
    assert est == pytest.approx(f.mean() / r.mean(), rel=1e-15)
    np.testing.assert_allclose([lo, hi], _brute_selectivity(f, r), rtol=1e-12)
    assert lo < est < hi
    fb, rb = f * 0.5 + 0.1, r * 1.2
    gap = stats.selectivity_ci(f, r, versus=(fb, rb), n_resamples=200, seed=3)
    assert gap[0] == pytest.approx(f.mean() / r.mean() - fb.mean() / rb.mean(), rel=1e-12)
    np.testing.assert_allclose(gap[1:], _brute_selectivity(f, r, fb, rb), rtol=1e-12)
    assert stats.selectivity_ci(f, r, versus=(f, r)) == (0.0, 0.0, 0.0)  # an edit against itself
    assert stats.selectivity_ci(f, r, seed=1) == stats.selectivity_ci(f, r, seed=1)


def test_selectivity_ci_errors():
    with pytest.raises(ValueError, match="same facts"):
        stats.selectivity_ci([1.0, 2.0], [1.0], versus=([1.0], [1.0]))
    with pytest.raises(ValueError, match="d_retain"):
        stats.selectivity_ci([1.0], [])
    with pytest.raises(ValueError, match="level"):
        stats.selectivity_ci([1.0], [1.0], level=1.0)
