"""TimeROME's hyperparameters as typed data (cf. ROME's ``HyperParams.from_json``).

The tracing notebook (01) writes where to edit (layer, module, steps); the tuning notebook (02)
adds λ and the (α, q) it was tuned at; every later notebook loads the file instead of reading
loose JSON. ``provenance`` records how each value was chosen (rules, fact ids) and is saved with
it, but never changes an edit.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .backbones import MODULES
from .capture import DEFAULT_TARGET

FORMAT, VERSION = "timerome-hparams", 1


@dataclass(frozen=True)
class TimeROMEHParams:
    backbone: str
    layer: int
    module: str = "resid"
    steps: tuple | None = None  # denoising steps the edit acts at; None: every step (the paper's k* = -1)
    lam_relative: float | None = None  # λ in units of the memory's mean |u|^2; None: not tuned yet
    alpha: float = 1.0
    q: int = 0  # TopQ; 0: dense
    target: str = DEFAULT_TARGET
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"TimeROMEHParams.{name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.backbone, str):
            bad("backbone", "must be a string (the backbone's name)")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            bad("layer", "must be an integer >= 0")
        if self.module not in MODULES:
            bad("module", f"must be one of {MODULES}")
        if self.steps is not None:
            steps = (self.steps,) if isinstance(self.steps, int) else self.steps
            if isinstance(steps, (str, bytes)) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0
                                                          for k in steps) or not len(steps):
                bad("steps", "must be None (every step) or non-empty non-negative step indices")
            object.__setattr__(self, "steps", tuple(sorted(set(steps))))
        if self.lam_relative is not None and (isinstance(self.lam_relative, bool)
                                              or not isinstance(self.lam_relative, (int, float))
                                              or not math.isfinite(self.lam_relative) or self.lam_relative <= 0):
            bad("lam_relative", "must be None (not tuned) or a finite number > 0")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha):
            bad("alpha", "must be a finite number")
        if isinstance(self.q, bool) or not isinstance(self.q, int) or self.q < 0:
            bad("q", "must be an integer >= 0 (0 = dense)")
        if not isinstance(self.target, str) or not self.target:
            bad("target", "must be a non-empty string")
        if not isinstance(self.provenance, dict):
            bad("provenance", "must be a dict")

    def replace(self, **changes) -> "TimeROMEHParams":
        return replace(self, **changes)

    def require_tuned(self, source="these hyperparameters") -> "TimeROMEHParams":
        if self.lam_relative is None:
            raise ValueError(f"{source} have no tuned lambda (lam_relative is None): run 02_canonical_tofu first")
        return self

    def build_memory(self, backbone, facts, *, skip_unlocatable: bool = True, batch_size: int = 32, frame=None,
                     **changes):
        """`EditMemory.build` with these hyperparameters (``changes``: fields to override, e.g. alpha=2;
        ``frame``: a `timerome.keyframe.KeyFrame`, the centring/whitening extension, default none)."""
        from .memory import EditMemory

        hp = self.replace(**changes).require_tuned()
        if hp.steps is not None:
            raise ValueError("a step-restricted edit is installed with EditMemory.installed(..., steps=hp.steps)")
        return EditMemory.build(backbone, facts, hp.layer, module=hp.module, target=hp.target,
                                lam_relative=hp.lam_relative, alpha=hp.alpha, q=hp.q, batch_size=batch_size,
                                skip_unlocatable=skip_unlocatable, frame=frame)

    # --- files --------------------------------------------------------------------------------
    def save(self, path) -> Path:
        from .report import save_json

        d = asdict(self)
        d["steps"] = -1 if self.steps is None else list(self.steps)  # the paper's k* = -1: every step
        return save_json({"format": FORMAT, "version": VERSION, **d}, path)

    @classmethod
    def load(cls, path, *, tuned: bool = False) -> "TimeROMEHParams":
        """Read a saved file; a missing/unknown field or a bad value is an error naming the file.
        ``tuned``: also require λ (files written by the tuning notebook)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no hyperparameter file (written by 01_tie_heatmaps / 02_canonical_tofu)") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError(f"{path}: not a {FORMAT} v{VERSION} file")
        body = {k: v for k, v in d.items() if k not in ("format", "version")}
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(body) - names), [n for n in ("backbone", "layer") if n not in body]
        if unknown or missing:
            raise ValueError(f"{path}: " + "; ".join(
                ([f"unknown field(s) {unknown}"] if unknown else []) + ([f"missing field(s) {missing}"] if missing else [])))
        if body.get("steps") == -1:
            body["steps"] = None
        elif isinstance(body.get("steps"), list):
            body["steps"] = tuple(body["steps"])
        try:
            hp = cls(**body)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return hp.require_tuned(str(path)) if tuned else hp
