"""The main job's runner: selection, parameter and grid validation, run planning and keys, and
execution of throwaway notebooks (no model loading): skip/resume, atomic writes, failures,
parallel workers and the submitit local executor."""
import json
import os

import nbformat
import pytest

from timerome import params, report, run, runcache

# the toy notebook appends one line per execution to a counter file, so tests can count runs
COUNTER_CELL = """import json, os, pathlib
pathlib.Path(tables_dir).mkdir(parents=True, exist_ok=True)
with open(os.path.join(counter_dir, "executions.txt"), "a") as f:
    f.write(json.dumps({"alpha": alpha, "seed": seed}) + "\\n")
if fail_on is not None and seed == fail_on:
    raise RuntimeError(f"deliberate failure for seed {seed}")
pathlib.Path(tables_dir, "result.json").write_text(json.dumps({"alpha": alpha, "seed": seed, "value": alpha * seed}))
print(f"alpha={alpha} seed={seed} value={alpha * seed}")"""


def _notebook(path, params_src, body=("print(alpha)",)):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params_src)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# toy"), cell] + [nbformat.v4.new_code_cell(b) for b in body]
    nbformat.write(nb, path)
    return path


def _skeleton(tmp_path):
    """notebooks/, params/tiny/ and a one-file library: what the runner expects of a repo."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params" / "tiny").mkdir(parents=True)
    (tmp_path / "lib" / "timerome").mkdir(parents=True)
    (tmp_path / "lib" / "timerome" / "algo.py").write_text("X = 1\n")


@pytest.fixture
def repo(tmp_path):
    _skeleton(tmp_path)
    _notebook(tmp_path / "notebooks" / "01_toy.ipynb",
              "alpha = 1.0\nsteps = 8\nname = 'x'\nflag = False\nseeds = [0, 1]\nextra = None\nfigures_dir = '../figures'\ntables_dir = '../tables'")
    _notebook(tmp_path / "notebooks" / "02_other.ipynb", "alpha = 2.0")
    return tmp_path


@pytest.fixture
def sweep_repo(tmp_path):
    """A repo whose notebook 01_sweep writes tables/result.json and counts its executions."""
    _skeleton(tmp_path)
    (tmp_path / "counter").mkdir()
    _notebook(tmp_path / "notebooks" / "01_sweep.ipynb",
              f"alpha = 1.0\nseed = 0\nfail_on = None\ncounter_dir = {str(tmp_path / 'counter')!r}\n"
              "figures_dir = '../figures'\ntables_dir = '../tables'", [COUNTER_CELL])
    (tmp_path / "params" / "tiny" / "01_sweep.yaml").write_text("alpha: 0.5\ngrid:\n  seed: [1, 2, 3]\n")
    return tmp_path


def executions(repo):
    path = repo / "counter" / "executions.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- selection and validation ------------------------------------------------------------------

def test_notebook_parameters_reads_the_tagged_cell(repo):
    d = params.notebook_parameters(repo / "notebooks" / "01_toy.ipynb")
    assert d == {"alpha": 1.0, "steps": 8, "name": "x", "flag": False, "seeds": [0, 1], "extra": None,
                 "figures_dir": "../figures", "tables_dir": "../tables"}


def test_select_by_name_prefix_and_glob(repo):
    assert [p.stem for p in run.select([], repo)] == ["01_toy", "02_other"]
    assert [p.stem for p in run.select(["02"], repo)] == ["02_other"]
    assert [p.stem for p in run.select(["*toy"], repo)] == ["01_toy"]
    with pytest.raises(SystemExit, match="no notebook matches"):
        run.select(["03"], repo)


@pytest.mark.parametrize("yaml_text, err, match", [
    ("alpha: 0.5\nsteps: 4\nextra: {a: 1}\n", None, None),
    ("alpha: 1\n", None, None),  # an int is fine where a float is expected
    ("alpha: 0.5\ngrid: {steps: [4, 8], seeds: [[0], [1, 2]]}\n", None, None),
    ("alhpa: 0.5\n", ValueError, r"unknown parameter\(s\) \['alhpa'\]"),
    ("steps: 2.5\n", TypeError, "'steps' of 01_toy.ipynb must be int"),
    ("flag: 1\n", TypeError, "'flag'"),
    ("seeds: 3\n", TypeError, "'seeds'"),
    ("- alpha\n", ValueError, "top level must be a mapping"),
    ("alpha: [1\n", ValueError, "not valid YAML"),
    ("grid: [alpha]\n", ValueError, "'grid' must be a non-empty mapping"),
    ("grid: {}\n", ValueError, "'grid' must be a non-empty mapping"),
    ("grid: {steps: 4}\n", ValueError, "grid.steps must be a non-empty list"),
    ("grid: {steps: []}\n", ValueError, "grid.steps must be a non-empty list"),
    ("grid: {stpes: [4]}\n", ValueError, r"unknown parameter\(s\) \['stpes'\]"),
    ("grid: {steps: [4, 2.5]}\n", TypeError, r"grid.steps.*'steps' of 01_toy.ipynb must be int"),
    ("steps: 4\ngrid: {steps: [8]}\n", ValueError, "'steps' is both a fixed parameter and a grid axis"),
])
def test_parameter_files_are_validated(repo, yaml_text, err, match):
    nb = repo / "notebooks" / "01_toy.ipynb"
    (repo / "params" / "tiny" / "01_toy.yaml").write_text(yaml_text)
    if err is None:
        assert isinstance(params.load_params(nb, "tiny", repo), dict)
    else:
        with pytest.raises(err, match=match) as e:
            params.load_params(nb, "tiny", repo)
        assert "01_toy.yaml" in str(e.value) or "01_toy.ipynb" in str(e.value)


def test_missing_parameter_file_is_named(repo):
    with pytest.raises(FileNotFoundError, match=r"params/tiny/02_other.yaml"):
        params.load_params(repo / "notebooks" / "02_other.ipynb", "tiny", repo)


def test_notebook_needs_exactly_one_parameters_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1")]
    nbformat.write(nb, tmp_path / "x.ipynb")
    with pytest.raises(ValueError, match="exactly one cell tagged 'parameters'"):
        params.notebook_parameters(tmp_path / "x.ipynb")


def test_grid_is_a_reserved_parameter_name(tmp_path):
    _notebook(tmp_path / "x.ipynb", "grid = 1")
    with pytest.raises(ValueError, match="reserved"):
        params.notebook_parameters(tmp_path / "x.ipynb")


def test_every_committed_notebook_has_valid_tiny_and_paper_params():
    for nb in params.notebooks():
        for profile in ("tiny", "paper"):
            params.load_params(nb, profile)  # raises on any mismatch


def test_bad_file_fails_before_anything_runs(sweep_repo):
    _notebook(sweep_repo / "notebooks" / "02_bad.ipynb", "alpha = 1.0")
    (sweep_repo / "params" / "tiny" / "02_bad.yaml").write_text("alpha: oops\n")
    with pytest.raises(TypeError, match="02_bad"):
        run.main([], repo=sweep_repo)
    assert executions(sweep_repo) == []  # 01_sweep comes first but did not run


# --- grid expansion and planning ---------------------------------------------------------------

def test_plain_file_is_one_run():
    assert params.expand_grid({"alpha": 1.0}) == [(None, {"alpha": 1.0})]


def test_grid_expands_to_every_combination_in_file_order():
    runs = params.expand_grid({"alpha": 0.5, "grid": {"seed": [0, 1], "q": [2, 4, 8]}})
    assert [rid for rid, _ in runs] == ["seed-0_q-2", "seed-0_q-4", "seed-0_q-8", "seed-1_q-2", "seed-1_q-4",
                                        "seed-1_q-8"]
    assert runs[4][1] == {"alpha": 0.5, "seed": 1, "q": 4}


def test_clashing_run_ids_get_a_hash():
    runs = params.expand_grid({"grid": {"backbone": ["a/b", "a b", "c"]}})
    ids = [rid for rid, _ in runs]
    assert len(set(ids)) == 3 and ids[2] == "backbone-c"
    assert ids[0].startswith("backbone-a-b_") and ids[1].startswith("backbone-a-b_")


def test_plan_places_grid_runs_in_their_own_folders(sweep_repo):
    nb = sweep_repo / "notebooks" / "01_sweep.ipynb"
    runs = run.plan(nb, "tiny", params.load_params(nb, "tiny", sweep_repo), sweep_repo)
    assert [r.run_id for r in runs] == ["seed-1", "seed-2", "seed-3"]
    r = runs[1]
    assert r.record == sweep_repo / "runs" / "tiny" / "01_sweep" / "seed-2"
    assert r.executed == r.record / "01_sweep.ipynb" and r.tables == r.record / "tables"
    assert r.params["tables_dir"] == "../runs/tiny/01_sweep/seed-2/tables"  # relative to the notebook
    assert len({x.key for x in runs}) == 3


def test_plain_runs_keep_the_profile_folders(repo):
    nb = repo / "notebooks" / "02_other.ipynb"
    (tiny,) = run.plan(nb, "tiny", {}, repo)
    assert tiny.executed == nb and tiny.tables == repo / "tables"  # in place
    assert tiny.record == repo / "runs" / "tiny" / "02_other"
    (paper,) = run.plan(nb, "paper", {}, repo)
    assert paper.executed == repo / "runs" / "paper" / "notebooks" / "02_other.ipynb"
    assert paper.params["figures_dir"] == "../runs/paper/figures"


def test_key_covers_code_params_library_and_weights(repo):
    nb = repo / "notebooks" / "01_toy.ipynb"
    wdir = repo / "lib" / "timerome" / "weights" / "tiny-x"
    wdir.mkdir(parents=True)
    (wdir / "model.safetensors").write_bytes(b"w1")
    key = lambda given: run.plan(nb, "tiny", given, repo)[0].key
    k0 = key({"name": "tiny-x"})
    assert key({"name": "tiny-x"}) == k0
    assert key({"name": "tiny-y"}) != k0                                   # params
    (wdir / "model.safetensors").write_bytes(b"w2")
    k1 = key({"name": "tiny-x"})
    assert k1 != k0                                                        # weights the params name
    (repo / "lib" / "timerome" / "algo.py").write_text("X = 2\n")
    k2 = key({"name": "tiny-x"})
    assert k2 != k1                                                        # library source
    book = nbformat.read(nb, as_version=4)
    book.cells[0].source = "# a different title"                            # markdown: same results
    nbformat.write(book, nb)
    assert key({"name": "tiny-x"}) == k2
    book.cells[-1].source = "print(alpha + 1)"                             # code
    nbformat.write(book, nb)
    assert key({"name": "tiny-x"}) != k2


def test_weights_are_found_by_model_name_and_by_path(repo):
    nb = repo / "notebooks" / "01_toy.ipynb"
    (repo / "lib" / "timerome" / "weights" / "tiny-x").mkdir(parents=True)
    (repo / "lib" / "timerome" / "weights" / "tiny-x" / "model.safetensors").write_bytes(b"a")
    (repo / "models" / "ft").mkdir(parents=True)
    (repo / "models" / "ft" / "adapter.bin").write_bytes(b"b")
    (repo / "models" / "ft" / "README.md").write_text("not weights")
    found = runcache.weights_used({"backbones": ["tiny-x", "../models/ft", "hub/id"], "note": "..", "x": 3}, nb, repo)
    assert sorted(found) == ["lib/timerome/weights/tiny-x/model.safetensors", "models/ft/adapter.bin"]


# --- execution ---------------------------------------------------------------------------------

def test_sweep_runs_skips_and_writes_manifests(sweep_repo):
    run.main([], repo=sweep_repo)
    assert sorted(e["seed"] for e in executions(sweep_repo)) == [1, 2, 3]
    base = sweep_repo / "runs" / "tiny" / "01_sweep"
    for seed in (1, 2, 3):
        d = base / f"seed-{seed}"
        assert json.loads((d / "tables" / "result.json").read_text()) == {"alpha": 0.5, "seed": seed,
                                                                         "value": 0.5 * seed}
        m = json.loads((d / "manifest.json").read_text())
        assert m["status"] == "ok" and m["params"]["seed"] == seed and m["params"]["alpha"] == 0.5
        assert m["wall_s"] > 0 and m["packages"]["python"] and m["machine"]["cpus"] and m["git_commit"]
        assert m["outputs"] == [f"runs/tiny/01_sweep/seed-{seed}/tables/result.json"]
        executed = nbformat.read(d / "01_sweep.ipynb", as_version=4)
        assert f"value={0.5 * seed}" in executed.cells[-1].outputs[0]["text"]
        assert not (d / "01_sweep.partial.ipynb").exists()
    assert not (sweep_repo / "notebooks" / "01_sweep.ipynb.partial").exists()

    run.main([], repo=sweep_repo)  # everything up to date: nothing executes
    assert len(executions(sweep_repo)) == 3
    (sweep_repo / "params" / "tiny" / "01_sweep.yaml").write_text("alpha: 0.5\ngrid:\n  seed: [1, 2, 3, 4]\n")
    run.main([], repo=sweep_repo)  # one new grid point: only it runs
    assert [e["seed"] for e in executions(sweep_repo)[3:]] == [4]
    run.main(["--force"], repo=sweep_repo)
    assert len(executions(sweep_repo)) == 8


def test_failed_run_is_reported_with_its_log_and_the_others_go_on(sweep_repo, capsys):
    (sweep_repo / "params" / "tiny" / "01_sweep.yaml").write_text("alpha: 0.5\nfail_on: 2\ngrid:\n  seed: [1, 2, 3]\n")
    with pytest.raises(SystemExit, match=r"1 failed") as e:
        run.main([], repo=sweep_repo)
    log = sweep_repo / "runs" / "tiny" / "01_sweep" / "seed-2" / "log.txt"
    assert str(log) in str(e.value)
    assert "deliberate failure for seed 2" in log.read_text()
    assert "FAILED 01_sweep/seed-2" in capsys.readouterr().out
    assert sorted(e["seed"] for e in executions(sweep_repo)) == [1, 2, 3]
    m = json.loads((log.parent / "manifest.json").read_text())
    assert m["status"] == "failed" and "deliberate failure" in m["error"]
    assert not (log.parent / "01_sweep.ipynb").exists()  # no executed copy of a failed run
    assert (log.parent / "01_sweep.partial.ipynb").exists()  # the partial one, for the reader


def test_interrupted_sweep_resumes_where_it_stopped(sweep_repo, monkeypatch):
    """A crash (here: Ctrl-C) during the second run leaves it 'running'; the next call re-runs it and
    the third, and skips the first."""
    calls = []
    real = run.execute_run

    def crashing(r):
        calls.append(r.run_id)
        if r.run_id == "seed-2":
            raise KeyboardInterrupt
        return real(r)

    monkeypatch.setattr(run, "execute_run", crashing)
    with pytest.raises(KeyboardInterrupt):
        run.main([], repo=sweep_repo)
    assert calls == ["seed-1", "seed-2"]
    monkeypatch.setattr(run, "execute_run", real)
    run.main([], repo=sweep_repo)
    assert [e["seed"] for e in executions(sweep_repo)] == [1, 2, 3]


def test_crash_inside_a_run_leaves_a_running_manifest_and_the_old_executed_copy(sweep_repo, monkeypatch):
    nb = sweep_repo / "notebooks" / "01_sweep.ipynb"
    (sweep_repo / "params" / "tiny" / "01_sweep.yaml").write_text("alpha: 0.5\n")  # plain file: in place
    before = nb.read_bytes()
    import papermill

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", killed)
    with pytest.raises(KeyboardInterrupt):
        run.main([], repo=sweep_repo)
    assert nb.read_bytes() == before
    m = json.loads((sweep_repo / "runs" / "tiny" / "01_sweep" / "manifest.json").read_text())
    assert m["status"] == "running"
    (r,) = run.plan(nb, "tiny", {"alpha": 0.5}, sweep_repo)
    assert not run.up_to_date(r)


def test_tiny_plain_run_executes_in_place(sweep_repo):
    (sweep_repo / "params" / "tiny" / "01_sweep.yaml").write_text("alpha: 0.25\nseed: 4\n")
    run.main([], repo=sweep_repo)
    nb = nbformat.read(sweep_repo / "notebooks" / "01_sweep.ipynb", as_version=4)
    assert "value=1.0" in nb.cells[-1].outputs[0]["text"]
    assert nb.metadata.papermill["output_path"] == str(sweep_repo / "notebooks" / "01_sweep.ipynb")
    assert json.loads((sweep_repo / "tables" / "result.json").read_text())["value"] == 1.0
    m = json.loads((sweep_repo / "runs" / "tiny" / "01_sweep" / "manifest.json").read_text())
    assert m["outputs"] == ["tables/result.json"]
    run.main([], repo=sweep_repo)  # the in-place rewrite does not make it stale
    assert len(executions(sweep_repo)) == 1


def test_later_notebook_reruns_when_an_input_it_names_changes(sweep_repo):
    (sweep_repo / "params" / "tiny" / "01_sweep.yaml").write_text("alpha: 0.25\nseed: 4\n")
    _notebook(sweep_repo / "notebooks" / "02_reader.ipynb", "tables_dir = '../tables'\nfigures_dir = '../figures'",
              ["import json, pathlib\nprint(json.loads(pathlib.Path(tables_dir, 'result.json').read_text()))"])
    (sweep_repo / "params" / "tiny" / "02_reader.yaml").write_text("{}\n")
    run.main([], repo=sweep_repo)
    reader = sweep_repo / "runs" / "tiny" / "02_reader" / "manifest.json"
    first = json.loads(reader.read_text())
    result = sweep_repo / "tables" / "result.json"
    assert first["key_parts"]["inputs"] == {"tables/result.json": runcache.file_hash(result)}
    run.main([], repo=sweep_repo)
    assert json.loads(reader.read_text())["started"] == first["started"]  # skipped
    (sweep_repo / "params" / "tiny" / "01_sweep.yaml").write_text("alpha: 0.25\nseed: 8\n")
    run.main(["--list"], repo=sweep_repo)
    run.main([], repo=sweep_repo)
    nb = nbformat.read(sweep_repo / "notebooks" / "02_reader.ipynb", as_version=4)
    assert "'value': 2.0" in nb.cells[-1].outputs[0]["text"]

    # as a sweep, each run reads the input from its own tables/, where the runner copied it
    _notebook(sweep_repo / "notebooks" / "02_reader.ipynb", "tag = 'a'\ntables_dir = '../tables'\nfigures_dir = '../figures'",
              ["import json, pathlib\nprint(tag, json.loads(pathlib.Path(tables_dir, 'result.json').read_text()))"])
    (sweep_repo / "params" / "tiny" / "02_reader.yaml").write_text("grid: {tag: [b]}\n")
    run.main(["02"], repo=sweep_repo)
    d = sweep_repo / "runs" / "tiny" / "02_reader" / "tag-b"
    assert (d / "tables" / "result.json").read_bytes() == (sweep_repo / "tables" / "result.json").read_bytes()
    assert "b {'alpha': 0.25, 'seed': 8" in nbformat.read(d / "02_reader.ipynb", as_version=4).cells[-1].outputs[0]["text"]
    assert json.loads((d / "manifest.json").read_text())["outputs"] == []  # the copied input is not an output


def test_parallel_local_workers(sweep_repo):
    run.main(["--jobs", "2"], repo=sweep_repo)
    assert sorted(e["seed"] for e in executions(sweep_repo)) == [1, 2, 3]
    for seed in (1, 2, 3):
        m = json.loads((sweep_repo / "runs" / "tiny" / "01_sweep" / f"seed-{seed}" / "manifest.json").read_text())
        assert m["status"] == "ok"


def test_submitit_local_executor(sweep_repo):
    (sweep_repo / "params" / "tiny" / "01_sweep.yaml").write_text("alpha: 0.5\nfail_on: 3\ngrid:\n  seed: [1, 3]\n")
    with pytest.raises(SystemExit, match="1 failed"):
        run.main(["--submitit-local", "--jobs", "2"], repo=sweep_repo)
    base = sweep_repo / "runs" / "tiny" / "01_sweep"
    assert json.loads((base / "seed-1" / "manifest.json").read_text())["status"] == "ok"
    assert json.loads((base / "seed-3" / "manifest.json").read_text())["status"] == "failed"
    assert (base / "seed-1" / "tables" / "result.json").exists()
    assert list((sweep_repo / "runs" / "tiny" / "submitit").glob("*_log.out"))  # submitit's own job logs


# --- atomic writes -----------------------------------------------------------------------------

def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("old")

    def half_then_crash(tmp):
        open(tmp, "w").write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        report.atomic_write(path, half_then_crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temp file left behind
    report.atomic_write(path, lambda tmp: open(tmp, "w").write("new"))
    assert path.read_text() == "new"


def test_the_main_job_rebuilds_the_claims_ledger(repo):
    """After runs that all succeeded, the ledger is rebuilt from the tables they wrote."""
    body = ("import json, pathlib\npathlib.Path(tables_dir).mkdir(parents=True, exist_ok=True)\n"
            "pathlib.Path(tables_dir, 'result.csv').write_text(f'name,value\\nx,{alpha}\\n')",)
    _notebook(repo / "notebooks" / "01_toy.ipynb", "alpha = 1.0\nfigures_dir = '../figures'\ntables_dir = '../tables'", body)
    (repo / "notebooks" / "02_other.ipynb").unlink()
    (repo / "params" / "tiny" / "01_toy.yaml").write_text("alpha: 3.0\n")
    (repo / "params" / "claims.yaml").write_text(
        "- id: toy\n  claim: the value is positive\n  paper: 2.0\n  notebook: 01_toy\n"
        "  measure: {csv: result.csv, operands: {v: {where: {name: x}, column: value}}}\n"
        "  direction: {'>': 0}\n")
    run.main([], repo=repo)
    ledger = (repo / "tables" / "claims.csv").read_text()
    assert "toy" in ledger and "holds" in ledger and "3" in ledger
    (repo / "tables" / "claims.csv").unlink()
    run.main(["--force", "--no-claims"], repo=repo)
    assert not (repo / "tables" / "claims.csv").exists()


# --- a run publishes only when it succeeds (issue 15, item 2) ----------------------------------

STAGED_CELL = """import json, pathlib
pathlib.Path(tables_dir, "result.json").write_text(json.dumps({"seed": seed}))
pathlib.Path(tables_dir, "new.csv").write_text("a\\n1\\n")
pathlib.Path(tables_dir, ".new.csv.x1.tmp").write_text("a SIGKILLed write")
pathlib.Path(out_file).write_text(json.dumps({"seed": seed}))
with open(counter_file, "a") as f:
    f.write("01\\n")
if seed < 0:
    raise RuntimeError("late failure, after the outputs were written")"""


@pytest.fixture
def staged_repo(tmp_path):
    """01_writer writes two tables, a temporary and an `output` parameter, then fails if seed < 0;
    02_reader reads its result.json, 03_alone reads nothing. A schema types the parameters."""
    _skeleton(tmp_path)
    counter = tmp_path / "counter.txt"
    _notebook(tmp_path / "notebooks" / "01_writer.ipynb",
              f"seed = 0\nout_file = '../tables/out.json'\ncounter_file = {str(counter)!r}\n"
              "figures_dir = '../figures'\ntables_dir = '../tables'", [STAGED_CELL])
    for name, body in (("02_reader", "print(open('../tables/result.json').read())"), ("03_alone", "print(1)")):
        _notebook(tmp_path / "notebooks" / f"{name}.ipynb", f"counter_file = {str(counter)!r}\ntables_dir = '../tables'",
                  [body, f"open(counter_file, 'a').write({name[:2]!r} + '\\n')"])
        (tmp_path / "params" / "tiny" / f"{name}.yaml").write_text("{}\n")
    (tmp_path / "params" / "tiny" / "01_writer.yaml").write_text("seed: 1\n")
    (tmp_path / "params" / "schema.yaml").write_text(
        "01_writer: {seed: {type: int}, out_file: {type: str, output: true}, counter_file: {type: str}}\n"
        "02_reader: {counter_file: {type: str}}\n03_alone: {counter_file: {type: str}}\n")
    return tmp_path


def test_failed_run_publishes_nothing_and_skips_what_reads_it(staged_repo):
    repo = staged_repo
    run.main(["--no-claims"], repo=repo)
    assert json.loads((repo / "tables" / "result.json").read_text()) == {"seed": 1}
    assert json.loads((repo / "tables" / "out.json").read_text()) == {"seed": 1}  # an `output` param: staged too
    assert not list((repo / "tables").glob(".*"))  # the temporary was not published
    m = json.loads((repo / "runs" / "tiny" / "01_writer" / "manifest.json").read_text())
    assert m["outputs"] == ["tables/new.csv", "tables/out.json", "tables/result.json"]
    assert not (repo / "runs" / "tiny" / "01_writer" / "staging").exists()
    nb = repo / "notebooks" / "01_writer.ipynb"
    executed = nb.read_bytes()
    (injected,) = [c.source for c in nbformat.reads(executed.decode(), as_version=4).cells
                   if "injected-parameters" in c.metadata.get("tags", [])]
    assert 'tables_dir = "../tables"' in injected and "staging" not in executed.decode()  # as if run in place
    (repo / "tables" / "new.csv").unlink()
    before = {p.name: p.read_bytes() for p in (repo / "tables").iterdir()}

    (repo / "params" / "tiny" / "01_writer.yaml").write_text("seed: -1\n")
    with pytest.raises(SystemExit, match=r"1 failed, 1 skipped") as e:
        run.main(["--force", "--no-claims"], repo=repo)  # (without --force 02 is up to date with the old tables)
    assert "skipped 02_reader (upstream 01_writer failed)" in str(e.value)
    assert {p.name: p.read_bytes() for p in (repo / "tables").iterdir()} == before  # nothing new, nothing changed
    assert nb.read_bytes() == executed  # the in-place notebook is replaced only on success
    assert (repo / "counter.txt").read_text().split() == ["01", "02", "03", "01", "03"]  # 02 did not run, 03 did
    m = json.loads((repo / "runs" / "tiny" / "01_writer" / "manifest.json").read_text())
    assert m["status"] == "failed" and m["outputs"] == ["tables/new.csv", "tables/out.json", "tables/result.json"]
    assert "tables/new.csv" in m["unpublished"]
    assert (repo / "runs" / "tiny" / "01_writer" / "staging" / "tables" / "new.csv").exists()  # kept to debug


# --- whole-file hashes, cached (item 4) ---------------------------------------------------------

def test_file_hash_reads_the_whole_of_a_big_file(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path, byte in ((a, b"\x01"), (b, b"\x02")):  # 300 MiB, sparse: same size, head and tail
        with open(path, "wb") as f:
            f.truncate(300 << 20)
            f.seek(150 << 20)
            f.write(byte)
    assert runcache.file_hash(a) != runcache.file_hash(b)


def test_weight_digests_are_cached_by_path_size_and_mtime(repo, monkeypatch):
    nb = repo / "notebooks" / "01_toy.ipynb"
    w = repo / "lib" / "timerome" / "weights" / "tiny-x" / "model.safetensors"
    w.parent.mkdir(parents=True)
    w.write_bytes(b"w1")
    calls = []
    real = runcache.file_hash
    monkeypatch.setattr(runcache, "file_hash", lambda p: calls.append(p) or real(p))
    first = runcache.weights_used({"name": "tiny-x"}, nb, repo)
    assert runcache.weights_used({"name": "tiny-x"}, nb, repo) == first and len(calls) == 1  # read once
    assert (repo / "runs" / "hash-cache.json").is_file()
    w.write_bytes(b"w2")
    os.utime(w, ns=(1, 1))  # another mtime: hashed again
    assert runcache.weights_used({"name": "tiny-x"}, nb, repo) != first and len(calls) == 2


# --- the schema (item 6) ------------------------------------------------------------------------

@pytest.fixture
def schema_repo(repo):
    (repo / "params" / "schema.yaml").write_text(
        "01_toy:\n  alpha: {type: float, gt: 0}\n  steps: {type: int, min: 1}\n  name: {type: str}\n"
        "  flag: {type: bool}\n  seeds: {type: list, min_len: 1, items: {type: int, min: 0}}\n"
        "  extra: {type: float, nullable: true}\n"
        "02_other:\n  alpha: {type: float}\n")
    return repo


@pytest.mark.parametrize("yaml_text, err, match", [
    ("alpha: 0.5\nsteps: 4\nextra: null\n", None, None),
    ("alpha: 0.5\n\nsteps: 0\n", ValueError, r"01_toy.yaml:3: parameter 'steps' of 01_toy.ipynb must be >= 1, got 0"),
    ("alpha: 0\n", ValueError, r"01_toy.yaml:1: parameter 'alpha' .* must be > 0"),
    ("seeds: [0, -1]\n", ValueError, r"'seeds' of 01_toy.ipynb\[1\] must be >= 0, got -1"),
    ("seeds: []\n", ValueError, "at least 1 element"),
    ("extra: 'abc'\n", TypeError, r"01_toy.yaml:1: parameter 'extra' of 01_toy.ipynb must be float or null, got str"),
    ("steps: null\n", TypeError, "'steps' of 01_toy.ipynb must be int, not null"),
    ("flag: 1\n", TypeError, "'flag' of 01_toy.ipynb must be bool"),
    ("alpha: 1\nsteps: 2\nalpha: 3\n", ValueError, r"(?s)01_toy.yaml: .*duplicate key 'alpha' \(first given on line 1\).*line 3"),
    ("grid: {steps: [1], steps: [2]}\n", ValueError, "duplicate key 'steps'"),
    ("alpha: 1\nfigures_dir: out\n", ValueError, r"01_toy.yaml:2: 'figures_dir' is set by the runner"),
    ("grid: {tables_dir: [a, b]}\n", ValueError, r"01_toy.yaml:1: 'tables_dir' is set by the runner"),
    ("alpha: 1\ngrid:\n  steps: [4, 0]\n", ValueError, r"01_toy.yaml \(grid.steps\):3: parameter 'steps'.* >= 1"),
])
def test_schema_types_ranges_duplicates_and_runner_keys(schema_repo, yaml_text, err, match):
    nb = schema_repo / "notebooks" / "01_toy.ipynb"
    (schema_repo / "params" / "tiny" / "01_toy.yaml").write_text(yaml_text)
    if err is None:
        assert params.load_params(nb, "tiny", schema_repo)["steps"] == 4
    else:
        with pytest.raises(err, match=match):
            params.load_params(nb, "tiny", schema_repo)


@pytest.mark.parametrize("schema_text, match", [
    ("01_toy: {alpha: {type: float}}\n", r"schema.yaml:1: 01_toy: parameter 'extra' of the notebook has no spec"),
    ("02_other: {alpha: {type: float}}\n", "no mapping for notebook '01_toy'"),
    ("01_toy: {alpha: {type: float, mn: 1}}\n", r"01_toy.alpha: unknown spec key\(s\) \['mn'\]"),
    ("01_toy: {alpha: {type: real}}\n", "type must be one of"),
    ("01_toy:\n  alpha: {type: float, min: 5}\n", r"schema.yaml:2: the default of 01_toy.alpha .* must be >= 5"),
    ("01_toy: {alpha: {}, alpha: {}}\n", "duplicate key 'alpha'"),
    ("01_toy: {nope: {type: int}}\n", "01_toy.nope: not a parameter of 01_toy.ipynb"),
])
def test_schema_itself_is_checked_against_the_notebook(repo, schema_text, match):
    (repo / "params" / "schema.yaml").write_text(schema_text)
    (repo / "params" / "tiny" / "01_toy.yaml").write_text("alpha: 1.0\n")
    with pytest.raises(ValueError, match=match):
        params.load_params(repo / "notebooks" / "01_toy.ipynb", "tiny", repo)


@pytest.mark.parametrize("notebook, given, match", [
    ("02_canonical_tofu", {"n_mc": 0}, "'n_mc' .* must be >= 1"),
    ("01_tie_heatmaps", {"steps": 0}, "'steps' .* must be >= 1"),
    ("02_canonical_tofu", {"lam_grid": [1.0, 0]}, r"'lam_grid' .*\[1\] must be > 0"),
    ("04_scalability", {"q": -2}, "'q' .* must be >= 1"),
    ("01_tie_heatmaps", {"seed": -1}, "'seed' .* must be >= 0"),
    ("01_tie_heatmaps", {"sigma": "abc"}, "'sigma' .* must be float or null, got str"),
    ("07_pareto", {"random_layer_config": [2.0, 2.5]}, r"'random_layer_config' .*\[1\] must be int"),
    ("06_streaming", {"forget_split": "forget02"}, "must be one of"),
])
def test_the_shipped_schema_rejects_what_used_to_fail_late(notebook, given, match):
    nb = params.REPO / "notebooks" / f"{notebook}.ipynb"
    with pytest.raises((TypeError, ValueError), match=match):
        params.validate_params(nb, given, f"params/tiny/{notebook}.yaml")


def test_every_parameter_of_every_notebook_has_a_spec():
    for nb in params.notebooks():
        assert set(params.load_schema(nb)) == set(params.notebook_parameters(nb)) - set(params.RUNNER_SET)
    assert params.output_parameters(params.REPO / "notebooks" / "02_canonical_tofu.ipynb") == ["hparams_file"]


# --- fixed thread count, reproducible exports (item 3) -------------------------------------------

THREADS_CELL = """import os, torch, pandas as pd
from timerome import report
g = torch.Generator().manual_seed(0)
x = torch.randn(256, 4096, generator=g, dtype=torch.float32) * 1e3 + 3588.5657
df = pd.DataFrame({"row": range(256), "sum": (x @ torch.ones(4096)).tolist(), "mean": x.mean(1).tolist()})
report.save_table(df, "reduced", tables_dir, caption="c", label="l")
report.save_json({"threads": torch.get_num_threads(), "omp": os.environ["OMP_NUM_THREADS"]}, os.path.join(tables_dir, "threads.json"))"""


def test_fixed_threads_are_set_recorded_and_exports_match_at_1_and_2_threads(tmp_path):
    _skeleton(tmp_path)
    _notebook(tmp_path / "notebooks" / "01_reduce.ipynb", "figures_dir = '../figures'\ntables_dir = '../tables'",
              [THREADS_CELL])
    (tmp_path / "params" / "tiny" / "01_reduce.yaml").write_text("{}\n")
    exported = {}
    for threads in (1, 2):
        run.main(["--force", "--no-claims", "--threads", str(threads)], repo=tmp_path)
        got = json.loads((tmp_path / "tables" / "threads.json").read_text())
        assert got == {"threads": threads, "omp": str(threads)}
        assert json.loads((tmp_path / "runs" / "tiny" / "01_reduce" / "manifest.json").read_text())["threads"] == threads
        exported[threads] = (tmp_path / "tables" / "reduced.csv").read_bytes()
    assert exported[1] == exported[2]
