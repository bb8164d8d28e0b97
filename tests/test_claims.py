"""The claims ledger on fixture tables: the paper's own numbers must make the shipped spec hold,
contradicting numbers must not, and missing tables/rows/columns read "not measured yet"; raw nats
defer to their scale-free twin off the paper's backbone, and a saturated column is not informative."""
import json
import math

import nbformat
import pandas as pd
import pytest

from timerome import claims

NAN = math.nan


def paper_tables(d):
    """The paper's numbers, in the column layout the notebooks export (params/claims.yaml)."""
    t1 = pd.DataFrame([  # Table I
        dict(method="no_edit", alpha=NAN, q=NAN, forget_lp=-35.70, retain_lp=-34.76, ks_p=0.514, p_forget_lp=NAN),
        dict(method="random_layer", alpha=2, q=4, forget_lp=-35.55, retain_lp=-34.71, ks_p=0.513, p_forget_lp=0.6),
        dict(method="AlphaEdit", alpha=NAN, q=NAN, forget_lp=-47.62, retain_lp=-39.83, ks_p=0.551, p_forget_lp=NAN),
        dict(method="MEMIT", alpha=NAN, q=NAN, forget_lp=-39.05, retain_lp=-35.40, ks_p=0.498, p_forget_lp=NAN),
        dict(method="timerome", alpha=0.25, q=2, forget_lp=-36.12, retain_lp=-35.09, ks_p=0.534, p_forget_lp=0.5),
        dict(method="timerome", alpha=0.5, q=2, forget_lp=-37.55, retain_lp=-36.33, ks_p=0.578, p_forget_lp=0.1),
        dict(method="timerome", alpha=1.0, q=2, forget_lp=-42.04, retain_lp=-40.27, ks_p=0.562, p_forget_lp=0.01),
        dict(method="timerome", alpha=2.0, q=4, forget_lp=-118.94, retain_lp=-89.08, ks_p=0.153, p_forget_lp=3e-5),
    ])
    t1["d_forget_lp"] = [NAN, 0.15, -11.9, -3.3, -0.42, -1.85, -6.34, -83.24]  # as the paper's text gives them
    t1["d_retain_lp"] = (t1.retain_lp - t1.retain_lp[0]).round(2)  # -54.32 at α=2, q=4
    t1.to_csv(d / "table1_canonical_tofu.csv", index=False)
    pd.DataFrame({  # Table III (install time = capture + solve)
        "n_facts": [1, 10, 40, 100, 200, 400],
        "flp_a05": [-6.26, -25.58, -41.71, -36.43, -43.55, -43.55],
        "flp_a1": [-6.26, -31.11, -46.63, -41.64, -60.16, -62.54],
        "flp_no_edit": [-35.70, -35.70, -35.70, -34.76, -41.26, -41.26]},
    ).to_csv(d / "table3_scalability.csv", index=False)
    pd.DataFrame({"n_facts": [1, 10, 40, 100, 200, 400],  # Table III's wall-clock columns
                  "capture_s": [5.4, 20.0, 22.13, 28.0, 35.0, 50.0], "solve_s": [1.0, 3.7, 3.87, 4.6, 5.0, 6.1]},
                 ).to_csv(d / "table3_install_times.csv", index=False)
    k = [1, 5, 10, 20, 30, 40, 50]
    pd.DataFrame({  # Table V; its caption's baseline (no_edit) is the row before the first insert
        "method": ["no_edit"] + ["TimeROME"] * 14, "alpha": [NAN] + [1.0] * 7 + [0.5] * 7, "n_inserted": [0] + k * 2,
        "forget_lp": [-38.5, -10.13, -7.78, -33.83, -43.63, -43.80, -45.45, -45.45,
                      -8.17, -5.50, -28.67, -37.77, -38.36, -40.69, -40.69],
        "retain_lp": [-35.1, -39.29, -42.88, -43.67, -41.52, -41.07, -41.06, -41.06,
                      -35.87, -36.29, -36.34, -36.60, -36.25, -36.63, -36.63],
        "real_auth": [-12.6, -14.52, -15.77, -16.65, -16.37, -16.44, -15.97, -15.97,
                      -12.29, -12.11, -12.38, -13.34, -13.67, -13.64, -13.64]},
    ).to_csv(d / "table5_streaming.csv", index=False)
    rows = [dict(module=m, layer=layer, step=step,
                 mean_abs_tie=(3.0 if m == "resid" else 1.0) * math.exp(-((layer - 19) / 6) ** 2 - (step - 1.5) ** 2))
            for m in ("resid", "attn", "mlp") for layer in range(32) for step in range(8)]
    pd.DataFrame(rows).to_csv(d / "tie_layer_ranking.csv", index=False)
    table4(d)


def table4(d, unavailable=()):
    """Table IV in 05_transfer's layout (one row per bench, task and method); §VI's RWKU drops (~25
    nats each) as the Δ columns. Tasks in ``unavailable`` carry the status and no number."""
    ours = dict(method="timerome", alpha=2.0, q=4)
    rows = [dict(bench="muse_books", task="knowmem", method="no_edit", lp=-14.06),
            dict(bench="muse_books", task="knowmem", method="timerome", alpha=1.0, q=2, lp=-16.46),
            dict(bench="muse_books", task="knowmem", **ours, lp=-23.68),
            dict(bench="muse_books", task="verbmem", method="no_edit", lp=-242.86),
            dict(bench="muse_books", task="verbmem", **ours, lp=-372.26),
            dict(bench="muse_news", task="knowmem", method="no_edit", lp=-17.35),
            dict(bench="muse_news", task="knowmem", **ours, lp=-25.36),
            dict(bench="muse_news", task="verbmem", method="no_edit", lp=-190.07),
            dict(bench="muse_news", task="verbmem", **ours, lp=-311.65),
            dict(bench="rwku", task="level1", method="no_edit", lp=-30.0, d_lp=0.0, d_control_lp=0.0),  # lp: a fixture
            dict(bench="rwku", task="level1", **ours, lp=-55.0, d_lp=-25.0, d_control_lp=-25.0),  # value, not the paper's
            dict(bench="whp", task="completion", method="no_edit", lp=-2.18),
            dict(bench="whp", task="completion", **ours, lp=-11.32),
            dict(bench="wmdp_bio", task="mcq", method="no_edit", acc=0.65),
            dict(bench="wmdp_bio", task="mcq", method="adaptive_rmu", acc=0.41),
            dict(bench="wmdp_bio", task="mcq", **ours, acc=0.36)]
    t4 = pd.DataFrame(rows, columns=["bench", "task", "method", "alpha", "q", "status", "lp", "d_lp", "d_control_lp", "acc"])
    t4["status"] = "ok"
    gone = t4.bench.str.cat(t4.task, sep="/").isin(unavailable)
    t4.loc[gone, "status"] = "data not available"
    t4.loc[gone, ["lp", "d_lp", "d_control_lp", "acc"]] = NAN
    t4.to_csv(d / "table4_transfer.csv", index=False)


@pytest.fixture
def spec_entries():
    return {e["id"]: e for e in claims.load_spec()}


def test_shipped_spec_is_valid_and_covers_the_paper(spec_entries):
    ids = set(spec_entries)
    for needed in ("t1_dflp", "t5_retain_flat", "t3_install_sublinear", "tie_resid_dominates", "f5_resid_vs_attn_mlp",
                   "f5_all_steps_vs_one", "f5_speedup", "f5_zero_memory"):
        assert needed in ids
    assert spec_entries["t1_dflp"]["paper"] == -83.24


def test_nothing_measured_is_never_an_error(tmp_path):
    df = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path)
    assert set(df.verdict) == {claims.NOT_MEASURED}
    assert df.set_index("id").loc["t1_dflp", "note"] == "table1_canonical_tofu.csv not written yet"
    assert df.measured.isna().all()


def test_the_papers_own_numbers_hold(tmp_path):
    paper_tables(tmp_path)
    df = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path, paper_backbone=True).set_index("id")
    no_paper_value = {e["id"] for e in claims.load_spec() if e["paper"] is None}  # e.g. CIs the paper never reports
    measured_here = [i for i in df.index if df.loc[i, "tables"] in
                     ("table1_canonical_tofu.csv", "table3_scalability.csv", "table3_install_times.csv", "table5_streaming.csv",
                      "tie_layer_ranking.csv", "table4_transfer.csv") and i not in no_paper_value]
    assert len(measured_here) >= 20 and {"t1_selectivity_ci", "t1_tie_beats_random_ci"} <= no_paper_value
    assert df.loc[measured_here, "verdict"].eq(claims.HOLDS).all(), df.loc[measured_here, ["measured", "note"]]
    assert df.loc["t1_dflp", "measured"] == pytest.approx(-83.24)
    assert df.loc["t1_vs_alphaedit", "measured"] == pytest.approx(83.24 / 11.9)  # names compare without case
    assert df.loc["t3_install_sublinear", "measured"] == pytest.approx(56.1 / 6.4)
    assert df.loc["t5_retain_flat", "measured"] == pytest.approx(36.63 - 35.87)
    assert df.loc["t5_retain_steady", "measured"] == pytest.approx(36.63 - 36.25)
    assert df.loc["tie_band_layer", "measured"] == pytest.approx(19 / 31)
    assert df.loc["tie_band_step", "measured"] == pytest.approx(1 / 8)
    assert df.loc["tie_resid_dominates", "measured"] == pytest.approx(3.0)
    assert df.loc["t1_dflp_relative", "measured"] == pytest.approx(-83.24 / 35.70)
    assert df.loc["t1_selectivity", "measured"] == pytest.approx(83.24 / 54.32)
    assert df.loc["t1_tie_beats_random", "measured"] == pytest.approx(83.24 / 54.32)  # random_layer forgets nothing
    assert df.loc["t5_realauth_flat_relative", "measured"] == pytest.approx((13.67 - 12.11) / 12.6)
    assert df.loc["t2_every_backbone", "verdict"] == claims.NOT_MEASURED
    assert df.loc["t4_books_verbmem", "measured"] == pytest.approx(-372.26 + 242.86)
    assert df.loc["t4_wmdp", "measured"] == pytest.approx(0.36 - 0.65)
    assert df.loc["t4_rwku_inseparable", "measured"] == pytest.approx(1.0)


def test_a_row_without_its_data_reads_data_not_available(tmp_path):
    paper_tables(tmp_path)
    table4(tmp_path, unavailable=("muse_books/verbmem", "whp/completion", "wmdp_bio/mcq"))
    df = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path).set_index("id")
    for cid in ("t4_books_verbmem", "t4_books_verbmem_relative", "t4_whp", "t4_whp_relative", "t4_wmdp"):
        assert df.loc[cid, "verdict"] == claims.UNAVAILABLE, cid
        assert math.isnan(df.loc[cid, "measured"])
        assert "status 'data not available'" in df.loc[cid, "note"], df.loc[cid, "note"]
    assert df.loc["t4_news_verbmem_relative", "verdict"] == claims.HOLDS  # its rows have their data
    assert df.loc["t4_news_verbmem", "verdict"] == claims.RAW
    t4 = pd.read_csv(tmp_path / "table4_transfer.csv")
    t4.drop(columns="status").to_csv(tmp_path / "table4_transfer.csv", index=False)  # no status column: NaN
    df = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path).set_index("id")
    assert df.loc["t4_wmdp", "verdict"] == claims.NOT_MEASURED


def test_contradicting_numbers_do_not_hold(tmp_path):
    paper_tables(tmp_path)
    t1 = pd.read_csv(tmp_path / "table1_canonical_tofu.csv")
    t1.loc[t1.alpha.eq(2) & t1.q.eq(4) & t1.method.eq("timerome"), ["d_forget_lp", "p_forget_lp"]] = [-20.0, 0.2]
    t1.to_csv(tmp_path / "table1_canonical_tofu.csv", index=False)
    t5 = pd.read_csv(tmp_path / "table5_streaming.csv")
    t5.loc[t5.alpha.eq(0.5) & t5.n_inserted.eq(50), "retain_lp"] = -40.0
    t5.to_csv(tmp_path / "table5_streaming.csv", index=False)
    df = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path, paper_backbone=True).set_index("id")
    row = df.loc["t1_dflp"]  # right sign, a quarter of the size: direction yes, magnitude no
    assert (row.verdict, row.direction_ok, row.magnitude_ok) == (claims.FAILS, "yes", "no")
    assert (df.loc["t1_dflp_p", "direction_ok"], df.loc["t1_dflp_p", "magnitude_ok"]) == ("no", "no")
    assert df.loc["t5_retain_flat", "verdict"] == claims.FAILS
    assert df.loc["t5_retain_flat", "measured"] == pytest.approx(40.0 - 35.87)
    assert df.loc[["t1_dflp_relative", "t5_retain_flat_relative"], "verdict"].eq(claims.FAILS).all()


def test_missing_row_or_column_is_not_measured_yet(tmp_path):
    paper_tables(tmp_path)
    t1 = pd.read_csv(tmp_path / "table1_canonical_tofu.csv")
    t1[t1.method != "MEMIT"].drop(columns="ks_p").to_csv(tmp_path / "table1_canonical_tofu.csv", index=False)
    df = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path, paper_backbone=True).set_index("id")
    assert df.loc["t1_vs_memit", "verdict"] == claims.NOT_MEASURED
    assert "no row of table1_canonical_tofu.csv where method=memit" in df.loc["t1_vs_memit", "note"]
    assert df.loc["t1_ks_p", "verdict"] == claims.NOT_MEASURED
    assert "ks_p" in df.loc["t1_ks_p", "note"]
    assert df.loc["t1_dflp", "verdict"] == claims.HOLDS


def _spec(tmp_path, entries):
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(entries))  # JSON is YAML
    return path


def _entry(**kw):
    e = {"id": "c", "claim": "x", "paper": 2.0, "notebook": "01_x",
         "measure": {"csv": "t.csv", "operands": {"v": {"column": "y", "agg": "max"}}}, "direction": {">": 0}}
    e.update(kw)
    return e


@pytest.mark.parametrize("entry, match", [
    (_entry(measure={"csv": "t.csv", "operands": {"v": {"column": "y", "agg": "top"}}}), "unknown agg 'top'"),
    (_entry(direction={"~": 0}), r"unknown rule\(s\) \['~'\]"),
    (_entry(direction=None), "give a direction or a magnitude"),
    (_entry(paper="big"), "paper must be a number"),
    (_entry(colour="red"), r"unknown key\(s\) \['colour'\]"),
    ({"id": "c", "claim": "x"}, r"missing key\(s\)"),
    (_entry(measure={"csv": "t.csv", "operands": {"a": {"column": "y"}, "b": {"column": "y"}}}), "'value' expression"),
    (_entry(measure={"csv": "t.csv", "operands": {"a": {"column": "y"}}, "value": "__import__('os')"}),
     "not arithmetic over the operands"),
    (_entry(measure={"operands": {"a": {"column": "y"}}}), "names no csv"),
    (_entry(measure={"csv": "t.csv", "operands": {"a": {"column": "y", "agg": "argmax"}}}), "needs 'by'"),
    (_entry(measure={"csv": "t.csv", "operands": {"a": {"column": "y", "where": {"x": {"=>": 1}}}}}),
     "unknown operator"),
    (_entry(paper=None, magnitude={"within": 1}), "need the paper's value"),
    (_entry(unit="nats"), "depends on the backbone.*scale_free_twin"),
    (_entry(unit="nats", scale_free_twin="nowhere"), "scale_free_twin 'nowhere' is not another entry's id"),
    (_entry(unit="nats", scale_free_twin="c"), "scale_free_twin 'c' is not another entry's id"),
    (_entry(saturated={"csv": "t.csv", "operands": {"b": {"column": "y"}}, "when": {">": 0}}), "needs 'when'.*'why'"),
    (_entry(saturated={"csv": "t.csv", "operands": {"b": {"column": "y"}}, "why": "at the ceiling"}), "needs 'when'"),
    (_entry(saturated={"csv": "t.csv", "operands": {"b": {"column": "y"}}, "when": {">": -0.05},
                       "why": "LP is -0.01 here"}), "'why' has a number"),
    (_entry(saturated={"csv": "t.csv", "operands": {"b": {"column": "y"}}, "when": {"above": 0}, "why": "x"}),
     r"saturated when: unknown rule\(s\) \['above'\]"),
    (_entry(saturated={"csv": "t.csv", "operands": {"b": {"column": "y", "agg": "top"}}, "when": {">": 0},
                       "why": "x"}), "saturated: operand 'b': unknown agg"),
    (_entry(saturated={"operands": {"b": {"column": "y"}}, "when": {">": 0}, "why": "x", "reason": "x"}),
     "saturated: a mapping of"),
])
def test_spec_mistakes_are_errors_naming_the_entry(tmp_path, entry, match):
    with pytest.raises(ValueError, match=match) as e:
        claims.load_spec(_spec(tmp_path, [entry]))
    assert "claim #1" in str(e.value)


def test_a_scale_free_twin_must_be_scale_free(tmp_path):
    raw = _entry(id="raw", unit="nats", scale_free_twin="twin")
    with pytest.raises(ValueError, match=r"claim #1 \(raw\): scale_free_twin 'twin' is itself in raw units"):
        claims.load_spec(_spec(tmp_path, [raw, _entry(id="twin", unit="nats (max - min)")]))
    assert [e["id"] for e in claims.load_spec(_spec(tmp_path, [raw, _entry(id="twin", unit="× |no_edit|")]))] == \
        ["raw", "twin"]


def test_duplicate_ids_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="duplicate id 'c'"):
        claims.load_spec(_spec(tmp_path, [_entry(), _entry()]))


def test_operand_aggregations(tmp_path):
    pd.DataFrame({"g": ["A", "a", "b", "b"], "x": [1, 2, 3, 4], "y": [10.0, 30.0, 20.0, 5.0]}).to_csv(
        tmp_path / "t.csv", index=False)
    val = lambda **op: claims.operand_value({"csv": "t.csv", **op}, tmp_path)
    assert val(column="y", agg="max") == 30.0
    assert val(column="y", agg="range") == 25.0
    assert val(column="x", agg="argmax", by="y") == 2
    assert val(column="y", agg="last", by="x") == 5.0
    assert val(column="y", agg="first", by="y") == 5.0
    assert val(column="y", agg="count", where={"g": "a"}) == 2  # "A" and "a"
    assert val(column="y", where={"g": "b", "x": {">": 3}}) == 5.0
    assert val(column="y", agg="mean", where={"x": [1, 3]}) == 15.0
    assert val(column="x * y", where={"x": 2}) == 60.0
    assert val(column="y", agg="spearman", by="x") == pytest.approx(-0.4)
    with pytest.raises(claims.NotMeasured, match="2 rows of t.csv match g=b; expected one"):
        val(column="y", where={"g": "b"})
    with pytest.raises(claims.NotMeasured, match="no column 'z'"):
        val(column="y", where={"z": 1})
    with pytest.raises(claims.NotMeasured, match="cannot compute 'w'"):
        val(column="w", agg="max")


def test_json_tables_are_one_row(tmp_path):
    (tmp_path / "tie_coordinate.json").write_text(json.dumps({"layer": 3, "module": "resid", "steps": None}))
    assert claims.operand_value({"csv": "tie_coordinate.json", "column": "layer"}, tmp_path) == 3


@pytest.mark.parametrize("value, rule, paper, ok", [
    (-83.0, {"<": 0}, -83.24, True), (1.0, {"<": 0}, -83.24, False),
    (-50.0, {"within_factor": 2}, -83.24, True), (-30.0, {"within_factor": 2}, -83.24, False),
    (50.0, {"within_factor": 2}, -83.24, False),  # wrong sign is never within a factor
    (0.8, {"within": 0.5}, 1.0, True), (0.4, {"within": 0.5}, 1.0, False),
    (0.3, {"between": [0.25, 0.62], ">": 0.2}, None, True), (0.7, {"between": [0.25, 0.62]}, None, False),
])
def test_rules(value, rule, paper, ok):
    assert claims.judge(value, rule, paper) is ok


def test_ledger_files_are_byte_identical_and_name_the_cell(tmp_path):
    paper_tables(tmp_path)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Table I"), nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell('report.save_table(t, "table1_canonical_tofu", tables_dir, caption="", label="")')]
    nbformat.write(nb, tmp_path / "02_canonical_tofu.ipynb")
    df = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path)
    assert df.set_index("id").loc["t1_dflp", "notebook_cell"] == "02_canonical_tofu.ipynb § Table I"
    csv, md = claims.write_ledger(df, tmp_path, "Claims")
    first = csv.read_bytes(), md.read_bytes()
    claims.write_ledger(claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path), tmp_path, "Claims")
    assert (csv.read_bytes(), md.read_bytes()) == first
    text = md.read_text()
    assert "| t1_dflp |" in text and "**holds**" in text and "−83.24 nats" in text
    back = pd.read_csv(csv)
    assert back.set_index("id").loc["t1_dflp", "measured"] == -83.24  # full precision in the CSV


def test_command_line_writes_into_the_tables_dir(tmp_path, capsys):
    paper_tables(tmp_path)
    claims.main(["--tables-dir", str(tmp_path)])
    assert (tmp_path / "claims.md").exists() and (tmp_path / "claims.csv").exists()
    assert "holds" in capsys.readouterr().out


def test_the_notebooks_naming_style_is_understood(tmp_path):
    """02_canonical_tofu labels rows "TimeROME (α=2, q=4)" and names columns d_ForgetLP, KS_p."""
    pd.DataFrame([
        {"method": "no_edit", "alpha": NAN, "q": NAN, "ForgetLP": -30.0, "KS_p": 0.5, "d_ForgetLP": 0.0, "p_ForgetLP": NAN},
        {"method": "random_layer", "alpha": 2.0, "q": 4, "ForgetLP": -31.0, "KS_p": 0.4, "d_ForgetLP": -1.0,
         "p_ForgetLP": 0.3},
        {"method": "TimeROME (α=1, q=2)", "alpha": 1.0, "q": 2, "ForgetLP": -40.0, "KS_p": 0.3, "d_ForgetLP": -10.0,
         "p_ForgetLP": 0.01},
        {"method": "TimeROME (α=2, q=4)", "alpha": 2.0, "q": 4, "ForgetLP": -90.0, "KS_p": 0.2, "d_ForgetLP": -60.0,
         "p_ForgetLP": 1e-5},
    ]).to_csv(tmp_path / "table1_canonical_tofu.csv", index=False)
    df = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path).set_index("id")
    assert df.loc["t1_dflp", "measured"] == -60.0 and df.loc["t1_dflp", "verdict"] == claims.RAW
    assert df.loc["t1_dflp_relative", "measured"] == pytest.approx(-2.0)
    assert df.loc["t1_dflp_relative", "verdict"] == claims.HOLDS
    assert df.loc["t1_ks_p", "measured"] == pytest.approx(0.4)
    assert df.loc["t1_random_layer", "measured"] == pytest.approx(-1.0)
    assert df.loc["t1_vs_memit", "verdict"] == claims.NOT_MEASURED


# --- comparability, saturation, selectivity, cell names ------------------------------------------

def test_every_nats_claim_has_a_scale_free_twin_derived_from_the_papers_numbers(spec_entries):
    """A twin's paper_text reads "value = arithmetic on the paper's numbers": value is the arithmetic, rounded."""
    twins = {e["scale_free_twin"] for e in spec_entries.values() if "scale_free_twin" in e}
    assert {i for i, e in spec_entries.items() if "nats" in str(e.get("unit", ""))} == \
        {i for i, e in spec_entries.items() if "scale_free_twin" in e}
    assert {"t1_dflp_relative", "t1_random_layer_relative", "t5_realauth_flat_relative"} <= twins
    for tid in twins | {"t1_selectivity", "t1_tie_beats_random"}:
        e = spec_entries[tid]
        value, expr = e["paper_text"].split(";")[0].split(" = ")
        decimals = len(value.partition(".")[2])
        assert float(value) == e["paper"], tid
        assert abs(claims._safe_eval(expr, {}) - e["paper"]) <= 0.5 * 10 ** -decimals, tid


def test_raw_nats_defer_to_their_scale_free_twin_off_the_papers_backbone(tmp_path):
    paper_tables(tmp_path)
    df = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path).set_index("id")
    raw = df.loc["t1_dflp"]
    assert (raw.verdict, raw.direction_ok, raw.magnitude_ok, raw.scale_free_twin) == \
        (claims.RAW, "yes", "yes", "t1_dflp_relative")  # the rules are still read, they decide nothing
    assert raw.note.startswith("in raw nats, which do not compare") and "t1_dflp_relative (holds)" in raw.note
    assert df.loc["t1_dflp_relative", "verdict"] == claims.HOLDS
    assert "scale-free reading of t1_dflp" in df.loc["t1_dflp_relative", "note"]
    assert df.loc[df.scale_free_twin.ne("") & df.measured.notna(), "verdict"].eq(claims.RAW).all()
    on_paper = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path, paper_backbone=True).set_index("id")
    assert on_paper.loc["t1_dflp", "verdict"] == claims.HOLDS and on_paper.loc["t1_dflp", "note"] == ""


def _tiny_streaming(d, real_auth_no_edit):
    pd.DataFrame({"method": ["no_edit", "TimeROME", "TimeROME"], "alpha": [NAN, 0.5, 0.5], "n_inserted": [0, 1, 50],
                  "retain_lp": [-4.77, -4.93, -5.30], "forget_lp": [-2.17, -2.23, -2.80],
                  "real_auth": [real_auth_no_edit, real_auth_no_edit - 0.001, real_auth_no_edit - 0.002]},
                 ).to_csv(d / "table5_streaming.csv", index=False)


def test_a_saturated_column_is_not_informative_with_a_reason_from_the_measured_baseline(tmp_path):
    _tiny_streaming(tmp_path, -0.0127)
    df = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path).set_index("id")
    for cid in ("t5_realauth_flat", "t5_realauth_flat_relative"):
        row = df.loc[cid]
        assert (row.verdict, row.magnitude_ok) == (claims.SATURATED, "yes"), cid  # flat, but at the ceiling
        assert row.note.startswith("real_auth of table5_streaming.csv where method=no_edit is −0.0127 (> −0.05: "
                                   "saturated on this backbone): "), row.note
    _tiny_streaming(tmp_path, -0.0321)  # another measured value, another reason
    assert "is −0.0321 (" in claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path).set_index("id").loc[
        "t5_realauth_flat", "note"]
    _tiny_streaming(tmp_path, -12.6)  # off the ceiling: the rules decide
    df = claims.ledger(tables_dir=tmp_path, notebooks_dir=tmp_path).set_index("id")
    assert df.loc["t5_realauth_flat_relative", "verdict"] == claims.HOLDS
    assert "saturated" not in df.loc["t5_realauth_flat_relative", "note"]
    assert df.loc["t5_realauth_flat", "verdict"] == claims.RAW


def test_a_saturation_check_that_cannot_be_measured_is_not_measured_yet(tmp_path):
    entry = _entry(saturated={"operands": {"b": {"where": {"g": "no_edit"}, "column": "y"}}, "when": {">": 0.99},
                              "why": "the probability sits at its ceiling"})
    pd.DataFrame({"g": ["x"], "y": [0.5]}).to_csv(tmp_path / "t.csv", index=False)
    row = claims.ledger(_spec(tmp_path, [entry]), tmp_path, tmp_path).iloc[0]
    assert row.verdict == claims.NOT_MEASURED
    assert row.note.startswith("saturation check: no row of t.csv where g=no_edit")
    pd.DataFrame({"g": ["x", "no_edit"], "y": [0.5, 0.995]}).to_csv(tmp_path / "t.csv", index=False)
    row = claims.ledger(_spec(tmp_path, [entry]), tmp_path, tmp_path).iloc[0]
    assert row.verdict == claims.SATURATED
    assert row.note == ("y of t.csv where g=no_edit is 0.995 (> 0.99: saturated on this backbone): "
                        "the probability sits at its ceiling")


def _random_vs_tie(d, tie, rnd):
    """Table I's no_edit, TimeROME (α=2, q=4) and random_layer rows from (Δ ForgetLP, Δ RetainLP) pairs."""
    pd.DataFrame([{"method": "no_edit", "alpha": NAN, "q": NAN, "d_ForgetLP": 0.0, "d_RetainLP": 0.0},
                  {"method": "TimeROME (α=2, q=4)", "alpha": 2.0, "q": 4, "d_ForgetLP": tie[0], "d_RetainLP": tie[1]},
                  {"method": "random_layer", "alpha": 2.0, "q": 4, "d_ForgetLP": rnd[0], "d_RetainLP": rnd[1]}],
                 ).to_csv(d / "table1_canonical_tofu.csv", index=False)
    return claims.ledger(tables_dir=d, notebooks_dir=d).set_index("id")


@pytest.mark.parametrize("tie, rnd, margin, verdict", [
    ((-83.24, -54.32), (0.15, 0.05), 83.24 / 54.32, claims.HOLDS),  # the paper's Table I: random forgets nothing
    ((-83.24, -54.32), (-30.0, -40.0), 83.24 / 54.32 - 0.75, claims.HOLDS),  # §IV-E: random over-forgets
    ((-83.24, -54.32), (-50.0, -40.0), 83.24 / 54.32 - 1.25, claims.FAILS),  # ahead, by less than 0.5
    ((-58.13, -66.04), (-19.47, -11.25), 58.13 / 66.04 - 19.47 / 11.25, claims.FAILS),  # random is more selective
])
def test_tie_beats_random_compares_selectivities(tmp_path, tie, rnd, margin, verdict):
    df = _random_vs_tie(tmp_path, tie, rnd)
    assert df.loc["t1_tie_beats_random", "measured"] == pytest.approx(margin)
    assert df.loc["t1_tie_beats_random", "verdict"] == verdict
    assert df.loc["t1_selectivity", "measured"] == pytest.approx(tie[0] / tie[1])


def _notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbformat.v4.new_code_cell(c)
                for c in cells]
    nbformat.write(nb, path)


def test_the_cell_is_named_by_the_heading_above_the_cell_that_writes_the_table(tmp_path):
    writes = 'report.save_table(\n    table,\n    "table1_canonical_tofu", tables_dir)'  # a call over lines
    _notebook(tmp_path / "02_canonical_tofu.ipynb", [
        "md:# 02 · Table I", 'coordinate_file = "../tables/tie_coordinate.json"',
        "md:## Tuning\ntext\n### Validation sweep", 't = pd.read_csv("table1_canonical_tofu.csv")  # reads only',
        "md:## Table I: canonical TOFU\nThe rows below.", "x = 1", writes])
    cell = lambda table, planned="02_canonical_tofu": claims.notebook_cell(tmp_path, table, planned)
    assert cell("table1_canonical_tofu.csv") == "02_canonical_tofu.ipynb § Table I: canonical TOFU"
    assert cell("tie_coordinate.json", "01_tie_heatmaps") == "01_tie_heatmaps.ipynb (not written yet)"  # only read
    (tmp_path / "02_canonical_tofu.ipynb").rename(tmp_path / "03_renumbered.ipynb")
    assert cell("table1_canonical_tofu.csv") == "03_renumbered.ipynb § Table I: canonical TOFU"  # found by its writes
    _notebook(tmp_path / "03_renumbered.ipynb", ["import x", "%matplotlib inline\n" + writes.replace("\n", " ")])
    assert cell("table1_canonical_tofu.csv") == "03_renumbered.ipynb, code cell 2 (counting code cells only, from 1)"
    _notebook(tmp_path / "02_canonical_tofu.ipynb", ["md:# Nothing exported yet", "x = 1"])
    assert cell("fig4_pareto.csv") == "02_canonical_tofu.ipynb"


def test_the_summary_counts_every_verdict_and_out_dir_keeps_the_tables_dir(tmp_path, capsys):
    paper_tables(tmp_path)
    _tiny_streaming(tmp_path, -0.0127)
    table4(tmp_path, unavailable=("wmdp_bio/mcq",))
    out = tmp_path / "scratch"
    claims.main(["--tables-dir", str(tmp_path), "--out-dir", str(out)])
    assert not (tmp_path / "claims.md").exists() and (out / "claims.csv").exists()
    df = pd.read_csv(out / "claims.csv", keep_default_na=False)
    counts = df.verdict.value_counts()
    summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in claims.VERDICTS)
    assert all(counts.get(v, 0) > 0 for v in claims.VERDICTS), counts
    assert f"{len(df)} claims: {summary}." in (out / "claims.md").read_text()
    assert capsys.readouterr().out.startswith(summary)
