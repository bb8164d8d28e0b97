"""The main job's runner: notebook selection and parameter validation (nothing executes)."""
import nbformat
import pytest

from timerome import run


def _notebook(path, params_src):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params_src)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# toy"), cell, nbformat.v4.new_code_cell("print(alpha)")]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params" / "tiny").mkdir(parents=True)
    _notebook(tmp_path / "notebooks" / "01_toy.ipynb",
              "alpha = 1.0\nsteps = 8\nname = 'x'\nflag = False\nseeds = [0, 1]\nextra = None\nfigures_dir = '../figures'\ntables_dir = '../tables'")
    _notebook(tmp_path / "notebooks" / "02_other.ipynb", "alpha = 2.0")
    return tmp_path


def test_notebook_parameters_reads_the_tagged_cell(repo):
    d = run.notebook_parameters(repo / "notebooks" / "01_toy.ipynb")
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
    ("alhpa: 0.5\n", ValueError, r"unknown parameter\(s\) \['alhpa'\]"),
    ("steps: 2.5\n", TypeError, "'steps' of 01_toy.ipynb must be int"),
    ("flag: 1\n", TypeError, "'flag'"),
    ("seeds: 3\n", TypeError, "'seeds'"),
    ("- alpha\n", ValueError, "top level must be a mapping"),
    ("alpha: [1\n", ValueError, "not valid YAML"),
])
def test_parameter_files_are_validated(repo, yaml_text, err, match):
    nb = repo / "notebooks" / "01_toy.ipynb"
    (repo / "params" / "tiny" / "01_toy.yaml").write_text(yaml_text)
    if err is None:
        assert isinstance(run.load_params(nb, "tiny", repo), dict)
    else:
        with pytest.raises(err, match=match) as e:
            run.load_params(nb, "tiny", repo)
        assert "01_toy.yaml" in str(e.value) or "01_toy.ipynb" in str(e.value)


def test_missing_parameter_file_is_named(repo):
    with pytest.raises(FileNotFoundError, match=r"params/tiny/02_other.yaml"):
        run.load_params(repo / "notebooks" / "02_other.ipynb", "tiny", repo)


def test_notebook_needs_exactly_one_parameters_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1")]
    nbformat.write(nb, tmp_path / "x.ipynb")
    with pytest.raises(ValueError, match="exactly one cell tagged 'parameters'"):
        run.notebook_parameters(tmp_path / "x.ipynb")


def test_every_committed_notebook_has_valid_tiny_and_paper_params():
    for nb in run.notebooks():
        for profile in ("tiny", "paper"):
            run.load_params(nb, profile)  # raises on any mismatch
