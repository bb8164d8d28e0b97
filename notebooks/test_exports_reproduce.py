"""The exported tables the notebooks just rewrote agree with the committed ones within float error.

pytest collects this file after ``notebooks/*.ipynb`` (names sort digits first), so under the
README's test command it runs once nbval has re-executed every notebook, which re-exports
``tables/``. Exact string checks of printed tables would fail on a last-digit flip whenever a
value's float32 round-off (model forwards differ with batch shape and thread count) straddles a
rounding boundary; here every number is compared with a tolerance far above that error and far
below any effect a table reports. Wall-clock tables (``*_times.*``) and the claims ledger (not
rebuilt by the tests) are left out.
"""
import json
import math
import subprocess
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-4, 1e-5


def _committed(rel):
    try:
        return subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no committed version of {rel} to compare with ({e})")


def _tables():
    out = subprocess.run(["git", "ls-files", "tables"], cwd=REPO, capture_output=True, text=True)
    names = out.stdout.split() if out.returncode == 0 else []
    return [n for n in names if n.endswith((".csv", ".json")) and "_times." not in n
            and not Path(n).name.startswith("claims.")]


def _close(a, b, where):
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL) or (math.isnan(a) and math.isnan(b)), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("rel", _tables())
def test_exported_table_reproduces(rel):
    now, then = (REPO / rel).read_text(), _committed(rel)
    if rel.endswith(".json"):
        _close(json.loads(now), json.loads(then), rel)
        return
    a, b = pd.read_csv(StringIO(now)), pd.read_csv(StringIO(then))
    assert list(a.columns) == list(b.columns) and a.shape == b.shape, f"{rel}: columns or shape changed"
    for c in a.columns:
        x, y = a[c], b[c]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            bad = ~((x - y).abs() <= ATOL + RTOL * y.abs()) & ~(x.isna() & y.isna())
            assert not bad.any(), f"{rel} column {c}: rows {list(a.index[bad])[:5]} differ: {x[bad].tolist()[:5]} vs {y[bad].tolist()[:5]}"
        else:
            assert x.fillna("").astype(str).tolist() == y.fillna("").astype(str).tolist(), f"{rel} column {c} changed"
