"""Small statistics helpers for the result tables: bootstrap CIs, paired tests, formatting.

Every function takes a 1-D sequence of finite numbers (list, NumPy array, pandas Series, or a
torch tensor) and raises ``ValueError`` with a clear message on empty input, NaN / infinite
values, more than one dimension, or (for `paired_t`) mismatched lengths.

* `bootstrap_ci` is ``scipy.stats.bootstrap(..., method="percentile")`` on the mean with a
  seeded ``numpy.random.Generator``: the percentile bootstrap (resample with replacement, take
  the ``(1-level)/2`` and ``(1+level)/2`` quantiles of the resampled means). SciPy's result is
  that textbook definition (it draws resample indices with ``rng.integers`` and takes
  percentiles of the vectorised statistic), so no NumPy re-implementation is kept; the same
  ``seed`` gives bitwise the same interval.
* `paired_t` is ``scipy.stats.ttest_rel`` (two-tailed Student t on the per-pair differences),
  for runs matched by seed.
* `stars`, `mean_std`, `fmt_delta` format numbers for tables (``−`` is U+2212 MINUS SIGN);
  `fmt_p`, `fmt_p_mean_std` format p-values, switching to ``3.2e-4`` style below 0.01 so that a
  small p never prints as ``0.00``.
* `selectivity_ci` is ΔForget/ΔRetain (the ratio of the mean per-fact changes) with a percentile
  bootstrap over facts, and the paired gap between two edits scored on the same facts.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

MINUS = "\u2212"

__all__ = ["bootstrap_ci", "paired_t", "stars", "mean_std", "fmt_mean_std", "fmt_delta", "fmt_p", "fmt_p_mean_std",
           "compare_to_baseline", "selectivity_ci", "MINUS"]


def _as_1d(x, name: str = "x", min_len: int = 1) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a sequence of numbers ({e})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size < min_len:
        what = "empty" if arr.size == 0 else f"of length {arr.size}"
        raise ValueError(f"{name} is {what}; need at least {min_len} value{'s' * (min_len > 1)}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} NaN/infinite value(s) (first at index {int(np.argmax(bad))})")
    return arr


def bootstrap_ci(x, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(lo, hi)`` of the mean of ``x``.

    ``scipy.stats.bootstrap`` with ``method="percentile"``, ``n_resamples`` resamples and a
    ``numpy.random.default_rng(seed)`` generator: reproducible for a fixed seed. A single value
    (or all-equal values) has a degenerate bootstrap distribution and gives ``(m, m)``.
    """
    arr = _as_1d(x)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must lie strictly between 0 and 1")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples={n_resamples} must be positive")
    if arr.size == 1 or np.all(arr == arr[0]):
        m = float(arr.mean())
        return m, m
    kw = dict(n_resamples=int(n_resamples), confidence_level=level, method="percentile", vectorized=True)
    try:  # SciPy >= 1.15 spells the generator `rng`; older releases `random_state`
        res = _st.bootstrap((arr,), np.mean, rng=np.random.default_rng(seed), **kw)
    except TypeError:
        res = _st.bootstrap((arr,), np.mean, random_state=np.random.default_rng(seed), **kw)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_t(a, b) -> tuple[float, float]:
    """Two-tailed paired Student t-test of ``a`` against ``b`` (matched seeds): ``(t, p)``.

    ``scipy.stats.ttest_rel(a, b)``; ``t > 0`` means ``a`` is larger on average. Needs at least
    two pairs. If every difference is identical SciPy's answer stands: ``(nan, nan)`` when all
    differences are zero, ``(±inf, 0.0)`` when they are equal and non-zero.
    """
    a, b = _as_1d(a, "a", 2), _as_1d(b, "b", 2)
    if a.shape != b.shape:
        raise ValueError(f"paired_t needs matched samples; got lengths {a.size} and {b.size}")
    d = a - b
    if np.all(d == d[0]):  # SciPy warns on zero variance; decide here, without the warning
        if d[0] == 0:
            return math.nan, math.nan
        return math.copysign(math.inf, d[0]), 0.0
    res = _st.ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue)


def stars(p) -> str:
    """Significance stars: ``***`` p < 1e-4, ``**`` p < 0.01, ``*`` p < 0.05, else ``""``.

    ``None`` or NaN (an undefined test) gives ``""``; a p outside [0, 1] is an error.
    """
    if p is None:
        return ""
    p = float(p)
    if math.isnan(p):
        return ""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p-value {p} is outside [0, 1]")
    return "***" if p < 1e-4 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def _signed(v: float, digits: int, plus: bool) -> str:
    s = f"{abs(v):.{digits}f}"
    if float(s) == 0.0:  # never print "−0.00"
        return s
    return (MINUS if v < 0 else "+" if plus else "") + s


def mean_std(x, digits: int = 2) -> str:
    """``"m ± s"``: mean and sample standard deviation (ddof=1), ``digits`` decimals.

    The sample std of a single value is undefined, so one value gives ``"m ± n/a"`` (never a
    misleading ``± 0.00``). Negative means use the U+2212 minus sign.
    """
    arr = _as_1d(x)
    return fmt_mean_std(float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else None, digits)


def fmt_mean_std(mean, std, digits: int = 2) -> str:
    """``"m ± s"`` from an already computed mean and std (a table's two columns); ``std=None``
    (one sample) gives ``"m ± n/a"``, a NaN std (no spread reported) gives ``"m"`` alone."""
    m = _signed(float(mean), digits, plus=False)
    if std is None:
        return f"{m} ± n/a"
    if math.isnan(float(std)):
        return m
    return f"{m} ± {float(std):.{digits}f}"


def fmt_delta(delta, p=None, digits: int = 2) -> str:
    """A signed difference with stars: ``fmt_delta(-3.2104, 0.003) == "−3.21**"``.

    Positive values carry ``+``, negative ones U+2212 ``−``; a value that rounds to zero has no
    sign. ``p=None`` (no test) gives no stars.
    """
    delta = float(delta)
    if not math.isfinite(delta):
        raise ValueError(f"delta={delta} is not finite")
    return _signed(delta, digits, plus=True) + stars(p)


def _small(x: float, digits: int) -> str:
    """``digits`` decimals from 0.1 up, ``digits`` significant digits from 0.001 up (``0.014``),
    below that e-notation with a short exponent (``3.2e-4``); exactly 0 is ``"0"``."""
    if x == 0.0:
        return "0"
    mant, exp = f"{x:.{max(digits - 1, 0)}e}".split("e")  # rounded first: 0.0995 -> 0.10, 0.00999 -> 0.010
    r = abs(float(f"{mant}e{exp}"))
    if r >= 0.1:
        return f"{x:.{digits}f}"
    if r >= 1e-3:
        return f"{x:.{max(digits - 1, 0) - int(exp)}f}"
    return f"{mant}e{int(exp)}"


def fmt_p(p, digits: int = 2) -> str:
    """A p-value for a table: ``0.35``, ``0.014``, ``3.2e-4`` (never ``0.00`` for a small p);
    None or NaN gives ``"n/a"``; a p outside [0, 1] is an error."""
    if p is None or math.isnan(float(p)):
        return "n/a"
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p-value {p} is outside [0, 1]")
    return _small(p, digits)


def fmt_p_mean_std(mean, std, digits: int = 2) -> str:
    """``"m ± s"`` of p-values over seeds, both in the `fmt_p` style (``"3.2e-4 ± 1.1e-4"``);
    ``std=None`` (one sample) gives ``"m ± n/a"``, a NaN std gives ``"m"`` alone."""
    m = fmt_p(mean, digits)
    if std is None:
        return f"{m} ± n/a"
    if math.isnan(float(std)):
        return m
    if not float(std) >= 0:
        raise ValueError(f"std {std} is negative")
    return f"{m} ± {_small(float(std), digits)}"


def compare_to_baseline(per_seed: dict, columns, baseline: str, paired=None):
    """The rows of a results table: per method, mean and std over seeds of each column, and for
    the ``paired`` columns (default: all) the difference to ``baseline`` with its paired t-test.

    ``per_seed``: ``{method: frame with a "seed" column and the metric columns}`` (one row per
    seed, e.g. `metrics.summarize`); every method must have the baseline's seeds, since the test
    pairs runs by seed. Returns one row per method with columns ``method``, ``n_seeds`` and, per
    metric ``c``: ``c``, ``c_std``, and (paired) ``d_c``, ``p_c`` (all numbers: `report.save_table`
    renders ``m ± s`` and the stars).
    """
    import pandas as pd

    if baseline not in per_seed:
        raise ValueError(f"compare_to_baseline: baseline {baseline!r} is not among the methods {sorted(per_seed)}")
    columns = list(columns)
    paired = columns if paired is None else list(paired)
    base = per_seed[baseline].set_index("seed").sort_index()
    rows = []
    for method, frame in per_seed.items():
        missing = [c for c in ["seed", *columns] if c not in frame.columns]
        if missing:
            raise ValueError(f"compare_to_baseline: method {method!r} lacks column(s) {missing}")
        f = frame.set_index("seed").sort_index()
        if list(f.index) != list(base.index):
            raise ValueError(f"compare_to_baseline: method {method!r} has seeds {list(f.index)}, the baseline "
                             f"{list(base.index)}; paired tests need the same seeds")
        row = {"method": method, "n_seeds": len(f)}
        for c in columns:
            v = f[c].to_numpy(dtype=float)
            row[c] = float(v.mean())
            row[f"{c}_std"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
            if c in paired:
                if method == baseline or np.isnan(v).any() or base[c].isna().any():
                    row[f"d_{c}"], row[f"p_{c}"] = (0.0 if method == baseline else math.nan), math.nan
                else:
                    row[f"d_{c}"] = float((v - base[c].to_numpy(dtype=float)).mean())
                    row[f"p_{c}"] = paired_t(v, base[c].to_numpy(dtype=float))[1] if len(v) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def selectivity_ci(d_forget, d_retain, *, versus=None, n_resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, lo, hi) of the selectivity mean(d_forget) / mean(d_retain), the per-fact changes of
    an edit vs no_edit on the forget and on the retain facts (> 1: forgetting costs the retained
    answers less than it takes from the forgotten ones).

    Percentile bootstrap over facts: each resample draws forget facts and retain facts with
    replacement, independently (they are different facts). ``versus=(d_forget_b, d_retain_b)``:
    instead the gap selectivity(a) - selectivity(b) of two edits scored on the same facts, each
    resample drawing the same facts for both (paired). A resample whose retain mean is 0 has no
    ratio and is left out of the quantiles.
    """
    f, r = _as_1d(d_forget, "d_forget"), _as_1d(d_retain, "d_retain")
    if versus is not None:
        fb, rb = _as_1d(versus[0], "versus forget"), _as_1d(versus[1], "versus retain")
        if fb.shape != f.shape or rb.shape != r.shape:
            raise ValueError(f"versus: {fb.size} forget / {rb.size} retain changes, but {f.size} / {r.size}: "
                             "a paired gap needs the same facts")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must lie strictly between 0 and 1")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples={n_resamples} must be positive")
    rng = np.random.default_rng(seed)
    fi = rng.integers(0, f.size, (int(n_resamples), f.size))
    ri = rng.integers(0, r.size, (int(n_resamples), r.size))

    def ratio(fv, rv, fi=None, ri=None):
        num = fv.mean() if fi is None else fv[fi].mean(1)
        den = rv.mean() if ri is None else rv[ri].mean(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)

    def stat(fi=None, ri=None):
        out = ratio(f, r, fi, ri)
        return out if versus is None else out - ratio(fb, rb, fi, ri)

    est, boot = float(stat()), stat(fi, ri)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return est, math.nan, math.nan
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return est, float(lo), float(hi)
