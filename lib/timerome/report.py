"""Exports: figures as PDF + PNG, tables as CSV + LaTeX, small JSON results.

Outputs are written atomically (a hidden temp file ``.<name>.<random>.tmp`` in the same folder,
then rename) and without timestamps, so re-running a notebook gives byte-identical files and a
crash or Ctrl-C never leaves a half-written one. Files get the umask's mode (0666 & ~umask, as
``open`` would), not mkstemp's private 0600. Readers skip temporaries (`is_temporary`).

Precision: floats in CSV (`save_table`) and JSON (`save_json`) are rounded to ``SIG_DIGITS`` (6)
significant digits, so the same machine type and thread count reproduce a file byte for byte.
float32 forwards differ in their last bits with the batch shape and thread count, and a value
whose error reaches its 6th digit then differs there; `export_mismatches` compares two exports
number by number with a tolerance instead. Ints, strings and NaN are written as they are.

A table is one tidy frame of numbers: e.g. ``forget_lp``, ``forget_lp_std``, ``d_forget_lp``,
``p_forget_lp``. The CSV is that frame as is; the LaTeX is a view of it in which
``pm={"forget_lp": "forget_lp_std"}`` shows ``−35.70 ± 3.91`` and
``deltas={"d_forget_lp": "p_forget_lp"}`` shows ``−83.24***`` (stars from `stats.stars`).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pandas as pd

from . import stats

SIG_DIGITS = 6  # significant digits of exported floats (see the module docstring)
TMP_SUFFIX = ".tmp"


def is_temporary(path) -> bool:
    """An `atomic_write` temporary (``.<name>.<random>.tmp``), left behind only by a SIGKILL."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> Path:
    """Call ``write(tmp)`` on a hidden temp file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX, so readers see the old file or the new one, never a part. The
    file gets mode ``0666 & ~umask``; the temp file is removed if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_figure(fig, name: str, figures_dir) -> list[Path]:
    """``figures_dir/name.pdf`` and ``.png``, with no timestamps in the metadata."""
    paths = []
    for ext, meta in (("pdf", {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}),
                      ("png", {"Software": None})):
        path = Path(figures_dir) / f"{name}.{ext}"
        atomic_write(path, lambda tmp, ext=ext, meta=meta: fig.savefig(tmp, format=ext, metadata=meta,
                                                                        bbox_inches="tight"))
        paths.append(path)
    return paths


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _math(text: str) -> str:
    """A `stats`-formatted number as LaTeX math: U+2212 and ± are not in LaTeX's default input
    encoding, stars become a superscript."""
    body = text.rstrip("*")
    starred = text[len(body):]
    body = body.replace(stats.MINUS, "-").replace(" ± ", r" \pm ").replace("n/a", r"\text{n/a}")
    return f"${body}^{{{starred}}}$" if starred else f"${body}$"


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and not pd.isna(v)


def latex_table(df, *, caption: str, label: str, pm=None, deltas=None, digits: int = 2, headers=None,
                formatters=None, float_format: str = "%.3f", na_rep: str = "--") -> str:
    """The booktabs LaTeX view of ``df`` (see the module docstring for ``pm`` and ``deltas``).

    ``headers`` maps column names to header text given as raw LaTeX (e.g. ``r"ForgetLP $\\downarrow$"``);
    other names, and all text cells, are escaped. ``formatters`` maps a column to a function
    returning its cell text (escaped). Plain float columns use ``float_format``.
    """
    pm, deltas, headers, formatters = dict(pm or {}), dict(deltas or {}), dict(headers or {}), dict(formatters or {})
    for kind, mapping in (("pm", pm), ("deltas", deltas)):
        for col, partner in mapping.items():
            missing = [c for c in (col, partner) if c not in df.columns]
            if missing:
                raise KeyError(f"save_table {kind}={{{col!r}: {partner!r}}}: no column(s) {missing} in the frame "
                               f"(columns: {list(df.columns)})")
    for col in list(headers) + list(formatters):
        if col not in df.columns:
            raise KeyError(f"save_table: no column {col!r} in the frame (columns: {list(df.columns)})")
    hidden = set(pm.values()) | set(deltas.values())
    shown = [c for c in df.columns if c not in hidden]
    cells, align = {}, []
    for col in shown:
        values = df[col]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if col in pm:
            cells[col] = [_math(stats.fmt_mean_std(m, s, digits)) if _finite(m) else na_rep
                          for m, s in zip(values, df[pm[col]])]
        elif col in deltas:
            cells[col] = [_math(stats.fmt_delta(d, p if _finite(p) else None, digits)) if _finite(d) else na_rep
                          for d, p in zip(values, df[deltas[col]])]
        elif col in formatters:
            cells[col] = [latex_escape(formatters[col](v)) for v in values]
        elif numeric and pd.api.types.is_float_dtype(values):
            cells[col] = [float_format % v if _finite(v) else na_rep for v in values]
        else:
            cells[col] = [latex_escape(v) if _finite(v) else na_rep for v in values]
        align.append("r" if numeric else "l")
    view = pd.DataFrame(cells, columns=shown)
    view.columns = [headers.get(c, latex_escape(c)) for c in shown]
    # escape=False: every cell and header was escaped (or deliberately formatted) above
    return view.to_latex(index=False, escape=False, column_format="".join(align), caption=caption, label=label)


def round_sig(value, sig: int = SIG_DIGITS):
    """``value`` rounded to ``sig`` significant digits; floats inside dicts, lists and tuples too
    (numpy scalars become Python numbers); NaN, inf, ints, bools and strings stay as they are."""
    import numpy as np

    if isinstance(value, dict):
        return {k: round_sig(v, sig) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_sig(v, sig) for v in value]
    if isinstance(value, np.generic) and not isinstance(value, (np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return float(f"{value:.{sig}g}") if math.isfinite(value) else value
    return value


def rounded_frame(df, sig: int = SIG_DIGITS):
    """A copy of ``df`` whose float columns are rounded to ``sig`` significant digits."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].map(lambda v: round_sig(v, sig))
    return out


def save_table(df, name: str, tables_dir, *, caption: str, label: str, pm=None, deltas=None, digits: int = 2,
               headers=None, formatters=None, float_format: str = "%.3f", index: bool = False,
               sig_digits: int = SIG_DIGITS) -> list[Path]:
    """``tables_dir/name.csv`` (every column, floats at ``sig_digits`` significant digits) and
    ``name.tex`` (booktabs view) from the same frame. Keyword arguments as in `latex_table`;
    ``index=True`` keeps the index as the first column of both."""
    if index:
        df = df.reset_index()
    csv = Path(tables_dir) / f"{name}.csv"
    exported = rounded_frame(df, sig_digits)  # pandas then writes each rounded float's shortest repr
    atomic_write(csv, lambda tmp: exported.to_csv(tmp, index=False, lineterminator="\n"))
    latex = latex_table(df, caption=caption, label=label, pm=pm, deltas=deltas, digits=digits, headers=headers,
                        formatters=formatters, float_format=float_format)
    tex = Path(tables_dir) / f"{name}.tex"
    atomic_write(tex, lambda tmp: Path(tmp).write_text(latex))
    return [csv, tex]


def save_json(obj, path, *, sig_digits: int = SIG_DIGITS) -> Path:
    """A small JSON result (a chosen coordinate, tuned hyper-parameters) that later notebooks
    read; floats at ``sig_digits`` significant digits, sorted keys, a trailing newline, written
    atomically."""
    import json

    text = json.dumps(round_sig(obj, sig_digits), indent=1, sort_keys=True, default=float) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def export_mismatches(now: str, then: str, kind: str, *, rtol: float = 1e-4, atol: float = 1e-5) -> list[str]:
    """Where two exports of one table (``kind`` "csv" or "json", as text) differ: strings and the
    shape exactly, numbers beyond ``atol + rtol * |then|``. Empty when they agree."""
    import io
    import json

    out = []
    if kind == "json":
        def walk(a, b, where):
            if isinstance(a, dict) and isinstance(b, dict):
                if a.keys() != b.keys():
                    out.append(f"{where}: keys {sorted(a)} != {sorted(b)}")
                for k in a.keys() & b.keys():
                    walk(a[k], b[k], f"{where}.{k}")
            elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                for i, (x, y) in enumerate(zip(a, b)):
                    walk(x, y, f"{where}[{i}]")
            elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
                if not (abs(a - b) <= atol + rtol * abs(b) or (math.isnan(a) and math.isnan(b))):
                    out.append(f"{where}: {a} != {b}")
            elif a != b:
                out.append(f"{where}: {a!r} != {b!r}")
        walk(json.loads(now), json.loads(then), "$")
        return out
    a, b = pd.read_csv(io.StringIO(now)), pd.read_csv(io.StringIO(then))
    if list(a.columns) != list(b.columns) or a.shape != b.shape:
        return [f"columns or shape changed: {list(a.columns)} {a.shape} vs {list(b.columns)} {b.shape}"]
    for c in a.columns:
        x, y = a[c], b[c]
        numeric = [pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v) for v in (x, y)]
        if all(numeric):  # flags (bool columns) fall through to the exact text comparison
            bad = ~((x - y).abs() <= atol + rtol * y.abs()) & ~(x.isna() & y.isna())
            out += [f"column {c} row {i}: {x[i]} != {y[i]}" for i in a.index[bad]]
        elif x.fillna("").astype(str).tolist() != y.fillna("").astype(str).tolist():
            out.append(f"column {c}: text changed")
    return out
