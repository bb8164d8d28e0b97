"""Evaluation data -> `Fact` records: the record, reading and checking data files, and TOFU.

Every loader returns `list[Fact]`. Local files are read in place from the data root
(`data_root()`: explicit `root=` argument, else the `TIMEROME_DATA` environment
variable); loaders for datasets that live on the Hugging Face hub fall back to
`datasets.load_dataset` and, if that fails too, raise `DataNotFound` naming
`TIMEROME_DATA` and the file(s) that were expected (`load_rows`; with the hub offline, or
after a refused connection, the fallback is not tried). Bad input raises `DataError`
naming the file, the line (JSON Lines) or item (JSON array), and the field (`record_field`).

Each fact gets its subject from the subject rule (`timerome.subjects`); `load_tofu` first
groups an author split by author and recovers each author's name. `on_missing_subject`:
"raise" -> `SubjectNotFound` naming split, index and question; "skip" -> drop the fact;
"keep" -> keep it with subject None (the default of the real-world entity splits, whose
questions often name no entity).

The transfer benchmarks (RWKU, MUSE, WHP, WMDP) are loaded by `timerome.benchmarks` with the
public helpers here (`load_rows`, `record_field`, `check_policy`, `apply_subjects`); TOFU, the
data every experiment uses, stays here with `Fact`.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .subjects import locate_author_subject, locate_entity_subject, recover_author_name

ENV_VAR = "TIMEROME_DATA"


class DataError(ValueError):
    """Malformed data: the message names the file, line/item and field."""


class DataNotFound(FileNotFoundError):
    """Data is neither under the data root nor reachable on the hub."""


class SubjectNotFound(DataError):
    """The subject rule found no subject span for a fact."""


def data_root(root=None) -> Path | None:
    """The data root: explicit `root`, else $TIMEROME_DATA, else None."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else None


@dataclass
class Fact:
    question: str
    answer: str
    split: str  # source split name, e.g. "forget10", "rwku/1_Stephen_King/forget_level1"
    index: int  # row index within the split's file
    subject: str | None = None
    subject_rule: str | None = None  # branch of the subject rule that found it
    subject_span: tuple[int, int] | None = None  # character span of `subject` ...
    subject_in: str | None = None  # ... in this field: "question" or "answer"
    entity_id: str | None = None
    paraphrased_answer: str | None = None
    perturbed_answers: list[str] = field(default_factory=list)
    paraphrased_question: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def fact_id(self) -> str:
        return f"{self.split}:{self.index}"


def subject_rule_report(facts) -> dict[str, int]:
    """Number of facts per subject-rule branch ("none" = no subject)."""
    counts = Counter(f.subject_rule or "none" for f in facts)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ----------------------------------------------------------------------------- reading

def read_records(path) -> list[tuple[str, dict]]:
    """Read a JSON array or JSON Lines file of objects -> [(where, record)].

    `where` is "line N" (JSON Lines, 1-based) or "item N" (array, 0-based) for errors.
    The format is sniffed from the first character, since TOFU's JSON Lines files are
    named .json while WHP/MUSE .json files are arrays.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    out = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        for i, rec in enumerate(data):
            out.append((f"item {i}", _as_object(rec, path, f"item {i}")))
    else:
        # split on "\n" only: str.splitlines() would also split on U+2028 inside strings
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: invalid JSON ({e.msg}, column {e.colno})") from None
            out.append((f"line {n}", _as_object(rec, path, f"line {n}")))
    if not out:
        raise DataError(f"{path}: no records")
    return out


def _as_object(rec, src, where):
    if not isinstance(rec, dict):
        raise DataError(f"{src}: {where}: expected a JSON object, got {type(rec).__name__}")
    return rec


_KINDS = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "str|int": ("a string or integer", lambda v: isinstance(v, (str, int)) and not isinstance(v, bool)),
    "list[str]": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "dict": ("a JSON object", lambda v: isinstance(v, dict)),
    # an answer is scored: an empty one would get a (meaningless) log-probability, not an error
    "answer": ("a non-empty string", lambda v: isinstance(v, str) and v.strip() != ""),
    "list[answer]": ("a list of non-empty strings",
                     lambda v: isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)),
}


def record_field(rec, name, kind, src, where, *, prefix=""):
    """rec[name], checked to be of `kind`; errors name file, line/item and field."""
    label = prefix + name
    if name not in rec:
        raise DataError(f"{src}: {where}: missing field {label!r} (fields present: {sorted(rec)})")
    desc, ok = _KINDS[kind]
    v = rec[name]
    if not ok(v):
        shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
        raise DataError(f"{src}: {where}: field {label!r} must be {desc}, got {type(v).__name__} {shown}")
    return v


def load_rows(what, *, path, root, rel, hub=None):
    """Records from explicit `path`, else `<root>/<rel>`, else `hub()` -> (source, rows).

    `hub` is (repo, config, split) for `datasets.load_dataset`, or None if the dataset
    has no hub copy in the expected format.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataNotFound(f"{what}: no such file {p} (passed as path=)")
        return str(p), read_records(p)
    base = data_root(root)
    if base is not None and (base / rel).is_file():
        return str(base / rel), read_records(base / rel)
    expected = str(base / rel) if base is not None else f"${ENV_VAR}/{rel}"
    where = (f"expected {expected}" if base is not None
             else f"{ENV_VAR} is not set; expected {expected}")
    advice = f"set {ENV_VAR} to the data root (or pass root=/path=)"
    if hub is None:
        raise DataNotFound(f"{what}: not found locally ({where}); {advice}")
    repo, config, split = hub
    call = f"datasets.load_dataset({repo!r}, {config!r}, split={split!r})"
    offline = _hub_offline()
    if offline:  # the hub client would retry for many seconds before failing the same way
        raise DataNotFound(f"{what}: not found locally ({where}) and the hub fallback {call} was not tried "
                           f"({offline}); {advice}")
    try:
        import datasets

        ds = datasets.load_dataset(repo, config, split=split)
        rows = [(f"row {i}", dict(r)) for i, r in enumerate(ds)]
    except Exception as e:  # any hub failure (offline, auth, missing config) reads the same to the user
        if _is_connection_error(e):
            global _HUB_UNREACHABLE
            _HUB_UNREACHABLE = f"an earlier hub call could not connect: {type(e).__name__}"
        raise DataNotFound(
            f"{what}: not found locally ({where}) and the hub fallback {call} failed "
            f"({type(e).__name__}: {e}); {advice}"
        ) from e
    return f"hub {repo} [{config}/{split}]", rows


_HUB_UNREACHABLE = None  # why the hub is known to be unreachable in this process (set on a refused connection)
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _hub_offline() -> str | None:
    """Why a hub fallback should not even be tried (offline mode set, or an earlier connection
    refused), else None."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]} is set"
    return _HUB_UNREACHABLE


def _is_connection_error(e) -> bool:
    """A refused/failed connection anywhere in the exception chain (requests' and httpx's
    ConnectionError/ConnectError, or a builtin ConnectionError)."""
    while e is not None:
        if isinstance(e, ConnectionError) or type(e).__name__ in ("ConnectionError", "ConnectError",
                                                                  "ConnectTimeout", "MaxRetryError"):
            return True
        e = e.__cause__ or e.__context__
    return False


# ------------------------------------------------------------ missing-subject policy

def check_policy(on_missing_subject):
    """ValueError unless `on_missing_subject` is "raise", "skip" or "keep" (module docstring)."""
    if on_missing_subject not in ("raise", "skip", "keep"):
        raise ValueError(f"on_missing_subject must be 'raise', 'skip' or 'keep', got {on_missing_subject!r}")


def apply_subjects(facts, found, on_missing_subject, src):
    """Attach subject matches (or None) to facts, applying the missing-subject policy."""
    out = []
    for f, m in zip(facts, found):
        if m is None:
            if on_missing_subject == "raise":
                raise SubjectNotFound(
                    f"{src}: no subject found for fact {f.fact_id} (question {f.question!r}); "
                    f"pass on_missing_subject='skip' or 'keep' to load anyway"
                )
            if on_missing_subject == "skip":
                continue
        else:
            f.subject, f.subject_rule, f.subject_in, f.subject_span = m
        out.append(f)
    return out



# ------------------------------------------------------------------------------- TOFU

TOFU_HUB = "locuslab/TOFU"
# Author splits and the full.json author index of their first row (TOFU: 200 authors x
# 20 consecutive QA in full.json; forget10 = full[3600:], forget05 = full[3800:],
# forget01 = full[3960:]; retain* and retain_perturbed start at full[0]). Used only when
# full.json is not available to look the questions up.
_TOFU_AUTHOR_OFFSET = {
    "full": 0, "retain90": 0, "retain95": 0, "retain99": 0, "retain_perturbed": 0,
    "forget01": 198, "forget05": 190, "forget10": 180,
    "forget01_perturbed": 198, "forget05_perturbed": 190, "forget10_perturbed": 180,
}
# holdoutXX: 20/10/2 further authors NOT in full (holdout01/05 = first rows of holdout10);
# they get their own id space "tofu_holdout_author_NNN" by row order.
_TOFU_HOLDOUT = ("holdout01", "holdout05", "holdout10")
_TOFU_ENTITY = ("real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed")
TOFU_SPLITS = tuple(sorted([*_TOFU_AUTHOR_OFFSET, *_TOFU_HOLDOUT, *_TOFU_ENTITY]))
_AUTHOR_SIZE = 20


def load_tofu(split, root=None, *, path=None, on_missing_subject=None) -> list[Fact]:
    """Load a TOFU split (names in `TOFU_SPLITS`).

    From `path`, else `<root>/tofu/<split>.json` (JSON Lines), else the hub
    (`locuslab/TOFU`, config = split name). `on_missing_subject` defaults to "raise"
    for the fictitious-author splits and "keep" for real_authors/world_facts, whose
    generic questions often name no entity (see module docstring).
    """
    if split not in TOFU_SPLITS:
        raise ValueError(f"unknown TOFU split {split!r}; valid: {', '.join(TOFU_SPLITS)}")
    entity_split = split in _TOFU_ENTITY
    if on_missing_subject is None:
        on_missing_subject = "keep" if entity_split else "raise"
    check_policy(on_missing_subject)
    src, rows = load_rows(f"TOFU split {split!r}", path=path, root=root,
                           rel=f"tofu/{split}.json", hub=(TOFU_HUB, split, "train"))

    facts = [_tofu_fact(split, i, rec, src, where) for i, (where, rec) in enumerate(rows)]
    if entity_split:
        base = split.removesuffix("_perturbed")
        for f in facts:
            f.entity_id = f"{base}:{f.index}"
        found = [locate_entity_subject(f.question) for f in facts]
    else:
        for f, eid in zip(facts, _tofu_author_ids(split, facts, root)):
            f.entity_id = eid
        groups = defaultdict(list)
        for f in facts:
            groups[f.entity_id].append(f)
        names = {eid: recover_author_name((f.question, f.answer) for f in fs) for eid, fs in groups.items()}
        for f in facts:
            f.extra["author_name"] = names[f.entity_id]
        found = [locate_author_subject(f.question, f.answer, names[f.entity_id]) for f in facts]
    return apply_subjects(facts, found, on_missing_subject, src)


def _tofu_fact(split, i, rec, src, where):
    fact = Fact(question=record_field(rec, "question", "str", src, where),
                answer=record_field(rec, "answer", "answer", src, where), split=split, index=i)
    used = {"question", "answer"}
    if split in ("real_authors", "world_facts"):
        names = [f"option{k}" for k in range(1, 5)]
        fact.extra["options"] = [record_field(rec, n, "str", src, where) for n in names]
        used.update(names)
    elif split.endswith("_perturbed"):
        fact.perturbed_answers = list(record_field(rec, "perturbed_answer", "list[answer]", src, where))
        used.add("perturbed_answer")
        # real_authors/world_facts_perturbed have no paraphrase: paraphrased_answer stays
        # None and metrics use the original answer in its place, as TOFU does.
        if split not in _TOFU_ENTITY:
            fact.paraphrased_answer = record_field(rec, "paraphrased_answer", "answer", src, where)
            fact.paraphrased_question = record_field(rec, "paraphrased_question", "str", src, where)
            used.update(("paraphrased_answer", "paraphrased_question"))
    fact.extra.update({k: v for k, v in rec.items() if k not in used})
    return fact


def _tofu_author_ids(split, facts, root):
    """Author id per fact: by looking (question, answer) up in <root>/tofu/full.json when
    every row is found there, else by row order from the split's documented offset."""
    if split in _TOFU_HOLDOUT:
        return [f"tofu_holdout_author_{f.index // _AUTHOR_SIZE:03d}" for f in facts]
    base = data_root(root)
    full = base / "tofu" / "full.json" if base is not None else None
    if full is not None and full.is_file():
        # (question, answer) is unique in full.json; the question alone is not
        pos = {(r["question"], r["answer"]): i for i, (_, r) in enumerate(read_records(full))
               if isinstance(r.get("question"), str) and isinstance(r.get("answer"), str)}
        rows = [pos.get((f.question, f.answer)) for f in facts]
        if all(r is not None for r in rows):
            return [f"tofu_author_{r // _AUTHOR_SIZE:03d}" for r in rows]
    off = _TOFU_AUTHOR_OFFSET[split]
    return [f"tofu_author_{off + f.index // _AUTHOR_SIZE:03d}" for f in facts]
