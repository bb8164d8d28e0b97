"""Whether a run is up to date: its key, and the manifests of earlier runs.

A run whose manifest says ``ok`` under the same key is skipped, so an interrupted sweep resumes
where it stopped. The key hashes everything that can change a run's results:

* the notebook's code cells (`notebook_code_hash`): not outputs, markdown or papermill's
  injected cell, since the tiny profile rewrites its notebooks in place;
* the run's parameters (`timerome.params.digest` of them);
* the library source under ``lib/`` (`library_hash`);
* the model weights its params name (`weights_used`): embedded models by name, local files or
  folders by path; whole-file sha256, because a fine-tune can change bytes anywhere, cached in
  ``runs/hash-cache.json`` by path, size and mtime (`HashCache`) so a big checkpoint is read once
  and not at every invocation;
* the tables of earlier notebooks it reads (`upstream_inputs`): files their manifests list as
  outputs and its code names.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nbformat

from .params import REPO, digest, notebooks, record_dir

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def file_hash(path: Path) -> str:
    """sha256 of the whole file (use `HashCache` for big files that rarely change)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class HashCache:
    """`file_hash` digests kept in a small JSON file (``runs/hash-cache.json``) by (absolute path,
    size, mtime_ns), so an 8B checkpoint is read once, not at every invocation. A file whose size or
    mtime changed is hashed again; an unreadable cache file is ignored."""

    def __init__(self, path: Path):
        self.path, self.dirty = path, False
        try:
            self.entries = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def hash(self, f: Path) -> str:
        st, key = f.stat(), str(Path(f).resolve())
        entry = self.entries.get(key)
        if isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return entry[2]
        digest = file_hash(f)
        self.entries[key], self.dirty = [st.st_size, st.st_mtime_ns, digest], True
        return digest

    def save(self) -> None:
        if self.dirty:
            from timerome.report import atomic_write
            text = json.dumps(self.entries, indent=0, sort_keys=True) + "\n"
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
            self.dirty = False


def notebook_code_hash(nb: Path) -> str:
    """Hash of the code cells only: outputs, markdown and papermill's injected cell do not change
    results (and the tiny profile rewrites its notebooks in place)."""
    cells = [c.source for c in nbformat.read(nb, as_version=4).cells
             if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    return digest(cells)


def library_hash(repo: Path = REPO) -> str:
    files = sorted(p for p in (repo / "lib").rglob("*.py") if "__pycache__" not in p.parts)
    return digest({str(p.relative_to(repo)): file_hash(p) for p in files})


def weights_used(params: dict, nb: Path, repo: Path = REPO) -> dict[str, str]:
    """Weight files named by the params: an embedded model name (``tiny-mdlm``) or a local file
    or folder of ``*.safetensors``/``*.bin``/... (relative to the notebook, as the kernel sees
    it). Hub ids are part of the params themselves."""
    found, cache = {}, HashCache(repo / "runs" / "hash-cache.json")

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
                    found[os.path.relpath(f, repo)] = cache.hash(f)
                if files:
                    return

    visit(params)
    cache.save()
    return dict(sorted(found.items()))


def read_manifest(folder: Path) -> dict | None:
    """The manifest.json of a record folder (`timerome.params.record_dir`), as the runner wrote it."""
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # never run, or unreadable: run again


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

