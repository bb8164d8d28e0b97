"""The cost measurement (Fig. 5): peak memory, the ratios the ledger reads, one per-process run."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from timerome.baselines import builders, cost

REPO = Path(__file__).resolve().parents[1]


def test_peak_memory_sees_a_transient_allocation():
    with cost.PeakMemory("cpu", interval=0.0005) as mem:
        x = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
        x += 1
        del x
    assert 60 * 2 ** 20 <= mem.extra <= 200 * 2 ** 20
    with cost.PeakMemory("cpu") as idle:
        pass
    assert idle.extra < 16 * 2 ** 20


def _costs(**rows):
    return pd.DataFrame([dict(method=m, label=m.upper(), kind=cost.KINDS[m], **r) for m, r in rows.items()])


def test_ratios_use_the_strongest_converged_gradient_baseline():
    t = _costs(timerome=dict(converged=True, install_s=0.5, d_forget_lp=-9.0, extra_mem_gb=0.001),
               npo=dict(converged=True, install_s=20.0, d_forget_lp=-3.0, extra_mem_gb=0.5),
               gd=dict(converged=True, install_s=10.0, d_forget_lp=-1.0, extra_mem_gb=0.25),
               ga=dict(converged=False, install_s=40.0, d_forget_lp=-900.0, extra_mem_gb=1.0))
    r = cost.ratios(t)
    assert r["baseline"] == "NPO"  # the collapsed GA is not a candidate; NPO forgets more than GD
    assert r["speedup"] == pytest.approx(40.0) and r["memory_share"] == pytest.approx(0.002)
    assert "40x faster" in r["sentence"]
    with pytest.raises(ValueError, match="converged gradient row"):
        cost.ratios(t[t.method.isin(["timerome", "ga"])])


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="method='sgd'"):
        cost.measure("sgd")
    with pytest.raises(ValueError, match="method='sgd'"):
        builders.build("sgd", builders.Context(None, []))


def test_timerome_cost_in_its_own_process():
    out = subprocess.run([sys.executable, "-m", "timerome.baselines.cost", "timerome", "--hparams-file",
                          str(REPO / "tables" / "timerome_hparams.json"), "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["method"] == "timerome" and row["kind"] == "inference" and row["converged"]
    assert row["install_s"] > 0 and row["extra_mem_gb"] >= 0
    assert row["d_forget_lp"] < 0  # the edit lowers ForgetLP


class _Scaled:
    """A stand-in steering object: installing it adds c to every logit's log-prob via a constant shift."""

    def __init__(self, c=0.0):
        self.c = c

    def with_coef(self, c):
        return _Scaled(c)


def test_choose_coefficient_applies_the_lambda_rule(monkeypatch):
    from timerome import tuning

    effect = {0.0: (0.0, 0.0), 1.0: (-2.0, -1.0), 2.0: (-6.0, -4.0), 3.0: (-9.0, -7.0)}  # coef -> (d_forget, d_retain)

    def fake_lp(backbone, f, r, edit=None, n_mc=4):
        c = 0.0 if edit is None else edit.__defaults__[0].c
        df, dr = effect[c]
        return pd.Series({"forget_val": -10.0 + df, "retain_val": -5.0 + dr})

    monkeypatch.setattr(tuning, "validation_lp", fake_lp)
    coef, sweep = builders.choose_coefficient(None, lambda facts: _Scaled(), [], [], [1.0, 2.0, 3.0], 5.0)
    assert coef == 2.0  # the largest forget drop whose retain drop is within 5 nats
    assert list(sweep.coef) == [1.0, 2.0, 3.0] and list(sweep.d_retain_val) == [-1.0, -4.0, -7.0]
