"""The main job: execute every notebook with papermill under one parameter profile.

    python -m timerome.run                       # all notebooks, profile "tiny"
    python -m timerome.run 01_tie_heatmaps       # a selection (names or globs)
    python -m timerome.run --profile paper       # real backbones, GPU

Parameters come from ``params/<profile>/<notebook>.yaml``. The tiny profile executes the
notebooks in place (the committed notebooks are its executed copies) and exports to
``figures/`` and ``tables/``; any other profile writes to ``runs/<profile>/``.
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import os
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = "tiny"


def notebooks(repo: Path = REPO) -> list[Path]:
    return sorted((repo / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def load_params(nb: Path, profile: str, repo: Path = REPO) -> dict:
    path = repo / "params" / profile / f"{nb.stem}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no parameter file for notebook {nb.name} in profile {profile!r}: expected {path}")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path}: top level must be a mapping of parameter names to values, got {type(params).__name__}")
    validate_params(nb, params, path)
    return params


def notebook_parameters(nb: Path) -> dict:
    """Defaults of the notebook's one cell tagged ``parameters`` (literal assignments only)."""
    import nbformat

    cells = [c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{nb.name}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    defaults = {}
    for node in ast.parse(cells[0].source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{nb.name}: parameters cell line {node.lineno} is not a plain `name = literal`")
        defaults[node.targets[0].id] = ast.literal_eval(node.value)
    return defaults


def _type_ok(default, value) -> bool:
    if default is None or value is None:
        return True  # None means "unset": any type may replace it
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
    return isinstance(value, type(default))


def validate_params(nb: Path, params: dict, source: Path | str = "params") -> None:
    """Unknown names and wrong types fail before anything runs, naming the file and the key."""
    defaults = notebook_parameters(nb)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"{source}: unknown parameter(s) {unknown} for {nb.name}; it accepts {sorted(defaults)}")
    for key, value in params.items():
        if not _type_ok(defaults[key], value):
            raise TypeError(f"{source}: parameter {key!r} of {nb.name} must be {type(defaults[key]).__name__} "
                            f"(default {defaults[key]!r}), got {type(value).__name__} {value!r}")


def output_dirs(profile: str, repo: Path = REPO) -> dict[str, Path]:
    if profile == DEFAULT_PROFILE:
        return {"notebooks": repo / "notebooks", "figures": repo / "figures", "tables": repo / "tables"}
    base = repo / "runs" / profile
    return {"notebooks": base / "notebooks", "figures": base / "figures", "tables": base / "tables"}


def select(names: list[str], repo: Path = REPO) -> list[Path]:
    nbs = notebooks(repo)
    if not names:
        return nbs
    chosen = []
    for name in names:
        hits = [nb for nb in nbs if fnmatch.fnmatch(nb.stem, name) or nb.stem.startswith(name)]
        if not hits:
            raise SystemExit(f"no notebook matches {name!r}; available: {', '.join(nb.stem for nb in nbs)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def execute(nb: Path, params: dict, dirs: dict[str, Path], *, log_output=False) -> float:
    import papermill as pm

    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    # relative to the notebook, so the executed copy re-runs from any checkout (nbval in CI)
    rel = lambda d: os.path.relpath(d, nb.parent)
    params = {**params, "figures_dir": rel(dirs["figures"]), "tables_dir": rel(dirs["tables"])}
    t0 = time.perf_counter()
    pm.execute_notebook(str(nb), str(dirs["notebooks"] / nb.name), parameters=params, cwd=str(nb.parent),
                        kernel_name="python3", progress_bar=False, log_output=log_output)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m timerome.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebook names or globs (default: all)")
    ap.add_argument("--profile", default=DEFAULT_PROFILE, help="parameter profile under params/ (default: tiny)")
    ap.add_argument("--log-output", action="store_true", help="stream cell output while executing")
    args = ap.parse_args(argv)

    if not (REPO / "params" / args.profile).is_dir():
        raise SystemExit(f"unknown profile {args.profile!r}: no directory {REPO / 'params' / args.profile}")
    chosen = select(args.notebooks)
    all_params = {nb: load_params(nb, args.profile) for nb in chosen}  # all files checked before any run
    dirs = output_dirs(args.profile)
    shared = REPO.parent / "shared" / "data"
    if "TIMEROME_DATA" not in os.environ and shared.is_dir():  # the checkout's sibling data, if any
        os.environ["TIMEROME_DATA"] = str(shared)
    failed = []
    for i, nb in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {nb.stem} (profile {args.profile}) ...", flush=True)
        try:
            seconds = execute(nb, all_params[nb], dirs, log_output=args.log_output)
            print(f"[{i}/{len(chosen)}] {nb.stem} done in {seconds:.1f} s", flush=True)
        except Exception as exc:  # report and go on with the others
            failed.append(nb.stem)
            print(f"[{i}/{len(chosen)}] {nb.stem} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} notebook(s) failed: {', '.join(failed)}")
    print(f"all {len(chosen)} notebook(s) done; figures in {dirs['figures']}, tables in {dirs['tables']}")


if __name__ == "__main__":
    main()
