"""Exports: CSV at full precision and the booktabs LaTeX view from one frame; byte-identical
re-writes; atomic writes."""
import math
import os

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from timerome import plots, report


@pytest.fixture
def table():
    return pd.DataFrame({
        "method": ["no_edit", "timerome", "R&D_x"],
        "forget_lp": [-35.70123456789012, -118.94, -40.0], "forget_lp_std": [3.9149, 7.7, math.nan],
        "d_forget_lp": [math.nan, -83.2412, 0.004], "p_forget_lp": [math.nan, 3e-5, 0.5],
        "ks_p": [0.514, 0.153, 0.5], "n": [5, 5, 1],
    })


def test_csv_is_the_whole_frame_at_six_significant_digits(table, tmp_path):
    csv, tex = report.save_table(table, "t1", tmp_path, caption="c", label="tab:t1")
    back = pd.read_csv(csv)
    assert list(back.columns) == list(table.columns)
    pd.testing.assert_frame_equal(back, report.rounded_frame(table), check_exact=True)
    assert "-35.7012," in csv.read_text() and back["n"].tolist() == [5, 5, 1]  # ints as they are
    assert "\r" not in csv.read_text()


def test_latex_view_has_booktabs_pm_stars_caption_label(table, tmp_path):
    _, tex = report.save_table(table, "t1", tmp_path, caption="Table I: 50% of facts", label="tab:t1",
                               pm={"forget_lp": "forget_lp_std"}, deltas={"d_forget_lp": "p_forget_lp"},
                               headers={"d_forget_lp": r"$\Delta$ fLP"})
    text = tex.read_text()
    for part in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{Table I: 50% of facts}", r"\label{tab:t1}"):
        assert part in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    assert header == r"method & forget\_lp & $\Delta$ fLP & ks\_p & n \\"  # std and p columns folded in
    assert r"no\_edit & $-35.70 \pm 3.91$ & -- & 0.514 & 5 \\" in lines
    assert r"timerome & $-118.94 \pm 7.70$ & $-83.24^{***}$ & 0.153 & 5 \\" in lines
    assert r"R\&D\_x & $-40.00$ & $0.00$ & 0.500 & 1 \\" in lines  # no std: mean alone; rounds to 0: no sign
    assert r"\begin{tabular}{lrrrr}" in text  # numbers right-aligned


def test_stars_follow_the_stats_thresholds(tmp_path):
    df = pd.DataFrame({"d": [-1.0, -1.0, -1.0, -1.0], "p": [0.2, 0.04, 0.009, 5e-5]})
    text = report.latex_table(df, caption="c", label="l", deltas={"d": "p"})
    assert [s in text for s in ("$-1.00$", "$-1.00^{*}$", "$-1.00^{**}$", "$-1.00^{***}$")] == [True] * 4


def test_unknown_columns_are_named(table):
    with pytest.raises(KeyError, match=r"pm=\{'forget_lp': 'forget_std'\}: no column\(s\) \['forget_std'\]"):
        report.latex_table(table, caption="c", label="l", pm={"forget_lp": "forget_std"})
    with pytest.raises(KeyError, match="no column 'ForgetLP'"):
        report.latex_table(table, caption="c", label="l", headers={"ForgetLP": "x"})


def test_rewrites_are_byte_identical(table, tmp_path):
    kw = dict(caption="c", label="l", pm={"forget_lp": "forget_lp_std"}, deltas={"d_forget_lp": "p_forget_lp"})
    first = [p.read_bytes() for p in report.save_table(table, "t", tmp_path, **kw)]
    assert [p.read_bytes() for p in report.save_table(table.copy(), "t", tmp_path, **kw)] == first
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    figs = [p.read_bytes() for p in report.save_figure(fig, "f", tmp_path)]
    assert [p.read_bytes() for p in report.save_figure(fig, "f", tmp_path)] == figs
    plt.close(fig)


def test_a_crash_while_writing_keeps_the_previous_table(table, tmp_path, monkeypatch):
    csv, tex = report.save_table(table, "t", tmp_path, caption="c", label="l")
    before = csv.read_bytes()

    def crash(self, path, **kw):
        open(path, "w").write("method,forget")  # half a file, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(KeyboardInterrupt):
        report.save_table(table.iloc[:1], "t", tmp_path, caption="c", label="l")
    assert csv.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.tex"]


def test_place_labels_keeps_labels_apart_and_inside_the_axes():
    fig, ax = plt.subplots(figsize=(3, 2))
    x = [1.0, 1.02, 1.04, 1.06, 5.0, 9.0]  # four nearly coincident points: naive labels would pile up
    y = [1.0, 1.01, 0.99, 1.0, 5.0, 9.0]
    ax.plot(x, y, "o")
    ax.set_xlim(0, 10), ax.set_ylim(0, 10)
    anns = plots.place_labels(ax, x, y, ["0.25", "0.5", "1", "1.5", "2", "3"])
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in anns]
    frame = ax.get_window_extent(renderer)
    for i, a in enumerate(boxes):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
        for b in boxes[i + 1:]:
            assert plots._overlap(a, b) == 0.0
    assert [a.get_text() for a in anns] == ["0.25", "0.5", "1", "1.5", "2", "3"]
    plt.close(fig)


def test_signed_log_axis_labels_the_signed_values():
    fig, ax = plt.subplots()
    ax.plot([5, 50, 150], [4, 10, 170], "o")  # -ForgetLP, -RetainLP
    plots.signed_log_axis(ax, "x")
    plots.signed_log_axis(ax, "y", invert=True)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.yaxis_inverted() and not ax.xaxis_inverted()
    fmt = ax.xaxis.get_major_formatter()
    assert fmt(10.0) == "\u221210" and fmt(100.0) == "\u2212100"
    plt.close(fig)


def test_float_error_below_six_digits_gives_byte_identical_exports(tmp_path):
    """Issue 15 item 3: lambda 3588.5657041942004 vs 3588.565742548002 on two machines."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, lam in ((a, 3588.5657041942004), (b, 3588.565742548002)):
        report.save_table(pd.DataFrame({"lam": [lam], "x": [1e-7 * lam]}), "t", folder, caption="c", label="l")
        report.save_json({"lam": lam, "layer": 3, "nested": [lam, {"v": lam}]}, folder / "c.json")
    assert (a / "t.csv").read_bytes() == (b / "t.csv").read_bytes()
    assert (a / "c.json").read_bytes() == (b / "c.json").read_bytes()
    assert '"lam": 3588.57' in (a / "c.json").read_text() and '"layer": 3' in (a / "c.json").read_text()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_respects_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = report.atomic_write(tmp_path / "t.csv", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_temporaries_are_hidden_and_recognised(tmp_path):
    seen = []
    report.atomic_write(tmp_path / "t.csv", lambda tmp: seen.append(tmp) or open(tmp, "w").write("x"))
    assert report.is_temporary(seen[0]) and not report.is_temporary(tmp_path / "t.csv")


def test_export_mismatches_compares_numbers_with_a_tolerance():
    csv = "method,x,n\na,1.000000,3\nb,2.5,4\n"
    assert report.export_mismatches(csv, csv, "csv") == []
    assert report.export_mismatches("method,x,n\na,1.0000099,3\nb,2.5,4\n", csv, "csv") == []  # round-off
    assert report.export_mismatches("method,x,n\na,1.01,3\nb,2.5,4\n", csv, "csv") == ["column x row 0: 1.01 != 1.0"]
    assert report.export_mismatches("method,x,n\nc,1.0,3\nb,2.5,4\n", csv, "csv") == ["column method: text changed"]
    assert "shape" in report.export_mismatches("method,x\na,1.0\n", csv, "csv")[0]
    flags = "method,collapsed\na,True\nb,False\n"  # a flag column is compared exactly, never subtracted
    assert report.export_mismatches(flags, flags, "csv") == []
    assert report.export_mismatches("method,collapsed\na,True\nb,True\n", flags, "csv") == ["column collapsed: text changed"]
    js = '{"layer": 0, "score": 27.654, "facts": ["a"]}'
    assert report.export_mismatches('{"layer": 0, "score": 27.65401, "facts": ["a"]}', js, "json") == []
    assert report.export_mismatches('{"layer": 1, "score": 27.654, "facts": ["a"]}', js, "json") == ["$.layer: 1 != 0"]
