"""Parameters are data: the notebooks, their parameter files, the schema those files are
checked against, sweeps, and the folders a profile's runs publish into.

A notebook ``notebooks/NN_name.ipynb`` declares its parameters in its one cell tagged
``parameters`` (plain ``name = literal`` lines: `notebook_parameters`). A profile gives them
values in ``params/<profile>/<notebook>.yaml`` (`load_params`). Everything is checked before
anything runs, so that a typo fails at once and not an hour into a sweep:

* the names against the notebook's parameters cell;
* the values against ``params/schema.yaml`` (types, ranges, null, lengths; its header documents
  the format; `load_schema` checks the schema itself against the notebook, so every parameter
  has a spec and every default passes it); a repo without a schema gets the types of the
  notebook's defaults (None: any);
* a key given twice in one mapping is an error (YAML's own rule, last one wins, would hide it),
  and so is ``figures_dir``/``tables_dir``: the runner sets them.

Errors name the file, line and key: `read_yaml` returns, with the data, the line of every
mapping key. A file may add a sweep::

    alpha: 1.0
    grid: {seed: [0, 1, 2], q: [2, 4]}      # 6 runs: every combination

`expand_grid` turns it into runs in file order, with ids such as ``seed-0_q-2`` (values whose ids
would clash get a short hash of their parameters, `digest`).

The folders (`output_dirs`, `record_dir`) are here because they belong to a profile, and a
parameter file that sets one of them is told where the runner puts its outputs instead.
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
import re
from pathlib import Path

import nbformat
import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = "tiny"
GRID = "grid"  # reserved top-level key of a parameter file
RUNNER_SET = ("figures_dir", "tables_dir")  # parameters the runner sets; a parameter file may not


# --- notebooks and their parameters ------------------------------------------------------------

def notebooks(repo: Path = REPO) -> list[Path]:
    return sorted((repo / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def params_file(nb: Path, profile: str, repo: Path = REPO) -> Path:
    return repo / "params" / profile / f"{nb.stem}.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that rejects a key given twice in one mapping (YAML's default: last wins)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` may be overridden on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (first given on "
                                                            f"line {seen[key]})", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            except TypeError:
                continue  # an unhashable key: SafeLoader raises its own error below
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> tuple[object, dict[str, int]]:
    """``(data, lines)`` of a YAML file with unique keys; ``lines`` maps every mapping key, dotted
    (``grid.seed``, ``02_canonical_tofu.n_mc.min``), to its 1-based line."""
    loader = _UniqueKeyLoader(path.read_text())
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    lines = {}

    def visit(n, prefix):
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode):
                    lines.setdefault(prefix + k.value, k.start_mark.line + 1)
                    visit(v, f"{prefix}{k.value}.")

    visit(node, "")
    return data, lines


def load_params(nb: Path, profile: str, repo: Path = REPO) -> dict:
    """The validated parameter file of ``nb`` (a ``grid`` entry, if any, is kept as is)."""
    path = params_file(nb, profile, repo)
    if not path.exists():
        raise FileNotFoundError(f"no parameter file for notebook {nb.name} in profile {profile!r}: expected {path}")
    params, lines = read_yaml(path)
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ValueError(f"{path}: top level must be a mapping of parameter names to values, got {type(params).__name__}")
    for key in RUNNER_SET:
        for where in (key, f"{GRID}.{key}"):
            if where in lines:
                raise ValueError(f"{path}:{lines[where]}: {key!r} is set by the runner (the run's staging folder, "
                                 f"then {output_dirs(profile, repo)[key[:-4]]} or the grid run's folder); remove it")
    validate_params(nb, {k: v for k, v in params.items() if k != GRID}, path, lines)
    if GRID in params:
        validate_grid(nb, params, path, lines)
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



# --- the parameter schema (params/schema.yaml) --------------------------------------------------

SCHEMA_TYPES = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
                "list": lambda v: isinstance(v, list), "dict": lambda v: isinstance(v, dict), "any": lambda v: True}
SCHEMA_KEYS = {"type", "nullable", "min", "max", "gt", "choices", "min_len", "len", "items", "fields", "output", "doc"}


def schema_file(nb: Path) -> Path:
    return nb.parent.parent / "params" / "schema.yaml"


def load_schema(nb: Path) -> dict | None:
    """``{parameter: spec}`` of ``nb`` from ``params/schema.yaml``, checked against the notebook's
    parameters cell (every parameter typed, its default valid); None if the repo has no schema."""
    path = schema_file(nb)
    if not path.is_file():
        return None
    data, lines = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get(nb.stem), dict):
        raise ValueError(f"{path}: no mapping for notebook {nb.stem!r}: every notebook's parameters need a spec")
    schema, defaults = data[nb.stem], notebook_parameters(nb)
    at = lambda key: f"{path}:{lines.get(f'{nb.stem}.{key}', lines.get(nb.stem, '?'))}"
    for key, spec in schema.items():
        if key not in defaults:
            raise ValueError(f"{at(key)}: {nb.stem}.{key}: not a parameter of {nb.name} ({sorted(defaults)})")
        _check_spec(spec, f"{at(key)}: {nb.stem}.{key}")
        check_value(defaults[key], spec, f"{at(key)}: the default of {nb.stem}.{key} in {nb.name}")
    for key in sorted(set(defaults) - set(schema) - set(RUNNER_SET)):
        raise ValueError(f"{path}:{lines[nb.stem]}: {nb.stem}: parameter {key!r} of the notebook has no spec")
    return schema


def _check_spec(spec, where: str) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: a spec must be a mapping such as {{type: int, min: 1}}, got {spec!r}")
    unknown = sorted(set(spec) - SCHEMA_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown spec key(s) {unknown}; known: {sorted(SCHEMA_KEYS)}")
    if spec.get("type", "any") not in SCHEMA_TYPES:
        raise ValueError(f"{where}: type must be one of {sorted(SCHEMA_TYPES)}, got {spec.get('type')!r}")
    if "items" in spec:
        _check_spec(spec["items"], f"{where}.items")
    for i, field_spec in enumerate(spec.get("fields", [])):
        _check_spec(field_spec, f"{where}.fields[{i}]")


def check_value(value, spec: dict, where: str) -> None:
    """Raise TypeError (wrong type) or ValueError (out of range) naming ``where``."""
    kind = spec.get("type", "any")
    if value is None:
        if spec.get("nullable") or kind == "any":
            return
        raise TypeError(f"{where} must be {kind}, not null")
    if not SCHEMA_TYPES[kind](value):
        raise TypeError(f"{where} must be {kind}{' or null' if spec.get('nullable') else ''}, "
                        f"got {type(value).__name__} {value!r}")
    if "choices" in spec and value not in spec["choices"]:
        raise ValueError(f"{where} must be one of {spec['choices']}, got {value!r}")
    for bound, ok, word in (("min", lambda b: value >= b, ">="), ("max", lambda b: value <= b, "<="),
                            ("gt", lambda b: value > b, ">")):
        if bound in spec and not ok(spec[bound]):
            raise ValueError(f"{where} must be {word} {spec[bound]}, got {value!r}")
    if "min_len" in spec and len(value) < spec["min_len"]:
        raise ValueError(f"{where} must have at least {spec['min_len']} element(s), got {value!r}")
    n = spec.get("len", len(spec["fields"]) if "fields" in spec else None)
    if n is not None and len(value) != n:
        raise ValueError(f"{where} must have exactly {n} element(s), got {value!r}")
    for i, v in enumerate(value if isinstance(value, list) else []):
        if "fields" in spec:
            check_value(v, spec["fields"][i], f"{where}[{i}]")
        elif "items" in spec:
            check_value(v, spec["items"], f"{where}[{i}]")


def output_parameters(nb: Path) -> list[str]:
    """Parameters the schema marks ``output: true``: files the notebook writes outside tables_dir
    (e.g. 02's ``hparams_file``); the runner stages them with the run's tables."""
    return [k for k, spec in (load_schema(nb) or {}).items() if spec.get("output")]


def validate_params(nb: Path, params: dict, source: Path | str = "params", lines: dict | None = None,
                    prefix: str = "") -> None:
    """Unknown names, wrong types and out-of-range values fail before anything runs, naming the
    file, the line and the key. Types and ranges come from ``params/schema.yaml``; a repo without
    one gets the types of the notebook's defaults (None: any)."""
    defaults, schema, lines = notebook_parameters(nb), load_schema(nb), lines or {}
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        line = lines.get(prefix + unknown[0])
        raise ValueError(f"{source}{f':{line}' if line else ''}: unknown parameter(s) {unknown} for {nb.name}; "
                         f"it accepts {sorted(defaults)}")
    for key, value in params.items():
        line = lines.get(prefix + key)
        where = f"{source}{f':{line}' if line else ''}: parameter {key!r} of {nb.name}"
        if schema is not None and key in schema:
            check_value(value, schema[key], where)
        elif not _type_ok(defaults[key], value):
            raise TypeError(f"{where} must be {type(defaults[key]).__name__} (default {defaults[key]!r}), "
                            f"got {type(value).__name__} {value!r}")


def validate_grid(nb: Path, params: dict, source: Path | str = "params", lines: dict | None = None) -> None:
    grid, lines = params[GRID], lines or {}
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"{source}: {GRID!r} must be a non-empty mapping of parameter -> list of values, "
                         f"got {grid!r}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{source}: {GRID}.{key} must be a non-empty list of values, got {values!r}")
        if key in params:
            raise ValueError(f"{source}: {key!r} is both a fixed parameter and a {GRID} axis; keep one")
        for v in values:
            validate_params(nb, {key: v}, f"{source} ({GRID}.{key})", lines, prefix=f"{GRID}.")


# --- sweeps ------------------------------------------------------------------------------------

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
    return [(rid if ids.count(rid) == 1 else f"{rid}_{digest(p)[:8]}", p) for rid, p in runs]


def digest(obj) -> str:
    """sha256 of ``obj``'s canonical JSON: a parameter set's identity (clashing grid run ids here,
    the up-to-date key in `timerome.runcache`)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# --- where a profile's runs go -----------------------------------------------------------------

def output_dirs(profile: str, repo: Path = REPO) -> dict[str, Path]:
    """The shared folders of a profile's plain (non-grid) runs."""
    if profile == DEFAULT_PROFILE:
        return {"notebooks": repo / "notebooks", "figures": repo / "figures", "tables": repo / "tables"}
    base = repo / "runs" / profile
    return {"notebooks": base / "notebooks", "figures": base / "figures", "tables": base / "tables"}


def record_dir(nb: Path, profile: str, run_id: str | None, repo: Path = REPO) -> Path:
    """Where a run's manifest.json and log.txt go: ``runs/<profile>/<notebook>/[<run-id>/]``."""
    base = repo / "runs" / profile / nb.stem
    return base / run_id if run_id else base
