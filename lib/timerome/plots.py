"""Figure helpers shared by the notebooks: the house style, the TIE heatmaps, and axis/label tools.

Notebooks keep narrative, parameters, calls and exports; any plot logic more than one notebook
needs, or that is longer than a few lines, lives here. Saving is `report.save_figure`.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker, transforms  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from . import stats  # noqa: E402

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "legend.fontsize": 8, "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "timerome",
    "pdf.fonttype": 42,
}


def use_style():
    plt.rcParams.update(STYLE)


def tie_heatmaps(res, sel, *, title: str | None = None):
    """Fig. 2: per module, the mean |TIE| (top row, Eq. 5's magnitude) and the mean signed TIE
    (bottom row) over layer x denoising step; star: Eq. 5's argmax, box: the downstream layer
    (resid, every step). ``res`` a `TIEResult`, ``sel`` its `Selection`."""
    L, K, tau = res.n_layers, res.steps, res.settings["tau"]
    rows = {"abs": {m: res.heatmap(m, absolute=True) for m in res.modules},
            "signed": {m: res.heatmap(m) for m in res.modules}}
    fig, axes = plt.subplots(2, len(res.modules), figsize=(3.2 * len(res.modules) + 0.8, 2 * (0.32 * L + 1.3)),
                             sharex=True, sharey=True, constrained_layout=True, squeeze=False)
    for r, (kind, maps) in enumerate(rows.items()):
        vmax = max(np.abs(h).max() for h in maps.values()) or 1.0
        cmap, vmin = ("viridis", 0.0) if kind == "abs" else ("RdBu_r", -vmax)  # signed: symmetric around 0
        for ax, (m, h) in zip(axes[r], maps.items()):
            im = ax.imshow(h, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                           extent=(-0.5, K - 0.5, -0.5, L - 0.5))
            ax.set(xticks=range(K), title=m if r == 0 else None, xlabel="denoising step k" if r == 1 else None)
            if m == sel.best.module:
                ax.plot(sel.best.step, sel.best.layer, marker="*", ms=13, mfc="white", mec="black", mew=1.5,
                        label="Eq. 5 argmax" if r == 0 else None)
            if sel.paper is not None and m == sel.paper.module:
                ax.add_patch(Rectangle((-0.5, sel.paper.layer - 0.5), K, 1, fill=False, ec="black", lw=1.6))
        axes[r, 0].set(ylabel="layer ℓ", yticks=range(0, L, max(1, L // 8)))
        fig.colorbar(im, ax=axes[r], shrink=0.9,
                     label=("mean |TIE| (nats), Eq. 5" if kind == "abs" else "mean signed TIE (nats)") + f", τ = {tau:g}")
    if title:
        fig.suptitle(title)
    return fig


def _renderer(fig):
    fig.canvas.draw()  # positions (log scales, limits, tight layout) must be final before measuring text
    return fig.canvas.get_renderer()


def _overlap(a, b) -> float:
    """Area (display px²) of the intersection of two Bbox."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(ax, x, y, texts, *, fontsize: float = 6, colors=None, radii=(3, 6, 10, 15, 21),
                 marker_px: float = 6.0, avoid=(), **text_kw) -> list:
    """Annotate the points ``(x[i], y[i])`` with ``texts[i]`` so that no two labels overlap each
    other, any of the points, or the boxes in ``avoid`` (display-space `Bbox`, e.g. a legend's
    ``get_window_extent()``), and every label stays inside the axes.

    Greedy: each label in turn tries offsets on rings of ``radii`` points around its point (8
    directions each, nearest first) and takes the first that collides with nothing placed so far;
    if none is free it takes the one with the least overlap. Set the axis scales and limits
    *before* calling: the placement is done in display space. Returns the annotations.
    """
    fig = ax.figure
    renderer = _renderer(fig)
    x, y = list(x), list(y)
    texts = [str(t) for t in texts]
    colors = list(colors) if colors is not None else [None] * len(texts)
    to_px = fig.dpi / 72.0
    pts = ax.transData.transform(list(zip(x, y))) if x else []
    h = marker_px / 2
    taken = [transforms.Bbox([[px - h, py - h], [px + h, py + h]]) for px, py in pts]
    taken += list(avoid)
    frame = ax.get_window_extent(renderer)
    dirs = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    out = []
    for i, text in enumerate(texts):
        best = None
        for r in radii:
            for dx, dy in dirs:
                norm = math.hypot(dx, dy)
                off = (r * dx / norm, r * dy / norm)
                ha = "left" if dx > 0 else "right" if dx < 0 else "center"
                va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
                ann = ax.annotate(text, (x[i], y[i]), textcoords="offset points", xytext=off, ha=ha, va=va,
                                  fontsize=fontsize, color=colors[i], annotation_clip=False, **text_kw)
                box = ann.get_window_extent(renderer)
                cost = sum(_overlap(box, t) for t in taken)
                outside = max(0.0, frame.x0 - box.x0) + max(0.0, box.x1 - frame.x1) + \
                    max(0.0, frame.y0 - box.y0) + max(0.0, box.y1 - frame.y1)
                cost += outside * 1e3 + r * to_px * 1e-3  # prefer inside, then near
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, ann, box)
                else:
                    ann.remove()
            if best[0] < 1.0:  # free (the distance term alone is < 1 px²)
                break
        taken.append(best[2])
        out.append(best[1])
    return out


def signed_log_axis(ax, which: str = "x", *, negate: bool = True, invert: bool = False, label: str | None = None):
    """A log axis for quantities that are all negative (log-probabilities in nats): plot ``-v``
    (``negate=True``) on a log scale and label the ticks with the signed values ``v`` (−5, −50, …),
    so the reader reads the quantity itself while the spread over orders of magnitude stays
    visible. ``invert=True`` flips the direction (e.g. to keep "up = higher log-probability")."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    sign = -1 if negate else 1

    def fmt(v, _pos=None):
        if v <= 0:
            return ""
        s = f"{sign * v:g}"
        return s.replace("-", stats.MINUS)

    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 1-2-5 ticks: readable within a decade
    axis.set_major_formatter(ticker.FuncFormatter(fmt))
    axis.set_minor_formatter(ticker.NullFormatter())
    if invert:
        (ax.invert_xaxis if which == "x" else ax.invert_yaxis)()
    if label is not None:
        (ax.set_xlabel if which == "x" else ax.set_ylabel)(label)
    return ax


def linear_reference(ax, x0, y0, xs, *, slope: float = 1.0, label: str = "∝ |F| (linear)", **kw):
    """A dotted reference line y = y0 (x / x0)^slope over ``xs`` on a log-log axis (slope 1:
    proportional growth), for judging whether a measured curve is sub- or super-linear."""
    xs = np.asarray(sorted(xs), dtype=float)
    kw = {"color": "0.55", "ls": ":", "lw": 1.0, **kw}
    return ax.plot(xs, y0 * (xs / x0) ** slope, label=label, **kw)


EFFECT_COLORS = {"d_forget_lp": "#b2182b", "d_retain_lp": "#2166ac", "shift": "#4d4d4d"}


def effect_bars(ax, df, labels, columns=("d_forget_lp", "d_retain_lp"), *, names=None, title=None,
                xlabel="Δ log-prob vs no_edit (nats)", highlight=None):
    """Horizontal bars of ``df[columns]`` (one group per row, labelled ``df[labels]``, top to bottom),
    each with its 95% CI (``<column>_lo`` / ``<column>_hi``) as a whisker and its value printed at
    the bar's end. ``names``: legend text per column; ``highlight``: a boolean column whose rows'
    labels are drawn in bold (e.g. a panel's reference edit)."""
    n, k = len(df), len(columns)
    h = 0.8 / k
    y = np.arange(n)[::-1]
    for j, c in enumerate(columns):
        v = df[c].to_numpy(dtype=float)
        pos = y + (k - 1 - 2 * j) * h / 2
        err = None
        if f"{c}_lo" in df and f"{c}_hi" in df:
            err = np.abs(np.vstack([v - df[f"{c}_lo"].to_numpy(dtype=float), df[f"{c}_hi"].to_numpy(dtype=float) - v]))
        ax.barh(pos, v, height=h, color=EFFECT_COLORS.get(c, f"C{j}"), xerr=err, ecolor="0.3", capsize=1.5,
                error_kw={"lw": 0.7}, label=(names or {}).get(c, c))
        ends = v if err is None else np.where(v >= 0, v + err[1], v - err[0])  # print beyond the whisker
        for p_, vi, end in zip(pos, v, ends):
            if np.isfinite(vi):
                ax.annotate(f"{vi:+.2f}".replace("-", stats.MINUS), (end, p_), xytext=(2 if vi >= 0 else -2, 0),
                            textcoords="offset points", ha="left" if vi >= 0 else "right", va="center", fontsize=6)
    ax.axvline(0, color="0.2", lw=0.6)
    ax.set_yticks(y, df[labels].astype(str).tolist())
    if highlight is not None:
        for t, bold in zip(ax.get_yticklabels(), df[highlight].to_numpy(dtype=bool)):
            t.set_fontweight("bold" if bold else "normal")
    ax.set_xlabel(xlabel)
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo - 0.18 * (hi - lo), hi + 0.18 * (hi - lo))  # room for the printed values
    if title:
        ax.set_title(title, loc="left")
    return ax


def radar(ax, labels, series, *, colors=None, fill=0.12):
    """A radar chart on a polar ``ax``: one closed polygon per ``series`` entry (name -> radii in
    [0, 1], one per label, NaN drawn at 0 and marked "n/a" in its label), radial grid at 0.25 steps."""
    n = len(labels)
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    closed = np.concatenate([ang, ang[:1]])
    missing = set()
    for j, (name, r) in enumerate(series.items()):
        r = np.asarray(r, dtype=float)
        missing |= {i for i in range(n) if not np.isfinite(r[i])}
        r = np.nan_to_num(r, nan=0.0)
        c = (colors or {}).get(name, f"C{j}")
        ax.plot(closed, np.concatenate([r, r[:1]]), color=c, lw=1.4, marker="o", ms=3, label=name)
        ax.fill(closed, np.concatenate([r, r[:1]]), color=c, alpha=fill)
    ax.set_xticks(ang, [lab + (" (n/a)" if i in missing else "") for i, lab in enumerate(labels)])
    ax.set_ylim(0, 1.05)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0], ["", "0.5", "", "1"], fontsize=6)
    ax.spines["polar"].set_visible(False)
    return ax
