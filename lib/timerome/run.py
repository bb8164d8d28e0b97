"""The main job: execute notebooks with papermill under one parameter profile, and sweeps.

    python -m timerome.run                       # all notebooks, profile "tiny", then the claims ledger
    python -m timerome.run 01_tie_heatmaps       # a selection (names, prefixes or globs)
    python -m timerome.run --profile paper       # real backbones, GPU
    python -m timerome.run 02 --jobs 4           # a sweep's runs on 4 local workers
    python -m timerome.run 02 --slurm --gpus 1   # ... or one Slurm job per run (submitit)
    python -m timerome.run --list                # what would run, what is up to date

Parameters come from ``params/<profile>/<notebook>.yaml`` and are checked before anything runs
against the notebook's ``parameters`` cell (names) and ``params/schema.yaml`` (types, ranges,
null); errors name the file, line and key (`timerome.params`). A key given twice is an error, and
so is ``figures_dir``/``tables_dir``: the runner sets them. A file may add a sweep::

    alpha: 1.0
    grid: {seed: [0, 1, 2], q: [2, 4]}      # 6 runs: every combination

Where things go:

* plain file, profile ``tiny``: the notebook executes in place (the committed notebooks are its
  executed copies) and exports to ``figures/`` and ``tables/``;
* plain file, another profile: ``runs/<profile>/notebooks/``, ``runs/<profile>/{figures,tables}/``;
* grid: each run in ``runs/<profile>/<notebook>/<run-id>/`` (executed notebook, figures/, tables/).

A run writes into a staging folder (``<record folder>/staging``) and its figures, tables and
executed notebook are moved into place only if it succeeds: a failed run publishes nothing and
keeps its staging folder and partial notebook for debugging. A notebook that reads a file
(named in its code or params) published by a notebook that failed earlier in the same
invocation does not run; it is reported as skipped. Every kernel runs with a fixed thread count
(``--threads``, else ``$TIMEROME_THREADS``, else 2; OMP/MKL/OpenBLAS variables, recorded in the
manifest), so float32 reductions sum in the same order on every re-run.

Every run leaves a ``manifest.json`` (params, key, git commit, package versions, machine, threads,
wall time, status, outputs) and a ``log.txt`` in its record folder (``runs/<profile>/<notebook>/`` for
a plain file, the run folder for a grid run). A run whose manifest says ``ok`` under the same key
is skipped; the key (`timerome.runcache`) hashes the notebook's code, the run's params, the
library source under ``lib/``, the model weights its params name (whole-file sha256, cached by
path, size and mtime in ``runs/hash-cache.json``), and the tables of earlier notebooks it reads.
So an interrupted sweep resumes where it stopped (``--force`` re-runs anyway). A failed run is
reported with its log and the others go on; the exit status is non-zero if any failed. After
runs that all succeeded, the claims ledger (``params/claims.yaml`` -> ``claims.{md,csv}`` in the
profile's tables folder) is rebuilt from the tables they wrote (``--no-claims`` skips it).

This module is a run's life once its parameters are checked: plan, staging, publishing,
execution, manifest and the command line. It stays over 400 lines because staging,
publish-on-success, the manifest and the command line's skipping of notebooks that read a failed
run's files are one protocol over the `Run` record, and each part needs the others to be read.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import platform
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

from .params import (DEFAULT_PROFILE, REPO, digest, expand_grid, load_params, notebook_parameters, notebooks,
                     output_dirs, output_parameters, record_dir)
from .runcache import file_hash, library_hash, notebook_code_hash, read_manifest, upstream_inputs, weights_used

THREADS_ENV = "TIMEROME_THREADS"  # threads of every run's kernel (default 2), see `thread_env`
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", THREADS_ENV)
PACKAGES = ("timerome", "torch", "transformers", "numpy", "scipy", "pandas", "matplotlib", "papermill",
            "nbclient", "ipykernel", "submitit")


# --- runs --------------------------------------------------------------------------------------

@dataclass
class Run:
    repo: Path
    notebook: Path
    profile: str
    run_id: str | None          # None: the plain (non-grid) run
    params: dict                # incl. figures_dir / tables_dir where the outputs are published
    executed: Path              # where the executed notebook goes
    figures: Path
    tables: Path
    record: Path                # manifest.json and log.txt
    key_parts: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)  # upstream files copied into the staged tables/
    threads: int = 2            # OMP/MKL/torch threads of the kernel (see `thread_env`)
    output_params: list = field(default_factory=list)  # params naming files it writes (schema `output`)

    @property
    def stage(self) -> Path:
        """Where the run writes; its files are moved to their published places only on success."""
        return self.record / "staging"

    @property
    def name(self) -> str:
        return self.notebook.stem + (f"/{self.run_id}" if self.run_id else "")

    @property
    def key(self) -> str:
        return digest(self.key_parts)

    @property
    def log(self) -> Path:
        return self.record / "log.txt"


def default_threads() -> int:
    """``$TIMEROME_THREADS``, else 2: the thread count every run gets unless ``--threads`` says."""
    value = os.environ.get(THREADS_ENV, "2")
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"{THREADS_ENV}={value!r}: expected a positive integer")
    return int(value)


def plan(nb: Path, profile: str, params: dict, repo: Path = REPO, lib_hash: str | None = None,
         threads: int | None = None) -> list[Run]:
    """The runs of one notebook, with their folders and up-to-date keys (nothing executes)."""
    lib_hash, threads = lib_hash or library_hash(repo), threads or default_threads()
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
                        key_parts, inputs, threads, output_parameters(nb)))
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

def thread_env(threads: int) -> dict[str, str]:
    """The environment variables that fix a kernel's thread count: OpenMP (torch's intra-op pool
    reads it at start-up), MKL, OpenBLAS and ``TIMEROME_THREADS``. float32 reductions are summed in
    a thread-dependent order, so a fixed count makes re-runs on one machine repeatable."""
    return {var: str(threads) for var in THREAD_VARS}


class _environ:
    """Set environment variables for the duration of a ``with`` block (the kernel inherits them)."""

    def __init__(self, values: dict[str, str]):
        self.values, self.saved = values, {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _staging(run: Run) -> tuple[dict, list[tuple[Path, Path]]]:
    """Papermill's parameters pointing into ``run.stage``, and the ``(staged, published)`` folder or
    file pairs that `publish` moves on success."""
    nb_dir, stage = run.notebook.parent, run.stage
    params, moves = dict(run.params), [(stage / "figures", run.figures), (stage / "tables", run.tables)]
    params["figures_dir"], params["tables_dir"] = (os.path.relpath(d, nb_dir) for d, _ in moves)
    given = {**notebook_parameters(run.notebook), **run.params}
    for key in run.output_params:
        if isinstance(given.get(key), str):
            target = Path(os.path.normpath(nb_dir / given[key]))
            staged = stage / "files" / key / target.name
            params[key] = os.path.relpath(staged, nb_dir)
            moves.append((staged, target))
    return params, moves


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)  # atomic; staging and outputs normally share a file system
    except OSError:
        from timerome.report import atomic_write
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
        src.unlink()


def staged_files(moves) -> list[tuple[Path, Path]]:
    """``(staged file, published path)`` of every file under the staged folders (temporaries and
    other hidden files excluded)."""
    pairs = []
    for src, dst in moves:
        if src.is_file():
            pairs.append((src, dst))
        elif src.is_dir():
            pairs += [(f, dst / f.relative_to(src)) for f in sorted(src.rglob("*"))
                      if f.is_file() and not any(part.startswith(".") for part in f.relative_to(src).parts)]
    return pairs


def publish(run: Run, moves) -> list[str]:
    """Move the staged files into place; the published paths (relative to the repo) of those that
    are outputs, i.e. not an unchanged copy of an upstream input."""
    copied = {Path(src).name: h for src, h in run.inputs.items()}
    outputs = []
    for src, dst in staged_files(moves):
        if src.parent == run.stage / "tables" and copied.get(src.name) == file_hash(src):
            if dst.is_file() and file_hash(dst) == copied[src.name]:
                src.unlink()  # a plain run's input, back where it came from: leave the original alone
                continue
        else:
            outputs.append(os.path.relpath(dst, run.repo))
        _move(src, dst)
    return sorted(outputs)


def _published_params(done, run: Run) -> None:
    """Make the executed notebook show the published folders, not the staging ones, so that it
    re-runs from any checkout (nbval in CI) and reads as if run in place."""
    from papermill.translators import translate_parameters

    for cell in done.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = translate_parameters("python3", "python", run.params, "Parameters")
    done.metadata.setdefault("papermill", {})["parameters"] = run.params
    done.metadata["papermill"]["output_path"] = str(run.executed)  # not the partial file


def execute_run(run: Run) -> dict:
    """Execute one run and return its manifest; an error in the notebook is recorded, not raised.

    The notebook writes into ``run.stage`` (figures_dir, tables_dir and `output` parameters point
    there; paths it reads, such as ``coordinate_file: ../tables/...``, still name the published
    files). Only if it succeeds are the staged files moved into place, then the executed copy
    replaced. On failure nothing is published: the old files stay, the staging folder and the
    partial notebook are kept beside the log for debugging (and cleared at the next attempt).
    The manifest says ``running`` until the end, so a crash or Ctrl-C leaves a run that the next
    invocation repeats; ``outputs`` always lists what is published (on failure, the last
    success's files).
    """
    import papermill as pm

    from timerome.report import atomic_write

    repo = run.repo
    previous = read_manifest(run.record) or {}
    published_before = previous.get("outputs", [])
    run.record.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run.stage, ignore_errors=True)
    params, moves = _staging(run)
    for i, (staged, _) in enumerate(moves):
        (staged if i < 2 else staged.parent).mkdir(parents=True, exist_ok=True)  # folders, then files' folders
    for src in run.inputs:  # a run reads earlier notebooks' tables from its own (staged) tables/
        shutil.copy2(repo / src, run.stage / "tables" / Path(src).name)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_manifest(run, status="running", started=started, threads=run.threads, git_commit=git_commit(repo),
                   packages=package_versions(), machine=machine(), outputs=published_before)
    partial = run.record / f"{run.notebook.stem}.partial.ipynb"
    handler = logging.FileHandler(run.log, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("papermill")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    t0 = time.perf_counter()
    status, error, outputs = "ok", None, published_before
    try:
        with _environ(thread_env(run.threads)):
            pm.execute_notebook(str(run.notebook), str(partial), parameters=params, cwd=str(run.notebook.parent),
                                kernel_name="python3", language="python", progress_bar=False, log_output=True)
        done = nbformat.read(partial, as_version=4)
        _published_params(done, run)
        outputs = publish(run, moves)
        run.executed.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(run.executed, lambda tmp: nbformat.write(done, tmp))
        partial.unlink()
        shutil.rmtree(run.stage, ignore_errors=True)
    except Exception as exc:  # the notebook failed: record it, the other runs go on
        status, error = "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        logger.error(traceback.format_exc())
    finally:
        logger.removeHandler(handler)
        handler.close()
    wall = time.perf_counter() - t0
    fields = dict(status=status, started=started, wall_s=round(wall, 3), threads=run.threads,
                  git_commit=git_commit(repo), packages=package_versions(), machine=machine(), outputs=outputs)
    if error:
        staged = [os.path.relpath(dst, repo) for _, dst in staged_files(moves)]
        fields.update(error=error, partial_notebook=str(partial), staging=str(run.stage), unpublished=staged)
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


def failed_upstream(nb: Path, params: dict, broken: dict[str, list[str] | None]) -> list[str]:
    """The notebooks in ``broken`` (their plain run failed, or was skipped, in this invocation)
    that ``nb`` reads: its code or params name one of the files they publish. A notebook whose
    files are unknown (None: it never succeeded and staged nothing) counts as read by every later one."""
    text = "\n".join(c.source for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code")
    text += json.dumps(params)
    return [stem for stem, names in broken.items() if names is None or any(n in text for n in names)]


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
    ap.add_argument("--threads", type=int, default=None,
                    help=f"threads of every run's kernel (default ${THREADS_ENV}, else 2)")
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    threads = args.threads or default_threads()

    if not (repo / "params" / args.profile).is_dir():
        raise SystemExit(f"unknown profile {args.profile!r}: no directory {repo / 'params' / args.profile}")
    chosen = select(args.notebooks, repo)
    all_params = {nb: load_params(nb, args.profile, repo) for nb in chosen}  # all files checked before any run
    shared = repo.parent / "shared" / "data"
    if "TIMEROME_DATA" not in os.environ and shared.is_dir():  # the checkout's sibling data, if any
        os.environ["TIMEROME_DATA"] = str(shared)
    from tqdm import tqdm

    lib_hash = library_hash(repo)
    failed, skipped, n_done, n_skipped, t0 = [], [], 0, 0, time.perf_counter()
    broken: dict[str, list[str] | None] = {}  # failed/skipped notebook -> names of the files it publishes
    # notebooks in order, each one's runs in parallel: later notebooks read earlier ones' tables
    for nb in chosen:
        runs = plan(nb, args.profile, all_params[nb], repo, lib_hash, threads)  # after the earlier ones ran
        todo = [r for r in runs if args.force or not up_to_date(r)]
        n_skipped += len(runs) - len(todo)
        if args.list:
            for r in runs:
                print(f"{'run ' if r in todo else 'ok  '} {r.name:50s} {r.record}")
            continue
        if not todo:
            print(f"{nb.stem}: {len(runs)} run(s) up to date", flush=True)
            continue
        upstream = failed_upstream(nb, all_params[nb], broken)
        if upstream:
            print(f"SKIPPED {nb.stem}: upstream {', '.join(upstream)} failed in this invocation", flush=True)
            skipped += [f"{r.name} (upstream {', '.join(upstream)} failed)" for r in todo]
            if any(r.run_id is None for r in todo):  # its tables are stale too: what reads them waits as well
                old = read_manifest(record_dir(nb, args.profile, None, repo))
                broken[nb.stem] = sorted({Path(f).name for f in old["outputs"]}) if old and "outputs" in old else None
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
        for r, m in zip(todo, results):
            if r.run_id is None and m["status"] != "ok":
                names = sorted({Path(f).name for f in m.get("outputs", []) + m.get("unpublished", [])})
                broken[nb.stem] = names or None  # None: unknown
        if args.log_output:
            for r in todo:
                print(r.log.read_text() if r.log.exists() else "", flush=True)
    if args.list:
        return
    wall = time.perf_counter() - t0
    summary = f"{n_done} run(s) executed, {n_skipped} up to date, in {wall:.1f} s ({threads} thread(s) each)"
    if failed or skipped:
        raise SystemExit(f"{summary}; {len(failed)} failed, {len(skipped)} skipped because an upstream notebook "
                         f"failed:\n  " + "\n  ".join(failed + [f"skipped {s}" for s in skipped]))
    dirs = output_dirs(args.profile, repo)
    print(f"{summary}; figures in {dirs['figures']}, tables in {dirs['tables']} (sweeps: runs/{args.profile}/)")
    spec = repo / "params" / "claims.yaml"
    if spec.is_file() and not args.no_claims:  # the ledger reads the tables just written: rebuild it with them
        from timerome import claims

        claims.main(["--profile", args.profile, "--spec", str(spec), "--tables-dir", str(dirs["tables"])])


if __name__ == "__main__":
    main()