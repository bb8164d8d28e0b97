"""The claims ledger: every quantitative claim of the paper next to what this artifact measured.

    python -m timerome.claims                    # tables/claims.{md,csv} from params/claims.yaml
    python -m timerome.claims --profile paper    # from runs/paper/tables/, written there
    python -m timerome.claims --out-dir /tmp/x   # read tables/, write the ledger to /tmp/x

Each entry of ``params/claims.yaml`` names the paper's value, the table (CSV or JSON in the
profile's tables folder) a notebook exports, how to compute the measured value from it, and
the rules that decide whether the claim holds. A measure is a few named *operands*, each one
number taken from rows of a table, combined by an arithmetic expression::

    measure:
      csv: table1_canonical_tofu.csv
      operands:
        best: {where: {method: timerome, alpha: 2, q: 4}, column: forget_lp}
        ref:  {where: {method: no_edit}, column: forget_lp}
      value: best - ref
    direction: {"<": 0}                # the effect has the paper's sign
    magnitude: {within_factor: 2}      # and its size is within 2x of the paper's

An operand: ``where`` (column -> value, list of values, or ``{op: x}`` with op in < <= > >= !=;
a name matches a cell without case, also one that goes on after a space or parenthesis, so
``timerome`` matches ``TimeROME (α=2, q=4)``; column names compare without case or punctuation,
so ``d_forget_lp`` finds ``d_ForgetLP``),
``column`` (a column name or a row-wise expression such as ``capture_s + solve_s``) and ``agg``:
``one`` (default: exactly one row must match), ``max``, ``min``, ``mean``, ``median``, ``sum``,
``count``, ``range`` (max − min), ``first``/``last`` (ordered by ``by``), ``argmax``/``argmin``
(the ``column`` value on the row where ``by`` is largest/smallest) or ``spearman`` (rank
correlation of ``by`` with ``column``). A rule is a mapping whose entries must all hold:
``<``, ``<=``, ``>``, ``>=`` (against a number), ``between: [lo, hi]``, ``within: tol``
(``|measured − paper| <= tol``) or ``within_factor: f`` (same sign, ``|measured|/|paper|`` in
``[1/f, f]``).

Two keys say when a measured value cannot decide the claim on this backbone::

    scale_free_twin: t1_dflp_relative    # this entry is in raw units; that entry is its scale-free reading
    saturated:                           # a baseline, measured like ``measure`` (its csv unless given),
      operands: {base: {where: {method: no_edit}, column: real_auth}}
      when: {">": -0.05}                 # the rule that detects saturation
      why: the split is in the backbone's training data, so a flat value cannot show the edit spares it

Raw nats of the paper's 8B model do not compare with another backbone's, so an entry in nats must
name a twin entry (in no raw unit) that reads the claim scale-free, e.g. relative to no_edit.
``why`` is words only: the numbers in the generated reason come from the table.

Verdict, first that applies: ``data not available`` when a row the claim reads has the status
"data not available" in a ``status`` column (the notebook ran, but the benchmark's data files are
not under the data root: the row carries the status, never a number); ``not measured yet`` when
a table, column or row is missing (the reason is in the ``note``; never an error); ``not
informative here`` when the ``saturated`` baseline passes ``when`` (the note names its measured
value); ``not comparable here`` for an entry with a ``scale_free_twin`` (the note gives the twin's
verdict) unless the tables come from the paper's backbone (``--paper-backbone``, the default for
``--profile paper``); else ``holds`` when every rule given holds, ``does not hold`` otherwise. A
broken spec entry (unknown key, operator, aggregation or twin) is an error naming the entry.

The *notebook cell* column names the notebook (any file in the notebooks folder) whose code cell
writes the table and the heading of the section that cell sits in, so renumbering notebooks or
cells changes no spec entry; ``notebook`` names the planned notebook until one writes the table.

Over 400 lines for one reason: the spec's validation, the measuring of an entry and the ledger's
rendering share one small expression language (operands, rules, twins), read as a unit.
"""
from __future__ import annotations

import argparse
import ast
import functools
import json
import math
import operator
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import yaml

from timerome.report import atomic_write

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "params" / "claims.yaml"
HOLDS, FAILS, NOT_MEASURED = "holds", "does not hold", "not measured yet"
SATURATED, RAW, UNAVAILABLE = "not informative here", "not comparable here", "data not available"
VERDICTS = (HOLDS, FAILS, SATURATED, RAW, UNAVAILABLE, NOT_MEASURED)
RAW_UNIT = re.compile(r"\bnats\b")  # units whose size depends on the backbone
AGGS = ("one", "max", "min", "mean", "median", "sum", "count", "range", "first", "last", "argmax", "argmin",
        "spearman")
COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "!=": operator.ne}
RULES = set(COMPARE) | {"between", "within", "within_factor"}
ENTRY_KEYS = {"id", "claim", "source", "paper", "paper_text", "unit", "notebook", "measure", "direction",
              "magnitude", "note", "scale_free_twin", "saturated"}
OPERAND_KEYS = {"csv", "where", "column", "agg", "by"}
MEASURE_KEYS = {"csv", "operands", "value"}
WRITERS = {"save_table", "atomic_write", "to_csv", "to_json", "write_text", "dump"}


class NotMeasured(Exception):
    """The table, a column or a row this claim needs is not there (yet)."""


class DataUnavailable(NotMeasured):
    """A row this claim reads has status "data not available": its benchmark's data is absent."""


# --- the spec ----------------------------------------------------------------------------------

def load_spec(path=SPEC) -> list[dict]:
    """The claim entries of ``path``, checked: a mistake fails here, naming the entry."""
    path = Path(path)
    entries = yaml.safe_load(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of claims, got {type(entries).__name__}")
    seen = set()
    for i, e in enumerate(entries):
        where = f"{path}: claim #{i + 1}" + (f" ({e.get('id')})" if isinstance(e, dict) and e.get("id") else "")
        if not isinstance(e, dict):
            raise ValueError(f"{where}: must be a mapping")
        missing = {"id", "claim", "paper", "notebook", "measure"} - set(e)
        if missing:
            raise ValueError(f"{where}: missing key(s) {sorted(missing)}")
        if set(e) - ENTRY_KEYS:
            raise ValueError(f"{where}: unknown key(s) {sorted(set(e) - ENTRY_KEYS)}; allowed: {sorted(ENTRY_KEYS)}")
        if e["id"] in seen:
            raise ValueError(f"{where}: duplicate id {e['id']!r}")
        seen.add(e["id"])
        if e["paper"] is not None and not isinstance(e["paper"], (int, float)):
            raise ValueError(f"{where}: paper must be a number (put text in paper_text), got {e['paper']!r}")
        if not (e.get("direction") or e.get("magnitude")):
            raise ValueError(f"{where}: give a direction or a magnitude rule (or both)")
        for kind in ("direction", "magnitude"):
            _check_rule(e.get(kind), e["paper"], f"{where} {kind}")
        _check_measure(e["measure"], where)
        if "saturated" in e:
            _check_saturated(e, f"{where} saturated")
    by_id = {e["id"]: e for e in entries}
    for i, e in enumerate(entries):
        _check_twin(e, by_id, f"{path}: claim #{i + 1} ({e['id']})")
    return entries


def _check_twin(e, by_id, where):
    twin = e.get("scale_free_twin")
    if twin is None:
        if RAW_UNIT.search(str(e.get("unit", ""))):
            raise ValueError(f"{where}: unit {e['unit']!r} depends on the backbone: add the claim's scale-free "
                             f"reading as another entry and name it in scale_free_twin")
        return
    if twin not in by_id or twin == e["id"]:
        raise ValueError(f"{where}: scale_free_twin {twin!r} is not another entry's id")
    if "scale_free_twin" in by_id[twin] or RAW_UNIT.search(str(by_id[twin].get("unit", ""))):
        raise ValueError(f"{where}: scale_free_twin {twin!r} is itself in raw units")


def _saturation_measure(e) -> dict:
    """The ``saturated`` baseline as a measure; its csv defaults to the entry's measure's."""
    m = {k: e["saturated"][k] for k in MEASURE_KEYS & set(e["saturated"])}
    return {"csv": e["measure"].get("csv"), **m} if "csv" not in m and e["measure"].get("csv") else m


def _check_saturated(e, where):
    s = e["saturated"]
    if not isinstance(s, dict) or set(s) - MEASURE_KEYS - {"when", "why"}:
        raise ValueError(f"{where}: a mapping of {sorted(MEASURE_KEYS)}, 'when' and 'why', got {s!r}")
    if "when" not in s or not isinstance(s.get("why"), str) or not s["why"].strip():
        raise ValueError(f"{where}: needs 'when' (the rule that detects saturation) and 'why' (words)")
    if re.search(r"\d", s["why"]):
        raise ValueError(f"{where}: 'why' has a number ({s['why']!r}); the reason's numbers come from the table")
    _check_rule(s["when"], None, f"{where} when")
    _check_measure(_saturation_measure(e), where)


def _check_rule(rule, paper, where):
    if rule is None:
        return
    if not isinstance(rule, dict) or not rule:
        raise ValueError(f"{where}: a rule is a mapping such as {{'<': 0}}, got {rule!r}")
    unknown = set(rule) - RULES
    if unknown:
        raise ValueError(f"{where}: unknown rule(s) {sorted(unknown)}; allowed: {sorted(RULES)}")
    if ("within" in rule or "within_factor" in rule) and paper is None:
        raise ValueError(f"{where}: 'within'/'within_factor' need the paper's value")
    if "between" in rule and not (isinstance(rule["between"], list) and len(rule["between"]) == 2):
        raise ValueError(f"{where}: between needs [lo, hi], got {rule['between']!r}")


def _check_measure(m, where):
    if not isinstance(m, dict) or not isinstance(m.get("operands"), dict) or not m["operands"]:
        raise ValueError(f"{where}: measure needs a non-empty 'operands' mapping")
    if set(m) - {"csv", "operands", "value"}:
        raise ValueError(f"{where}: unknown measure key(s) {sorted(set(m) - {'csv', 'operands', 'value'})}")
    if len(m["operands"]) > 1 and "value" not in m:
        raise ValueError(f"{where}: several operands need a 'value' expression combining them")
    for name, op in m["operands"].items():
        if not isinstance(op, dict) or "column" not in op:
            raise ValueError(f"{where}: operand {name!r} needs a 'column'")
        if set(op) - OPERAND_KEYS:
            raise ValueError(f"{where}: operand {name!r}: unknown key(s) {sorted(set(op) - OPERAND_KEYS)}")
        if not (op.get("csv") or m.get("csv")):
            raise ValueError(f"{where}: operand {name!r} names no csv (and the measure has no default)")
        agg = op.get("agg", "one")
        if agg not in AGGS:
            raise ValueError(f"{where}: operand {name!r}: unknown agg {agg!r}; allowed: {AGGS}")
        if agg in ("argmax", "argmin", "spearman") and "by" not in op:
            raise ValueError(f"{where}: operand {name!r}: agg {agg!r} needs 'by'")
        for col, cond in (op.get("where") or {}).items():
            if isinstance(cond, dict) and set(cond) - set(COMPARE):
                raise ValueError(f"{where}: operand {name!r}: where.{col} has unknown operator(s) "
                                 f"{sorted(set(cond) - set(COMPARE))}")
    _safe_eval(m.get("value", next(iter(m["operands"]))), {k: 1.0 for k in m["operands"]}, where)


# --- measuring ---------------------------------------------------------------------------------

def read_table(tables_dir: Path, name: str) -> pd.DataFrame:
    path = Path(tables_dir) / name
    if not path.is_file():
        raise NotMeasured(f"{name} not written yet")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return pd.json_normalize(data if isinstance(data, list) else [data])
    return pd.read_csv(path)


def _norm(name) -> str:
    """Column names compare without case or punctuation: ``forget_lp`` = ``ForgetLP``, ``ks_p`` = ``KS_p``."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _norm_expr(expr: str) -> str:
    return re.sub(r"[A-Za-z_][A-Za-z0-9_]*", lambda m: _norm(m.group()), expr)


def _same_name(series: pd.Series, v: str) -> pd.Series:
    """Without case; ``timerome`` also matches a label that goes on, e.g. ``TimeROME (α=2, q=4)``."""
    cells, v = series.astype(str).str.lower(), str(v).lower()
    return (cells == v) | cells.str.startswith(v + " ") | cells.str.startswith(v + "(")


def _matches(series: pd.Series, cond) -> pd.Series:
    if isinstance(cond, dict):
        out = pd.Series(True, index=series.index)
        for op, x in cond.items():
            out &= COMPARE[op](pd.to_numeric(series, errors="coerce"), x)
        return out
    values = cond if isinstance(cond, list) else [cond]
    out = pd.Series(False, index=series.index)
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            num = pd.to_numeric(series, errors="coerce")
            out |= np.isclose(num, v, rtol=1e-9, atol=1e-12) & num.notna()
        else:  # names, booleans
            out |= _same_name(series, v)
    return out


def operand_value(op: dict, tables_dir: Path, default_csv: str | None = None) -> float:
    name = op.get("csv") or default_csv
    df = read_table(tables_dir, name)
    df.columns = [_norm(c) for c in df.columns]
    if df.columns.duplicated().any():
        raise NotMeasured(f"{name}: columns {list(df.columns[df.columns.duplicated()])} are ambiguous "
                          f"(names compare without case and punctuation)")
    for col, cond in (op.get("where") or {}).items():
        if _norm(col) not in df.columns:
            raise NotMeasured(f"{name} has no column {col!r}")
        df = df[_matches(df[_norm(col)], cond)]
    if df.empty:
        raise NotMeasured(f"no row of {name} where {_fmt_where(op.get('where'))}")
    if "status" in df.columns:
        absent = df["status"].astype(str).str.strip().str.lower().eq(UNAVAILABLE)
        if absent.any():
            raise DataUnavailable(f"{name} where {_fmt_where(op.get('where'))}: status {UNAVAILABLE!r} "
                                  f"(the benchmark's data files are not under the data root)")
    column = _norm_expr(op["column"])
    try:
        values = pd.to_numeric(df[column] if column in df.columns else df.eval(column), errors="coerce")
    except Exception as exc:  # an expression over columns the table does not have (yet)
        raise NotMeasured(f"{name}: cannot compute {op['column']!r} ({type(exc).__name__}: {exc})") from None
    agg, by = op.get("agg", "one"), (_norm(op["by"]) if op.get("by") else None)
    if by is not None and by not in df.columns:
        raise NotMeasured(f"{name} has no column {op['by']!r}")
    if agg == "one":
        if len(df) != 1:
            raise NotMeasured(f"{len(df)} rows of {name} match {_fmt_where(op.get('where'))}; expected one")
        return float(values.iloc[0])
    if agg == "count":
        return float(len(df))
    if agg in ("first", "last"):
        order = values if by is None else values.loc[df[by].sort_values(kind="stable").index]
        return float(order.iloc[0 if agg == "first" else -1])
    if agg in ("argmax", "argmin"):
        keys = pd.to_numeric(df[by], errors="coerce")
        return float(values.loc[keys.idxmax() if agg == "argmax" else keys.idxmin()])
    if agg == "spearman":
        if len(df) < 3:
            raise NotMeasured(f"{len(df)} rows of {name}: a rank correlation needs at least 3")
        return float(pd.to_numeric(df[by], errors="coerce").corr(values, method="spearman"))
    if agg == "range":
        return float(values.max() - values.min())
    return float(getattr(values, agg)())


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_FUNCS = {"abs": abs, "min": min, "max": max, "log10": math.log10}


def _safe_eval(expr, names: dict, where: str = "value") -> float:
    """Arithmetic over operand names: + - * / **, abs, min, max, log10 — nothing else."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div) and b == 0:
                return math.nan
            return _BINOPS[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise ValueError(f"{where}: {ast.unparse(node)!r} in value {expr!r} is not arithmetic over the "
                         f"operands {sorted(names)}")
    try:
        tree = ast.parse(str(expr), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"{where}: value {expr!r} is not an expression: {exc.msg}") from None
    return ev(tree)


def judge(value: float, rule: dict, paper) -> bool:
    ok = True
    for op, x in rule.items():
        if op in COMPARE:
            ok &= COMPARE[op](value, x)
        elif op == "between":
            ok &= x[0] <= value <= x[1]
        elif op == "within":
            ok &= abs(value - paper) <= x
        elif op == "within_factor":
            ok &= value * paper > 0 and 1 / x <= abs(value) / abs(paper) <= x
    return bool(ok)


def measure(entry: dict, tables_dir: Path) -> float:
    return _evaluate(entry["measure"], tables_dir, entry["id"])


def saturation(entry: dict, tables_dir: Path) -> str | None:
    """Why the entry's column is saturated here (from the measured baseline), or None if it is not."""
    s = entry.get("saturated")
    if not s:
        return None
    m = _saturation_measure(entry)
    try:
        base = _evaluate(m, tables_dir, entry["id"])
    except NotMeasured as why:
        raise NotMeasured(f"saturation check: {why}") from None
    if not judge(base, s["when"], None):
        return None
    what = describe_measure(m)
    if len(m["operands"]) == 1 and "value" not in m:  # "base = x of t.csv ..." reads as "x of t.csv ..."
        what = what.split(" = ", 1)[1]
    rule = ", ".join(f"{op} {_num(x) if isinstance(x, (int, float)) else x}" for op, x in s["when"].items())
    return f"{what} is {_num(base)} ({rule}: saturated on this backbone): {s['why']}"


def _evaluate(m: dict, tables_dir: Path, where: str) -> float:
    names = {k: operand_value(op, tables_dir, m.get("csv")) for k, op in m["operands"].items()}
    try:
        value = _safe_eval(m.get("value", next(iter(m["operands"]))), names, where)
    except (ValueError, OverflowError) as exc:  # the spec was checked on load: this is the data (log10 of < 0)
        raise NotMeasured(f"cannot compute the value from {names}: {exc}") from None
    if not math.isfinite(value):
        raise NotMeasured(f"the measured value is {value} (operands {names})")
    return value


# --- the ledger --------------------------------------------------------------------------------

def _fmt_where(where) -> str:
    if not where:
        return "(all rows)"
    parts = []
    for k, v in where.items():
        if isinstance(v, dict):
            parts += [f"{k} {op} {x}" for op, x in v.items()]
        else:
            parts.append(f"{k} in {v}" if isinstance(v, list) else f"{k}={v}")
    return ", ".join(parts)


def describe(entry: dict) -> str:
    """How the measured value is computed, in words a reviewer can redo by hand."""
    return describe_measure(entry["measure"])


def describe_measure(m: dict) -> str:
    parts = []
    for name, op in m["operands"].items():
        agg = op.get("agg", "one")
        what = op["column"] if agg == "one" else (f"{agg}({op['column']}" + (f" by {op['by']})" if op.get("by") else ")"))
        parts.append(f"{name} = {what} of {op.get('csv') or m.get('csv')} where {_fmt_where(op.get('where'))}")
    value = m.get("value", next(iter(m["operands"])))
    return "; ".join(parts) + ("" if value in m["operands"] else f"; value = {value}")


def _rule_text(rule) -> str:
    if not rule:
        return ""
    return ", ".join(f"{op} {x}" for op, x in rule.items())


def _writes(source: str, stem: str) -> bool:
    """A call to a writer (``save_table``, ``atomic_write``, ``to_csv``, ...) that names ``stem``."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics: read line by line
        return any(stem in line and any(w in line for w in WRITERS) for line in source.splitlines())
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        name = getattr(func, "attr", None) or getattr(func, "id", None)
        if isinstance(node, ast.Call) and name in WRITERS and stem in (ast.get_source_segment(source, node) or ""):
            return True
    return False


@functools.lru_cache(maxsize=32)
def _cells(path: Path, mtime_ns: int, size: int) -> list:  # read once per version of the file
    return nbformat.read(path, as_version=4).cells


def _heading_above(cells, i: int) -> str | None:
    for cell in reversed(cells[:i]):
        heads = [line.lstrip("#").strip() for line in cell.source.splitlines() if re.match(r"#+\s", line)]
        if cell.cell_type == "markdown" and heads:
            return heads[-1]
    return None


def notebook_cell(notebooks_dir: Path, table: str, planned: str) -> str:
    """``"02_canonical_tofu.ipynb § Table I"``: the notebook whose code cell writes ``table`` (by its
    stem) and the heading of that cell's section; ``planned`` names the notebook until one does."""
    stem = Path(table).stem
    paths = sorted(Path(notebooks_dir).glob("*.ipynb"), key=lambda p: p.stem != planned)  # planned first
    for path in paths:
        cells = _cells(path, path.stat().st_mtime_ns, path.stat().st_size)
        code = [i for i, c in enumerate(cells) if c.cell_type == "code"]
        for n, i in enumerate(code, 1):
            if _writes(cells[i].source, stem):
                heading = _heading_above(cells, i)
                return (f"{path.name} § {heading}" if heading
                        else f"{path.name}, code cell {n} (counting code cells only, from 1)")
    planned_path = Path(notebooks_dir) / f"{planned}.ipynb"
    return f"{planned}.ipynb" + ("" if planned_path.is_file() else " (not written yet)")


def ledger(spec=SPEC, tables_dir=REPO / "tables", notebooks_dir=REPO / "notebooks",
           paper_backbone: bool = False) -> pd.DataFrame:
    """One row per claim. ``paper_backbone``: the tables come from the paper's own backbone, so an
    entry in raw units is judged on its rules instead of reading "not comparable here"."""
    entries, rows = load_spec(spec), {}
    twin_of = {e["scale_free_twin"]: e["id"] for e in entries if "scale_free_twin" in e}
    for e in entries:
        tables = sorted({op.get("csv") or e["measure"].get("csv") for op in e["measure"]["operands"].values()})
        notes = [f"scale-free reading of {twin_of[e['id']]}"] if e["id"] in twin_of else []
        row = {"id": e["id"], "claim": e["claim"], "paper_source": e.get("source", ""), "paper": e["paper"],
               "paper_text": e.get("paper_text", ""), "unit": e.get("unit", ""), "measured": math.nan,
               "direction_rule": _rule_text(e.get("direction")), "direction_ok": "",
               "magnitude_rule": _rule_text(e.get("magnitude")), "magnitude_ok": "", "verdict": NOT_MEASURED,
               "scale_free_twin": e.get("scale_free_twin", ""), "tables": " ".join(tables),
               "notebook_cell": notebook_cell(notebooks_dir, tables[0], e["notebook"]), "how": describe(e)}
        try:
            value = measure(e, Path(tables_dir))
            saturated = saturation(e, Path(tables_dir))
        except NotMeasured as why:
            notes.insert(0, str(why))
            if isinstance(why, DataUnavailable):
                row["verdict"] = UNAVAILABLE
        else:
            checks = {k: judge(value, e[k], e["paper"]) for k in ("direction", "magnitude") if e.get(k)}
            row.update(measured=value, verdict=HOLDS if all(checks.values()) else FAILS,
                       **{f"{k}_ok": "yes" if ok else "no" for k, ok in checks.items()})
            if saturated:
                row["verdict"] = SATURATED
                notes.insert(0, saturated)
            elif "scale_free_twin" in e and not paper_backbone:
                row["verdict"] = RAW
        rows[e["id"]] = (row, notes + ([e["note"]] if e.get("note") else []))
    for row, notes in rows.values():  # a raw entry's note gives its twin's verdict
        if row["verdict"] == RAW:
            twin = row["scale_free_twin"]
            notes.insert(0, f"in raw {row['unit']}, which do not compare between this backbone and the paper's: "
                            f"the verdict rests on the scale-free {twin} ({rows[twin][0]['verdict']})")
        row["note"] = "; ".join(notes)
    return pd.DataFrame([row for row, _ in rows.values()])


def _num(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.4g}".replace("-", "−")


def to_markdown(df: pd.DataFrame, title: str) -> str:
    lines = [f"# {title}", "",
             f"{len(df)} claims: {_counts(df)}.",
             "Generated by `python -m timerome.claims` from `params/claims.yaml` and the notebooks' exported "
             "tables; do not edit by hand. *direction* / *magnitude*: whether the measured value passes each rule "
             "(the rules are in `claims.csv` and the spec). *not comparable here*: a claim in raw units (nats) of "
             "the paper's backbone, read here on another one; its scale-free twin carries the verdict. *not "
             "informative here*: the column is saturated on this backbone (the reason, from the measured baseline, "
             "is in the notes). *data not available*: the notebook ran, but the benchmark's data files are not "
             "under the data root, so its table row carries that status instead of a number. *notebook cell*: the "
             "notebook whose code cell writes the table, and the heading of the section holding that cell.", "",
             "| id | claim (paper source) | paper | measured | direction | magnitude | verdict | notebook cell |",
             "|---|---|---|---|---|---|---|---|"]
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    for r in df.itertuples():
        paper = r.paper_text or _num(r.paper)
        unit = f" {r.unit}" if r.unit else ""
        measured = cell(_num(r.measured) + (unit if not math.isnan(r.measured) else ""))
        lines.append(f"| {r.id} | {cell(r.claim)} ({cell(r.paper_source)}) | {cell(paper + (unit if not r.paper_text else ''))}"
                     f" | {measured} | {r.direction_ok or '—'} | {r.magnitude_ok or '—'} | **{r.verdict}** "
                     f"| {cell(r.notebook_cell)} |")
    lines += ["", "## How each value is measured", ""]
    for r in df.itertuples():
        lines.append(f"- **{r.id}**: {r.how}." + (f" Note: {r.note}" if r.note else ""))
    return "\n".join(lines) + "\n"


def _counts(df: pd.DataFrame) -> str:
    counts = df["verdict"].value_counts()
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)


def write_ledger(df: pd.DataFrame, tables_dir, title: str) -> list[Path]:
    tables_dir = Path(tables_dir)
    csv = atomic_write(tables_dir / "claims.csv", lambda tmp: df.to_csv(tmp, index=False, lineterminator="\n"))
    md = atomic_write(tables_dir / "claims.md", lambda tmp: Path(tmp).write_text(to_markdown(df, title)))
    return [csv, md]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m timerome.claims", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny", help="read the tables of this profile (default: tiny)")
    ap.add_argument("--spec", default=str(SPEC), help="claims spec (default: params/claims.yaml)")
    ap.add_argument("--tables-dir", help="read (and write) here instead of the profile's tables folder")
    ap.add_argument("--out-dir", help="write claims.{md,csv} here instead of the tables folder")
    ap.add_argument("--paper-backbone", action=argparse.BooleanOptionalAction, default=None,
                    help="the tables come from the paper's backbone, so raw nats compare "
                         "(default: only for --profile paper)")
    args = ap.parse_args(argv)
    from timerome.params import output_dirs

    dirs = output_dirs(args.profile)
    tables_dir = Path(args.tables_dir) if args.tables_dir else dirs["tables"]
    paper_backbone = args.profile == "paper" if args.paper_backbone is None else args.paper_backbone
    df = ledger(args.spec, tables_dir, REPO / "notebooks", paper_backbone=paper_backbone)
    out_dir = Path(args.out_dir) if args.out_dir else tables_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_ledger(df, out_dir, f"Claims ledger: the paper's numbers vs this artifact (profile {args.profile})")
    print(f"{_counts(df)} -> {paths[1]}")


if __name__ == "__main__":
    main()
