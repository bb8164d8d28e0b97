"""Table II's assembly (`cross_backbone.table`) on hand-made runs, and the column records."""
import math

import pandas as pd
import pytest

from timerome import cross_backbone as CB


def _seeds(forget, retain, ks):
    return pd.DataFrame({"seed": [0, 1, 2], "ForgetLP": forget, "RetainLP": retain, "KS_p": ks})


def _run(name, per_seed, status=None, layer=1):
    return CB.BackboneRun(CB.Column(name, name + "-retain", name.upper()), "tiny", 4, layer, None, per_seed,
                          status or {}, None, {})


def test_table_deltas_status_rows_and_sub_noise_flags():
    a = _run("a", {"no_edit": _seeds([-4, -5, -6], [-2, -2, -2], [0.5] * 3),
                   "AlphaEdit": _seeds([-6, -7, -8], [-2, -3, -4], [0.2] * 3),
                   "TimeROME (α=2, q=4)": _seeds([-9, -10, -11], [-3, -3, -3], [0.1] * 3)})
    b = _run("b", {"no_edit": _seeds([-1, -1, -1], [-1, -1, -1], [0.3] * 3),
                   "TimeROME (α=2, q=4)": _seeds([-2, -3, -4], [-1, -2, -1], [0.2] * 3)},
             status={"AlphaEdit": "not applicable: no single down-projection"}, layer=2)
    t = CB.table([a, b], ["no_edit", "AlphaEdit", "TimeROME (α=2, q=4)"])
    assert list(t.method) == ["no_edit", "AlphaEdit", "TimeROME (α=2, q=4)"] * 2
    row = t[(t.backbone == "a") & (t.method == "TimeROME (α=2, q=4)")].iloc[0]
    assert row.d_forget_lp == pytest.approx(-5.0) and row.d_retain_lp == pytest.approx(-1.0)
    assert row.forget_lp_std == pytest.approx(1.0) and row.depth == 0.25
    na = t[(t.backbone == "b") & (t.method == "AlphaEdit")].iloc[0]
    assert na.status.startswith("not applicable") and math.isnan(na.forget_lp)
    # AlphaEdit is below no_edit on a, but has no number on b: not "on every backbone"
    assert t.set_index(["backbone", "method"]).ks_below_no_edit[("a", "AlphaEdit")]
    flags = t.groupby("method").ks_below_every_backbone.first()
    assert flags.to_dict() == {"AlphaEdit": False, "TimeROME (α=2, q=4)": True, "no_edit": False}


def test_a_missing_row_is_an_error_naming_it():
    a = _run("a", {"no_edit": _seeds([-4, -5, -6], [-2, -2, -2], [0.5] * 3)})
    with pytest.raises(ValueError, match="backbone 'a' has no row 'SimNPO'"):
        CB.table([a], ["no_edit", "SimNPO"])


def test_column_records_are_checked():
    c = CB.Column.parse({"name": "x", "retain": "x-r", "paper": "X", "load_kwargs": {"device": "cuda"}})
    assert c.load_kwargs == {"device": "cuda"} and c.finetune is None
    with pytest.raises(ValueError, match=r"backbones\[1\]: entry 'x': unknown key\(s\) \['retian'\]; missing \['retain'\]"):
        CB.Column.parse({"name": "x", "retian": "x-r", "paper": "X"}, where="backbones[1]")
