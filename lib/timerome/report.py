"""Exports: one figure style, figures as PDF + PNG, tables as CSV (full precision) + LaTeX.

Outputs are written atomically (temp file, then rename) and without timestamps, so re-running
a notebook on the same machine gives byte-identical files.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "legend.fontsize": 8, "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "timerome",
    "pdf.fonttype": 42,
}


def use_style():
    plt.rcParams.update(STYLE)


def _atomic_write(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig, name: str, figures_dir) -> list[Path]:
    """``figures_dir/name.pdf`` and ``.png``, with no timestamps in the metadata."""
    paths = []
    for ext, meta in (("pdf", {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}),
                      ("png", {"Software": None})):
        path = Path(figures_dir) / f"{name}.{ext}"
        _atomic_write(path, lambda tmp, ext=ext, meta=meta: fig.savefig(tmp, format=ext, metadata=meta,
                                                                         bbox_inches="tight"))
        paths.append(path)
    return paths


def save_table(df, name: str, tables_dir, *, caption: str, label: str, formatters=None, index=False) -> list[Path]:
    """``tables_dir/name.csv`` (full precision) and ``name.tex`` (booktabs) from the same frame."""
    csv = Path(tables_dir) / f"{name}.csv"
    _atomic_write(csv, lambda tmp: df.to_csv(tmp, index=index, float_format="%.10g"))
    latex = df.to_latex(index=index, formatters=formatters, escape=True, caption=caption, label=label,
                        float_format="%.3f")  # pandas' to_latex uses booktabs rules
    tex = Path(tables_dir) / f"{name}.tex"
    _atomic_write(tex, lambda tmp: Path(tmp).write_text(latex))
    return [csv, tex]
