"""Exports: one figure style, figures as PDF + PNG, tables as CSV (full precision) + LaTeX.

Outputs are written atomically (temp file in the same folder, then rename) and without
timestamps, so re-running a notebook on the same machine gives byte-identical files and a crash
or Ctrl-C never leaves a half-written one.

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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from timerome import stats  # noqa: E402

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "legend.fontsize": 8, "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "timerome",
    "pdf.fonttype": 42,
}


def use_style():
    plt.rcParams.update(STYLE)


def atomic_write(path, write) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX, so readers see the old file or the new one, never a part.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
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


def save_table(df, name: str, tables_dir, *, caption: str, label: str, pm=None, deltas=None, digits: int = 2,
               headers=None, formatters=None, float_format: str = "%.3f", index: bool = False) -> list[Path]:
    """``tables_dir/name.csv`` (every column, full float precision) and ``name.tex`` (booktabs view)
    from the same frame. Keyword arguments as in `latex_table`; ``index=True`` keeps the index as
    the first column of both."""
    if index:
        df = df.reset_index()
    csv = Path(tables_dir) / f"{name}.csv"
    # no float_format: pandas writes the shortest repr that round-trips, i.e. full precision
    atomic_write(csv, lambda tmp: df.to_csv(tmp, index=False, lineterminator="\n"))
    latex = latex_table(df, caption=caption, label=label, pm=pm, deltas=deltas, digits=digits, headers=headers,
                        formatters=formatters, float_format=float_format)
    tex = Path(tables_dir) / f"{name}.tex"
    atomic_write(tex, lambda tmp: Path(tmp).write_text(latex))
    return [csv, tex]


def save_json(obj, path) -> Path:
    """A small JSON result (a chosen coordinate, tuned hyper-parameters) that later notebooks
    read; sorted keys and a trailing newline, written atomically."""
    import json

    text = json.dumps(obj, indent=1, sort_keys=True, default=float) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
