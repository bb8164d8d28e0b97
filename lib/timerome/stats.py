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
* `stars`, `mean_std`, `fmt_delta` format numbers for tables (``−`` is U+2212 MINUS SIGN).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

MINUS = "\u2212"

__all__ = ["bootstrap_ci", "paired_t", "stars", "mean_std", "fmt_mean_std", "fmt_delta", "compare_to_baseline", "MINUS"]


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
