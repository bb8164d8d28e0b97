"""The main job: execute notebooks with papermill under one parameter profile, and sweeps.

    python -m timerome.run                       # all notebooks, profile "tiny", then the claims ledger
    python -m timerome.run 01_tie_heatmaps       # a selection (names, prefixes or globs)
    python -m timerome.run --profile paper       # real backbones, GPU
    python -m timerome.run 02 --jobs 4           # a sweep's runs on 4 local workers
    python -m timerome.run 02 --slurm --gpus 1   # ... or one Slurm job per run (submitit)
    python -m timerome.run --list                # what would run, what is up to date

Parameters come from ``params/<profile>/<notebook>.yaml`` and are checked against the
notebook's ``parameters`` cell before anything runs. A file may add a sweep::

    alpha: 1.0
    grid: {seed: [0, 1, 2], q: [2, 4]}      # 6 runs: every combination

Where things go:

* plain file, profile ``tiny``: the notebook executes in place (the committed notebooks are its
  executed copies) and exports to ``figures/`` and ``tables/``;
* plain file, another profile: ``runs/<profile>/notebooks/``, ``runs/<profile>/{figures,tables}/``;
* grid: each run in ``runs/<profile>/<notebook>/<run-id>/`` (executed notebook, figures/, tables/).

Every run leaves a ``manifest.json`` (params, key, git commit, package versions, machine, wall
time, status, outputs) and a ``log.txt`` in its record folder (``runs/<profile>/<notebook>/`` for
a plain file, the run folder for a grid run). A run whose manifest says ``ok`` under the same key
is skipped; the key hashes the notebook's code, the run's params, the library source under
``lib/``, the model weights its params name, and the tables of earlier notebooks it reads. So an
interrupted sweep resumes where it stopped (``--force`` re-runs anyway). A failed run is
reported with its log and the others go on; the exit status is non-zero if any failed. After
runs that all succeeded, the claims ledger (``params/claims.yaml`` -> ``claims.{md,csv}`` in the
profile's tables folder) is rebuilt from the tables they wrote (``--no-claims`` skips it).
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import hashlib
import itertools
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import nbformat
import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = "tiny"
GRID = "grid"  # reserved top-level key of a parameter file
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
PACKAGES = ("timerome", "torch", "transformers", "numpy", "scipy", "pandas", "matplotlib", "papermill",
            "nbclient", "ipykernel", "submitit")


# --- notebooks and their parameters ------------------------------------------------------------

def notebooks(repo: Path = REPO) -> list[Path]:
    return sorted((repo / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def params_file(nb: Path, profile: str, repo: Path = REPO) -> Path:
    return repo / "params" / profile / f"{nb.stem}.yaml"


def load_params(nb: Path, profile: str, repo: Path = REPO) -> dict:
    """The validated parameter file of ``nb`` (a ``grid`` entry, if any, is kept as is)."""
    path = params_file(nb, profile, repo)
    if not path.exists():
        raise FileNotFoundError(f"no parameter file for notebook {nb.name} in profile {profile!r}: expected {path}")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path}: top level must be a mapping of parameter names to values, got {type(params).__name__}")
    validate_params(nb, {k: v for k, v in params.items() if k != GRID}, path)
    if GRID in params:
        validate_grid(nb, params, path)
    return params


def notebook_parameters(nb: Path) -> dict:
    """Defaults of the notebook's one cell tagged ``parameters`` (literal assignments only)."""
    cells = [c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{nb.name}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    defaults = {}
    for node in ast.parse(cells[0].source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{nb.name}: parameters cell line {node.lineno} is not a plain `name = literal`")
        defaults[node.targets[0].id] = ast.literal_eval(node.value)
    if GRID in defaults:
        raise ValueError(f"{nb.name}: a notebook parameter may not be called {GRID!r} (reserved for sweeps)")
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


def validate_grid(nb: Path, params: dict, source: Path | str = "params") -> None:
    grid = params[GRID]
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"{source}: {GRID!r} must be a non-empty mapping of parameter -> list of values, "
                         f"got {grid!r}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{source}: {GRID}.{key} must be a non-empty list of values, got {values!r}")
        if key in params:
            raise ValueError(f"{source}: {key!r} is both a fixed parameter and a {GRID} axis; keep one")
        for v in values:
            validate_params(nb, {key: v}, f"{source} ({GRID}.{key})")


def _slug(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[:40] or "x"


def expand_grid(params: dict) -> list[tuple[str | None, dict]]:
    """``[(run_id, params)]``: one ``(None, params)`` for a plain file, else every combination of
    the grid axes (in file order) on top of the fixed parameters. Run ids read ``seed-0_q-2``;
    values that would give clashing ids get a short hash."""
    if GRID not in params:
        return [(None, dict(params))]
    fixed = {k: v for k, v in params.items() if k != GRID}
    axes = list(params[GRID].items())
    runs = []
    for combo in itertools.product(*(values for _, values in axes)):
        point = {k: v for (k, _), v in zip(axes, combo)}
        runs.append(("_".join(f"{_slug(k)}-{_slug(v)}" for k, v in point.items()), {**fixed, **point}))
    ids = [rid for rid, _ in runs]
    return [(rid if ids.count(rid) == 1 else f"{rid}_{_digest(p)[:8]}", p) for rid, p in runs]


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


def output_dirs(profile: str, repo: Path = REPO) -> dict[str, Path]:
    """The shared folders of a profile's plain (non-grid) runs."""
    if profile == DEFAULT_PROFILE:
        return {"notebooks": repo / "notebooks", "figures": repo / "figures", "tables": repo / "tables"}
    base = repo / "runs" / profile
    return {"notebooks": base / "notebooks", "figures": base / "figures", "tables": base / "tables"}


# --- the up-to-date key ------------------------------------------------------------------------

def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_hash(path: Path, whole_below: int = 256 << 20) -> str:
    """sha256 of the file; above ``whole_below`` bytes (8B checkpoints) of its size, head and tail,
    which a re-trained checkpoint of the same shape still changes (its first and last tensors)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= whole_below:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(f.read(4 << 20))
            f.seek(size - (4 << 20))
            h.update(f.read())
    return h.hexdigest()


def notebook_code_hash(nb: Path) -> str:
    """Hash of the code cells only: outputs, markdown and papermill's injected cell do not change
    results (and the tiny profile rewrites its notebooks in place)."""
    cells = [c.source for c in nbformat.read(nb, as_version=4).cells
             if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    return _digest(cells)


def library_hash(repo: Path = REPO) -> str:
    files = sorted(p for p in (repo / "lib").rglob("*.py") if "__pycache__" not in p.parts)
    return _digest({str(p.relative_to(repo)): file_hash(p) for p in files})


def weights_used(params: dict, nb: Path, repo: Path = REPO) -> dict[str, str]:
    """Weight files named by the params: an embedded model name (``tiny-mdlm``) or a local file
    or folder of ``*.safetensors``/``*.bin``/... (relative to the notebook, as the kernel sees
    it). Hub ids are part of the params themselves."""
    found = {}

    def visit(v):
        if isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)
        elif isinstance(v, str) and v and len(v) < 1000 and "\n" not in v:
            for path in (repo / "lib" / "timerome" / "weights" / v, nb.parent / v):
                files = [path] if path.is_file() else sorted(path.iterdir()) if path.is_dir() else []
                files = [f for f in files if f.is_file() and f.suffix in WEIGHT_SUFFIXES]
                for f in files:
                    found[os.path.relpath(f, repo)] = file_hash(f)
                if files:
                    return

    visit(params)
    return dict(sorted(found.items()))


def upstream_inputs(nb: Path, profile: str, repo: Path = REPO) -> dict[str, str]:
    """Files that earlier notebooks exported (per their manifests) and that this notebook's code
    names literally, e.g. ``tables_dir / "tie_coordinate.json"``: ``{path: hash or "missing"}``."""
    code = "\n".join(c.source for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code")
    inputs = {}
    for earlier in notebooks(repo):
        if earlier.stem >= nb.stem:
            break
        manifest = read_manifest(record_dir(earlier, profile, None, repo))
        for out in (manifest or {}).get("outputs", []):
            path = repo / out
            if path.name in code:
                inputs[out] = file_hash(path) if path.is_file() else "missing"
    return inputs


# --- runs --------------------------------------------------------------------------------------

@dataclass
class Run:
    repo: Path
    notebook: Path
    profile: str
    run_id: str | None          # None: the plain (non-grid) run
    params: dict                # as given to papermill, incl. figures_dir / tables_dir
    executed: Path              # where the executed notebook goes
    figures: Path
    tables: Path
    record: Path                # manifest.json and log.txt
    key_parts: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)  # upstream files copied into a grid run's tables/

    @property
    def name(self) -> str:
        return self.notebook.stem + (f"/{self.run_id}" if self.run_id else "")

    @property
    def key(self) -> str:
        return _digest(self.key_parts)

    @property
    def log(self) -> Path:
        return self.record / "log.txt"


def record_dir(nb: Path, profile: str, run_id: str | None, repo: Path = REPO) -> Path:
    base = repo / "runs" / profile / nb.stem
    return base / run_id if run_id else base


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # never run, or unreadable: run again


def plan(nb: Path, profile: str, params: dict, repo: Path = REPO, lib_hash: str | None = None) -> list[Run]:
    """The runs of one notebook, with their folders and up-to-date keys (nothing executes)."""
    lib_hash = lib_hash or library_hash(repo)
    code, defaults = notebook_code_hash(nb), notebook_parameters(nb)
    inputs = upstream_inputs(nb, profile, repo)
    shared = output_dirs(profile, repo)
    runs = []
    for run_id, p in expand_grid(params):
        if run_id is None:
            executed, figures, tables = shared["notebooks"] / nb.name, shared["figures"], shared["tables"]
        else:
            base = record_dir(nb, profile, run_id, repo)
            executed, figures, tables = base / nb.name, base / "figures", base / "tables"
        # relative to the notebook, so the executed copy re-runs from any checkout (nbval in CI)
        p = {**p, "figures_dir": os.path.relpath(figures, nb.parent), "tables_dir": os.path.relpath(tables, nb.parent)}
        key_parts = {"notebook": code, "params": p, "lib": lib_hash,
                     "weights": weights_used({**defaults, **p}, nb, repo), "inputs": inputs}
        runs.append(Run(repo, nb, profile, run_id, p, executed, figures, tables, record_dir(nb, profile, run_id, repo),
                        key_parts, inputs if run_id else {}))
    return runs


def up_to_date(run: Run) -> bool:
    m = read_manifest(run.record)
    return bool(m) and m.get("status") == "ok" and m.get("key") == run.key and run.executed.exists()


# --- provenance --------------------------------------------------------------------------------

def git_commit(repo: Path = REPO) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def machine() -> dict:
    return {"host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def write_manifest(run: Run, **fields) -> dict:
    from timerome.report import atomic_write  # here, not at the top: it imports matplotlib
    manifest = {"run": run.name, "notebook": run.notebook.name, "profile": run.profile, "run_id": run.run_id,
                "params": run.params, "key": run.key, "key_parts": run.key_parts,
                "executed_notebook": str(run.executed), "log": str(run.log), **fields}
    atomic_write(run.record / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1) + "\n"))
    return manifest


# --- execution ---------------------------------------------------------------------------------

def _files(folders, since_ns: int = 0) -> list[Path]:
    return sorted(f for d in folders if d.is_dir() for f in d.iterdir()
                  if f.is_file() and not f.name.startswith(".") and f.stat().st_mtime_ns >= since_ns)


def execute_run(run: Run) -> dict:
    """Execute one run and return its manifest; an error in the notebook is recorded, not raised.

    The manifest says ``running`` until the end, so a crash or Ctrl-C leaves a run that the next
    invocation repeats. The notebook executes into a partial file beside the log and replaces the
    executed copy only once it finished, so the executed copy is never half-run.
    """
    import papermill as pm

    from timerome.report import atomic_write

    repo = run.repo
    run.record.mkdir(parents=True, exist_ok=True)
    for d in (run.executed.parent, run.figures, run.tables):
        d.mkdir(parents=True, exist_ok=True)
    for src in run.inputs:  # a grid run reads earlier notebooks' tables from its own tables/
        shutil.copy2(repo / src, run.tables / Path(src).name)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_manifest(run, status="running", started=started, git_commit=git_commit(repo),
                   packages=package_versions(), machine=machine())
    partial = run.record / f"{run.notebook.stem}.partial.ipynb"
    handler = logging.FileHandler(run.log, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("papermill")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    t0_ns, t0 = time.time_ns(), time.perf_counter()
    status, error = "ok", None
    try:
        pm.execute_notebook(str(run.notebook), str(partial), parameters=run.params, cwd=str(run.notebook.parent),
                            kernel_name="python3", language="python", progress_bar=False, log_output=True)
        done = nbformat.read(partial, as_version=4)
        done.metadata.setdefault("papermill", {})["output_path"] = str(run.executed)  # not the partial file
        atomic_write(run.executed, lambda tmp: nbformat.write(done, tmp))
        partial.unlink()
    except Exception as exc:  # the notebook failed: record it, the other runs go on
        status, error = "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        logger.error(traceback.format_exc())
    finally:
        logger.removeHandler(handler)
        handler.close()
    wall = time.perf_counter() - t0
    outputs = [os.path.relpath(f, repo) for f in _files({run.figures, run.tables}, since_ns=t0_ns)]
    fields = dict(status=status, started=started, wall_s=round(wall, 3), git_commit=git_commit(repo),
                  packages=package_versions(), machine=machine(), outputs=outputs)
    if error:
        fields.update(error=error, partial_notebook=str(partial))
    return write_manifest(run, **fields)


def _failed_manifest(run: Run, exc: BaseException, log: Path | None = None) -> dict:
    """The worker itself died (killed, out of memory, Slurm time limit): say so in the manifest."""
    return write_manifest(run, status="failed", error=f"{type(exc).__name__}: {exc}".strip()[:2000],
                          worker_log=str(log) if log else None)


def run_local(runs: list[Run], jobs: int = 1, progress=None) -> list[dict]:
    """Runs in this process (``jobs=1``) or on ``jobs`` worker processes."""
    if jobs <= 1:
        results = []
        for r in runs:
            results.append(execute_run(r))
            progress and progress(results[-1])
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results = {}
    # spawn, not fork: a forked copy of a process that holds threads (torch, zmq) can deadlock
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(execute_run, r): r for r in runs}
        try:
            for fut in as_completed(futures):
                r = futures[fut]
                try:
                    results[r.name] = fut.result()
                except Exception as exc:
                    results[r.name] = _failed_manifest(r, exc)
                progress and progress(results[r.name])
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return [results[r.name] for r in runs]


def run_submitit(runs: list[Run], folder: Path, *, cluster: str | None = None, jobs: int = 0,
                 slurm: dict | None = None, progress=None, poll_s: float = 1.0) -> list[dict]:
    """One job per run through submitit: ``cluster="slurm"`` (a job array), ``"local"`` (local
    processes, used in the tests) or None (Slurm when available, else local). ``jobs`` caps how
    many run at once (0: no cap); ``slurm`` holds executor parameters (``timeout_min``,
    ``gpus_per_node``, ``slurm_partition``, ...)."""
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = {"timeout_min": 240, "name": "timerome", **(slurm or {})}
    if jobs:
        params["slurm_array_parallelism"] = jobs
    ex.update_parameters(**params)
    submitted = ex.map_array(execute_run, runs)
    results = {}
    try:
        while len(results) < len(runs):
            for r, job in zip(runs, submitted):
                if r.name in results or not job.done():
                    continue
                try:
                    results[r.name] = job.result()
                except Exception as exc:
                    results[r.name] = _failed_manifest(r, exc, job.paths.stderr)
                progress and progress(results[r.name])
            time.sleep(0 if len(results) == len(runs) else poll_s)
    except BaseException:
        for r, job in zip(runs, submitted):
            if r.name not in results:
                job.cancel(check=False)
        raise
    return [results[r.name] for r in runs]


# --- command line ------------------------------------------------------------------------------

def main(argv=None, repo: Path = REPO):
    ap = argparse.ArgumentParser(prog="python -m timerome.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebook names, prefixes or globs (default: all)")
    ap.add_argument("--profile", default=DEFAULT_PROFILE, help="parameter profile under params/ (default: tiny)")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="runs executed at once (default 1)")
    ap.add_argument("--force", action="store_true", help="re-run runs that are up to date")
    ap.add_argument("--list", action="store_true", help="list the runs and whether they are up to date; run nothing")
    ap.add_argument("--slurm", action="store_true", help="submit each run as a Slurm job through submitit")
    ap.add_argument("--submitit-local", action="store_true", help="submitit's local executor (for testing)")
    ap.add_argument("--partition", help="Slurm partition")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs per run (Slurm)")
    ap.add_argument("--cpus", type=int, default=4, help="CPUs per run (Slurm)")
    ap.add_argument("--timeout-min", type=int, default=240, help="time limit per run in minutes (Slurm)")
    ap.add_argument("--log-output", action="store_true", help="print each run's cell output when it ends")
    ap.add_argument("--no-claims", action="store_true", help="do not rebuild the claims ledger after the runs")
    args = ap.parse_args(argv)

    if not (repo / "params" / args.profile).is_dir():
        raise SystemExit(f"unknown profile {args.profile!r}: no directory {repo / 'params' / args.profile}")
    chosen = select(args.notebooks, repo)
    all_params = {nb: load_params(nb, args.profile, repo) for nb in chosen}  # all files checked before any run
    shared = repo.parent / "shared" / "data"
    if "TIMEROME_DATA" not in os.environ and shared.is_dir():  # the checkout's sibling data, if any
        os.environ["TIMEROME_DATA"] = str(shared)
    from tqdm import tqdm

    lib_hash = library_hash(repo)
    failed, n_done, n_skipped, t0 = [], 0, 0, time.perf_counter()
    # notebooks in order, each one's runs in parallel: later notebooks read earlier ones' tables
    for nb in chosen:
        runs = plan(nb, args.profile, all_params[nb], repo, lib_hash)  # after the earlier ones ran: their outputs
        todo = [r for r in runs if args.force or not up_to_date(r)]
        n_skipped += len(runs) - len(todo)
        if args.list:
            for r in runs:
                print(f"{'run ' if r in todo else 'ok  '} {r.name:50s} {r.record}")
            continue
        if not todo:
            print(f"{nb.stem}: {len(runs)} run(s) up to date", flush=True)
            continue
        bar = tqdm(total=len(todo), desc=f"{nb.stem} ({args.profile})", unit="run", file=sys.stdout)

        def progress(m, bar=bar):
            if m["status"] != "ok":
                where = m.get("worker_log") or m["log"]
                bar.write(f"FAILED {m['run']}: {m.get('error')}\n"
                          f"       log: {where}")
            bar.update(1)

        if args.slurm or args.submitit_local:
            slurm = {"timeout_min": args.timeout_min, "gpus_per_node": args.gpus, "cpus_per_task": args.cpus,
                     **({"slurm_partition": args.partition} if args.partition else {})}
            results = run_submitit(todo, repo / "runs" / args.profile / "submitit",
                                   cluster="local" if args.submitit_local else "slurm", jobs=args.jobs,
                                   slurm=slurm, progress=progress)
        else:
            results = run_local(todo, args.jobs, progress)
        bar.close()
        n_done += len(results)
        failed += [f"{m['run']} (log: {m.get('worker_log') or m['log']})"
                   for m in results if m["status"] != "ok"]
        if args.log_output:
            for r in todo:
                print(r.log.read_text() if r.log.exists() else "", flush=True)
    if args.list:
        return
    wall = time.perf_counter() - t0
    summary = f"{n_done} run(s) executed, {n_skipped} up to date, in {wall:.1f} s"
    if failed:
        raise SystemExit(f"{summary}; {len(failed)} failed:\n  " + "\n  ".join(failed))
    dirs = output_dirs(args.profile, repo)
    print(f"{summary}; figures in {dirs['figures']}, tables in {dirs['tables']} (sweeps: runs/{args.profile}/)")
    spec = repo / "params" / "claims.yaml"
    if spec.is_file() and not args.no_claims:  # the ledger reads the tables just written: rebuild it with them
        from timerome import claims

        claims.main(["--profile", args.profile, "--spec", str(spec), "--tables-dir", str(dirs["tables"])])


if __name__ == "__main__":
    main()
