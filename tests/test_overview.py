"""Fig. 5's overview rules on hand-made tables: each dimension's two numbers and radii by hand, and
a missing table is a status naming it, never a number."""
import math

import pandas as pd
import pytest

from timerome import overview


def write_tables(d):
    pd.DataFrame({"method": ["no_edit", "TimeROME (α=2, q=4)"], "d_ForgetLP": [0.0, -6.0]}).to_csv(
        d / "table1_canonical_tofu.csv", index=False)
    pd.DataFrame({"method": ["NPO", "NPO", "SimNPO"], "lr": [1e-4, 3e-4, 1e-4], "d_forget_lp": [-1.5, -9.0, 0.5],
                  "collapsed": [False, True, False]}).to_csv(d / "fig5_converged_sweep.csv", index=False)
    pd.DataFrame({"method": ["timerome", "ga", "rmu", "memit"], "label": ["TimeROME", "GA", "RMU", "MEMIT"],
                  "kind": ["inference", "gradient", "gradient", "weight_edit"], "converged": [True, True, True, True],
                  "install_s": [0.05, 3.0, 4.0, 20.0], "d_forget_lp": [-6.0, -5.0, -5.5, -20.0]}).to_csv(
        d / "fig5_cost.csv", index=False)
    pd.DataFrame({"panel": ["site", "site", "site", "steps", "steps", "topq"],
                  "variant": ["resid", "attn", "mlp", "all_steps", "early_only", "q8"],
                  "d_forget_lp": [-6.0, -2.0, -1.0, -6.0, -3.0, -50.0]}).to_csv(d / "fig5_ablations.csv", index=False)
    pd.DataFrame({"attack": ["none", "paraphrase", "relearn"], "d_forget_lp": [-6.0, -5.4, -1.5]}).to_csv(
        d / "fig5_robustness.csv", index=False)
    pd.DataFrame({"config": ["no_edit"] * 4 + ["TimeROME (alpha=2, q=4)"] * 4,
                  "task": ["wf_mc", "wf_mc", "ra_gen", "tofu_forget01_mc"] * 2,
                  "metric": ["acc", "acc_norm", "exact_match", "acc"] * 2,
                  "value": [1.0, 1.0, 0.8, 1.0, 0.9, 0.2, 0.6, 0.1]}).to_csv(d / "fig5_utility.csv", index=False)


def test_each_dimension_by_hand(tmp_path):
    write_tables(tmp_path)
    df = overview.dimensions(tmp_path).set_index("dimension")
    assert list(df.index) == list(overview.DIMENSIONS) and set(df.status) == {"ok"}
    expect = {"converged baseline": (6.0, 1.5),    # the collapsed -9 run is not a converged one
              "cost": (1 / 0.05, 1 / 4.0),          # RMU: the converged gradient run with the largest forget drop
              "ablations": (6.0, 3.0),              # early_only is the strongest restricted design; topq is not one
              "robustness": (1.5 / 6.0, 1.0),       # relearn is the worst attack
              "utility": ((0.9 + 0.6) / 2, (1.0 + 0.8) / 2)}  # acc / exact_match; the forget task left out
    for dim, (ours, other) in expect.items():
        assert (df.loc[dim, "timerome"], df.loc[dim, "comparator"]) == pytest.approx((ours, other)), dim
        top = max(ours, other)
        assert (df.loc[dim, "r_timerome"], df.loc[dim, "r_comparator"]) == pytest.approx((ours / top, other / top))
    assert "RMU" in df.loc["cost", "comparator_name"] and "relearn" in df.loc["robustness", "comparator_name"]


def test_missing_tables_are_a_status_and_bad_tables_an_error(tmp_path):
    write_tables(tmp_path)
    (tmp_path / "fig5_robustness.csv").unlink()
    df = overview.dimensions(tmp_path).set_index("dimension")
    assert df.loc["robustness", "status"] == "not measured yet (fig5_robustness.csv not written)"
    assert math.isnan(df.loc["robustness", "timerome"]) and df.loc["cost", "status"] == "ok"
    rob = pd.DataFrame({"attack": ["none", "paraphrase", "relearn"], "d_forget_lp": [-6.0, -5.4, -1.5],
                        "informative": [True, True, False]})
    rob.to_csv(tmp_path / "fig5_robustness.csv", index=False)  # only attacks the unedited model still knows count
    assert overview.dimensions(tmp_path).set_index("dimension").loc["robustness", "timerome"] == pytest.approx(5.4 / 6)
    rob.assign(informative=[True, False, False]).to_csv(tmp_path / "fig5_robustness.csv", index=False)
    df = overview.dimensions(tmp_path).set_index("dimension")
    assert df.loc["robustness", "status"].startswith("not informative here") and math.isnan(df.loc["robustness", "r_timerome"])
    pd.DataFrame({"method": ["timerome"], "kind": ["inference"]}).to_csv(tmp_path / "fig5_cost.csv", index=False)
    with pytest.raises(ValueError, match=r"fig5_cost.csv: column\(s\) \['converged', 'install_s', 'd_forget_lp'\]"):
        overview.dimensions(tmp_path)
