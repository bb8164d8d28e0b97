"""Evaluation data -> `Fact` records (TOFU, RWKU, MUSE, WHP, WMDP).

Every loader returns `list[Fact]`. Local files are read in place from the data root
(`data_root()`: explicit `root=` argument, else the `TIMEROME_DATA` environment
variable); loaders for datasets that live on the Hugging Face hub fall back to
`datasets.load_dataset` and, if that fails too, raise `DataNotFound` naming
`TIMEROME_DATA` and the file(s) that were expected. Bad input raises `DataError`
naming the file, the line (JSON Lines) or item (JSON array), and the field.

Subject rule
------------
Causal tracing and editing need the subject span of each fact. Only RWKU marks it
("given"; its span is set only where that subject occurs verbatim in the query, about
60% of rows); for the other datasets it is recovered by ONE rule with ordered branches.
The first branch that matches wins and is recorded in `Fact.subject_rule`; the span is
stored as `Fact.subject_span` (character offsets) into `Fact.subject_in`
("question" or "answer"), so `getattr(fact, fact.subject_in)[slice(*fact.subject_span)]
== fact.subject` holds whenever the span is set.

TOFU fictitious authors (forget*, retain*, full, holdout*): facts are grouped by author
(`entity_id`, 20 facts each). The author's full name is recovered per group as the
capitalised multi-word span that occurs in the most facts of the group (question or
answer; ties go to the longer span). A span is a run of capitalised words, allowing
hyphens ("Al-Kuwaiti", "Jamie-li"), inner capitalised apostrophes ("O'Donnell"), lower
case name particles between capitalised words ("Isabella van Pletzen", "Van der Veen")
and a parenthesised nickname ("Alejandro (Alex) Fuentes"); possessive 's is not part
of it. The name must occur in at least half of the group's facts, else the author is
nameless (one TOFU author, rows 1760-1779 of full, is only ever "the fictitious
author"). Then, per fact:
  1. question_full_name    - the full name occurs in the question;
  2. question_partial_name - a contiguous part of the name (longest first, surname
                             before first name) occurs as whole words in the question
                             ("How has Majumdar's background ...", "Jamie Vasquez" typo);
  3. answer_full_name      - the full name occurs in the answer ("What is the full name
                             of the author born in ...?");
  4. question_title        - a quoted title in the question ('What is "Silent Witness"
                             about?');
  5. question_author_ref   - a descriptive reference "the/this ... author|writer";
  6. question_pronoun      - the first he/she/his/her/they/their in the question.
Branches 4-6 are weak (no name in the prompt); filter on `subject_rule` if needed.
On the real data every TOFU author-split fact is located by branches 1-6.

Real-world entity splits (TOFU real_authors / world_facts, MUSE knowmem, WHP, WMDP):
  question_entity - the first quoted span of the question, else its longest run of
                    capitalised words (leading question/function words such as "What",
                    "The" are dropped; "of"/"the" and name particles may join words:
                    "Land of the Rising Sun").
These questions often have no named entity at all ("Which river is the longest in the
world?", "What percentage of phones ..."), so their loaders default to
on_missing_subject="keep" (subject None) rather than "raise".

`on_missing_subject`: "raise" -> `SubjectNotFound` naming split, index and question;
"skip" -> drop the fact; "keep" -> keep it with subject None.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

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


def _field(rec, name, kind, src, where, *, prefix=""):
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


def _load_rows(what, *, path, root, rel, hub=None):
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


def _check_policy(on_missing_subject):
    if on_missing_subject not in ("raise", "skip", "keep"):
        raise ValueError(f"on_missing_subject must be 'raise', 'skip' or 'keep', got {on_missing_subject!r}")


def _apply_subjects(facts, found, on_missing_subject, src):
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


# ------------------------------------------------------------------------ subject rule

# A word token: a parenthesised nickname "(Alex)", or letters/digits/hyphens with inner
# apostrophes only before a capital ("O'Donnell" yes, "Vasquez's" -> "Vasquez").
_TOKEN = re.compile(r"\([^\W\d_][\w\-]*\)|[^\W_](?:[\w\-]|['’](?=[A-ZÀ-Þ]))*")
# Lower-case words allowed between capitalised words of a name or entity.
_PARTICLES = frozenset("de da del della di do dos das du van von der den ter la le al el bin ibn y of the".split())
_TITLES = frozenset("Mr Mrs Ms Dr St Jr Sr Prof".split())
# Capitalised only because they start a question (or dates): dropped from the front of entities.
_STOP = frozenset("""a an the what which who whom whose where when why how is are was were do does did
    can could would should will shall may might must has have had in on at for from by to of and or but if as
    with into about name according apart besides lastly also after before during since although yes no
    it its this that these those their his her our my your there please tell give describe explain list
    identify provide mention
    monday tuesday wednesday thursday friday saturday sunday january february march april june july
    august september october november december""".split())


def _runs(text):
    """Maximal runs of capitalised words in `text`: lists of (start, end, kind) tokens,
    kind "word" | "particle" | "nick"; runs start and end with a word."""
    runs, cur = [], []

    def close():
        while cur and cur[-1][2] != "word":
            cur.pop()
        if cur:
            runs.append(list(cur))
        cur.clear()

    prev_end = None
    for m in _TOKEN.finditer(text):
        s, e, tok = m.start(), m.end(), m.group()
        # keep the dot of initials and titles: "John F. Kennedy", "U.S.", "Mr. Weasley"
        if text[e:e + 1] == "." and (len(tok) == 1 or tok in _TITLES):
            e += 1
        if tok[0] == "(":
            kind = "nick" if tok[1].isupper() else None
        elif tok[0].isupper():
            kind = "word"
        elif tok in _PARTICLES:
            kind = "particle"
        else:
            kind = None
        joined = prev_end is not None and text[prev_end:s].strip() == ""
        if not joined or kind is None:
            close()
        if kind is not None and (cur or kind == "word"):
            cur.append((s, e, kind))
        prev_end = e
    close()
    return runs


def _name_candidates(text):
    """Every contiguous span of 2-6 capitalised words inside a run."""
    out = set()
    for run in _runs(text):
        words = [t for t in run if t[2] == "word"]
        for i in range(len(words)):
            for j in range(i + 1, min(len(words), i + 6)):
                out.add(text[words[i][0]:words[j][1]])
    return out


def recover_author_name(texts_per_fact) -> str | None:
    """The capitalised multi-word span found in the most facts (ties: the longer one);
    None if it occurs in fewer than half of them. `texts_per_fact`: iterable of
    (question, answer) pairs of one author."""
    counts, n = Counter(), 0
    for texts in texts_per_fact:
        n += 1
        counts.update(set().union(*(_name_candidates(t) for t in texts)))
    if not counts:
        return None
    name, c = max(counts.items(), key=lambda kv: (kv[1], len(kv[0])))
    return name if 2 * c >= n else None


def _find_words(text, phrase):
    """Span of the first whole-word occurrence of `phrase` in `text`, or None."""
    m = re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", text)
    return m.span() if m else None


_QUOTED = re.compile(
    r"[\"“]([^\"“”]+)[\"”]"  # "double" or “curly”
    r"|(?<!\w)['‘]((?:[^'‘’]|['’](?=\w))+?)['’](?!\w)"  # 'single' (inner Day's is fine)
)
_AUTHOR_REF = re.compile(r"\b(?:[Tt]he|[Tt]his|[Tt]hat|[Oo]ur)\s+(?:[^\s?,.;:]+\s+){0,3}?(?:author|writer)\b")
_PRONOUN = re.compile(r"\b(?:[Hh]e|[Ss]he|[Hh]is|[Hh]er|[Hh]im|[Tt]hey|[Tt]heir|[Tt]hem)\b")


def _quoted(text):
    m = _QUOTED.search(text)
    if not m:
        return None
    g = 1 if m.group(1) is not None else 2
    return m.group(g), m.span(g)


def locate_entity_subject(question):
    """Entity branch: first quoted span, else the longest capitalised run of the question
    -> (subject, "question_entity", "question", span) or None."""
    q = _quoted(question)
    if q:
        return q[0], "question_entity", "question", q[1]
    best = None
    for run in _runs(question):
        # drop leading question/function words and particles ("What", "The", "In")
        while run and (run[0][2] != "word" or question[run[0][0]:run[0][1]].rstrip(".").lower() in _STOP):
            run = run[1:]
        if not run:
            continue
        s, e = run[0][0], run[-1][1]
        if best is None or e - s > best[1] - best[0]:
            best = (s, e)
    if best is None:
        return None
    return question[best[0]:best[1]], "question_entity", "question", best


def locate_author_subject(question, answer, name):
    """TOFU author branches 1-6 (module docstring) -> (subject, rule, field, span) or None."""
    if name:
        span = _find_words(question, name)
        if span:
            return name, "question_full_name", "question", span
        part = next(_name_parts(question, name), None)
        if part:
            return part[0], "question_partial_name", "question", part[1]
        span = _find_words(answer, name)
        if span:
            return name, "answer_full_name", "answer", span
    q = _quoted(question)
    if q:
        return q[0], "question_title", "question", q[1]
    for rx, rule in ((_AUTHOR_REF, "question_author_ref"), (_PRONOUN, "question_pronoun")):
        m = rx.search(question)
        if m:
            return m.group(), rule, "question", m.span()
    return None


def _name_parts(question, name):
    """Whole-word occurrences in `question` of contiguous parts of `name`: longest
    first, then the rightmost (surname before first name)."""
    words = [(s, e) for run in _runs(name) for s, e, kind in run if kind == "word"]
    parts = []
    for n in range(len(words) - 1, 0, -1):  # longest first
        for i in range(len(words) - n, -1, -1):  # rightmost first: surname before first name
            parts.append(name[words[i][0]:words[i + n - 1][1]])
    for part in parts:
        span = _find_words(question, part)
        if span:
            yield part, span


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
    _check_policy(on_missing_subject)
    src, rows = _load_rows(f"TOFU split {split!r}", path=path, root=root,
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
    return _apply_subjects(facts, found, on_missing_subject, src)


def _tofu_fact(split, i, rec, src, where):
    fact = Fact(question=_field(rec, "question", "str", src, where),
                answer=_field(rec, "answer", "answer", src, where), split=split, index=i)
    used = {"question", "answer"}
    if split in ("real_authors", "world_facts"):
        names = [f"option{k}" for k in range(1, 5)]
        fact.extra["options"] = [_field(rec, n, "str", src, where) for n in names]
        used.update(names)
    elif split.endswith("_perturbed"):
        fact.perturbed_answers = list(_field(rec, "perturbed_answer", "list[answer]", src, where))
        used.add("perturbed_answer")
        # real_authors/world_facts_perturbed have no paraphrase: paraphrased_answer stays
        # None and metrics use the original answer in its place, as TOFU does.
        if split not in _TOFU_ENTITY:
            fact.paraphrased_answer = _field(rec, "paraphrased_answer", "answer", src, where)
            fact.paraphrased_question = _field(rec, "paraphrased_question", "str", src, where)
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


# ------------------------------------------------------------------------------- RWKU

RWKU_LEVELS = ("forget_level1", "forget_level2", "forget_level3", "neighbor_level1", "neighbor_level2")


def rwku_targets(root=None) -> list[str]:
    """RWKU target directory names under <root>/rwku/Target, sorted by numeric prefix."""
    base = data_root(root)
    tdir = base / "rwku" / "Target" if base is not None else None
    if tdir is None or not tdir.is_dir():
        where = tdir if tdir is not None else f"${ENV_VAR}/rwku/Target ({ENV_VAR} is not set)"
        raise DataNotFound(f"RWKU: no target directory {where}; set {ENV_VAR} to the data root (or pass root=)")
    names = [p.name for p in tdir.iterdir() if p.is_dir()]
    bad = [n for n in names if not n.split("_", 1)[0].isdigit()]
    if bad:
        raise DataError(f"{tdir}: target directories must be named <number>_<name>, got {bad[:3]}")
    return sorted(names, key=lambda n: int(n.split("_", 1)[0]))


def load_rwku(target=None, level="forget_level1", root=None) -> list[Fact]:
    """RWKU probes for one target (directory name, e.g. "1_Stephen_King") or all targets
    (None). Subjects are given by the data (rule "given"): the row's `subject`, or for
    neighbor levels the `neighbor` entity, with the target subject in extra["target_subject"]."""
    if level not in RWKU_LEVELS:
        raise ValueError(f"unknown RWKU level {level!r}; valid: {', '.join(RWKU_LEVELS)}")
    targets = rwku_targets(root)
    if target is not None:
        if target not in targets:
            raise ValueError(f"unknown RWKU target {target!r}; valid e.g. {', '.join(targets[:5])}, ... "
                             f"({len(targets)} directories under rwku/Target)")
        targets = [target]
    neighbor = level.startswith("neighbor")
    facts = []
    for t in targets:
        src, rows = _load_rows(f"RWKU {t}/{level}", path=None, root=root, rel=f"rwku/Target/{t}/{level}.json")
        for i, (where, rec) in enumerate(rows):
            q = _field(rec, "query", "str", src, where)
            f = Fact(question=q, answer=_field(rec, "answer", "answer", src, where),
                     split=f"rwku/{t}/{level}", index=i, entity_id=t, subject_rule="given",
                     extra={"level": _field(rec, "level", "str|int", src, where),
                            "type": _field(rec, "type", "str", src, where)})
            target_subject = _field(rec, "subject", "str", src, where)
            if neighbor:
                f.subject = _field(rec, "neighbor", "str", src, where)
                f.extra["target_subject"] = target_subject
            else:
                f.subject = target_subject
            # the given subject is often not in the query (cloze/adversarial): no span then
            span = _find_words(q, f.subject)
            if span:
                f.subject_span, f.subject_in = span, "question"
            facts.append(f)
    return facts


# ------------------------------------------------------------------------------- MUSE

MUSE_CORPORA = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
MUSE_KNOWMEM_SPLITS = ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl")


def _check_corpus(corpus):
    if corpus not in MUSE_CORPORA:
        raise ValueError(f"unknown MUSE corpus {corpus!r}; valid: {', '.join(MUSE_CORPORA)}")


def load_muse_knowmem(corpus, split, root=None, *, path=None, on_missing_subject="keep") -> list[Fact]:
    """MUSE knowmem QA from `<root>/muse/<corpus>/knowmem/<split>.json` (JSON array of
    {question, answer}). Subjects by the entity rule; many of these questions name no
    clean entity ("What percentage of ..."), hence on_missing_subject="keep"."""
    _check_corpus(corpus)
    if split not in MUSE_KNOWMEM_SPLITS:
        raise ValueError(f"unknown MUSE knowmem split {split!r}; valid: {', '.join(MUSE_KNOWMEM_SPLITS)}")
    _check_policy(on_missing_subject)
    rel = f"muse/{corpus}/knowmem/{split}.json"
    src, rows = _load_rows(f"MUSE {corpus} knowmem {split!r}", path=path, root=root, rel=rel)
    facts = [Fact(question=_field(r, "question", "str", src, w), answer=_field(r, "answer", "answer", src, w),
                  split=f"muse/{corpus}/knowmem/{split}", index=i) for i, (w, r) in enumerate(rows)]
    return _apply_subjects(facts, [locate_entity_subject(f.question) for f in facts], on_missing_subject, src)


def load_muse_verbmem(corpus, root=None, *, path=None) -> list[Fact]:
    """MUSE verbmem forget set ({prompt, gt}: continue a passage verbatim) from
    `<root>/muse/<corpus>/verbmem/forget.json`, else the hub (config "verbmem", split
    "forget"). A continuation task has no subject: subject stays None."""
    _check_corpus(corpus)
    src, rows = _load_rows(f"MUSE {corpus} verbmem", path=path, root=root,
                           rel=f"muse/{corpus}/verbmem/forget.json",
                           hub=(MUSE_CORPORA[corpus], "verbmem", "forget"))
    return [Fact(question=_field(r, "prompt", "str", src, w), answer=_field(r, "gt", "answer", src, w),
                 split=f"muse/{corpus}/verbmem/forget", index=i) for i, (w, r) in enumerate(rows)]


# -------------------------------------------------------------------------------- WHP

def load_whp(root=None, *, path=None, on_missing_subject="keep") -> list[Fact]:
    """WHP ("Who's Harry Potter") evaluation prompts, format of magikarp01/tasks
    hp/data/msr_data/evaluation_prompts.json (a JSON array; JSON Lines also read):
    rows {"prompt": {"references": [...], "prompt": str, "subtlety": int}}.
    Local only: `<root>/whp/evaluation_prompts.json`."""
    _check_policy(on_missing_subject)
    src, rows = _load_rows("WHP evaluation prompts", path=path, root=root, rel="whp/evaluation_prompts.json")
    facts = []
    for i, (w, rec) in enumerate(rows):
        p = _field(rec, "prompt", "dict", src, w)
        refs = _field(p, "references", "list[answer]", src, w, prefix="prompt.")
        if not refs:
            raise DataError(f"{src}: {w}: field 'prompt.references' must not be empty")
        facts.append(Fact(question=_field(p, "prompt", "str", src, w, prefix="prompt."), answer=refs[0],
                          split="whp/evaluation_prompts", index=i,
                          extra={"references": refs,
                                 "subtlety": _field(p, "subtlety", "int", src, w, prefix="prompt.")}))
    return _apply_subjects(facts, [locate_entity_subject(f.question) for f in facts], on_missing_subject, src)


def load_whp_trivia(root=None, *, path=None, on_missing_subject="keep") -> list[Fact]:
    """WHP trivia, JSON Lines {question, true_answer, false_answer} (magikarp01/tasks
    hp/data/harry_potter_trivia_502_v2.jsonl); the false answer is the one perturbed
    answer. Local only: `<root>/whp/harry_potter_trivia_502_v2.jsonl`."""
    _check_policy(on_missing_subject)
    src, rows = _load_rows("WHP trivia", path=path, root=root, rel="whp/harry_potter_trivia_502_v2.jsonl")
    facts = [Fact(question=_field(r, "question", "str", src, w), answer=_field(r, "true_answer", "answer", src, w),
                  perturbed_answers=[_field(r, "false_answer", "answer", src, w)],
                  split="whp/trivia", index=i) for i, (w, r) in enumerate(rows)]
    return _apply_subjects(facts, [locate_entity_subject(f.question) for f in facts], on_missing_subject, src)


# ------------------------------------------------------------------------------- WMDP

WMDP_HUB = "cais/wmdp"
WMDP_CONFIGS = ("wmdp-bio", "wmdp-chem", "wmdp-cyber")


def load_wmdp(config="wmdp-bio", root=None, *, path=None, on_missing_subject="keep") -> list[Fact]:
    """WMDP multiple-choice questions {question, choices, answer: int}; Fact.answer is
    the correct choice text, the other choices are `perturbed_answers`. From `path`, else `<root>/wmdp/<config>.jsonl`, else the
    hub (`cais/wmdp`, split "test")."""
    if config not in WMDP_CONFIGS:
        raise ValueError(f"unknown WMDP config {config!r}; valid: {', '.join(WMDP_CONFIGS)}")
    _check_policy(on_missing_subject)
    src, rows = _load_rows(f"WMDP {config}", path=path, root=root, rel=f"wmdp/{config}.jsonl",
                           hub=(WMDP_HUB, config, "test"))
    facts = []
    for i, (w, r) in enumerate(rows):
        choices = _field(r, "choices", "list[str]", src, w)
        k = _field(r, "answer", "int", src, w)
        if not 0 <= k < len(choices):
            raise DataError(f"{src}: {w}: field 'answer' = {k} is not an index into {len(choices)} choices")
        if not choices[k].strip():
            raise DataError(f"{src}: {w}: field 'choices' item {k} (the answer) must be a non-empty string")
        facts.append(Fact(question=_field(r, "question", "str", src, w), answer=choices[k],
                          perturbed_answers=[c for j, c in enumerate(choices) if j != k],
                          split=f"wmdp/{config}", index=i, extra={"choices": choices, "answer_index": k}))
    return _apply_subjects(facts, [locate_entity_subject(f.question) for f in facts], on_missing_subject, src)
