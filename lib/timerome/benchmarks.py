"""The transfer benchmarks -> `Fact` records: RWKU, MUSE (knowmem, verbmem), WHP, WMDP.

Each loader reads its benchmark's public format with the helpers of `timerome.data` (data root,
hub fallback, field checks, missing-subject policy), so files and errors behave as TOFU's do.
Subjects: RWKU gives them (rule "given": the row's subject, or for neighbor levels the neighbor
entity; the span is set only where it occurs verbatim in the query); MUSE knowmem, WHP and WMDP
use the entity branch of the subject rule (`timerome.subjects.locate_entity_subject`) and keep
facts without one (`on_missing_subject="keep"`), since many of their questions name no clean
entity; MUSE verbmem is a continuation task and has no subject.
"""
from __future__ import annotations

from .data import (ENV_VAR, DataError, DataNotFound, Fact, apply_subjects, check_policy, data_root, load_rows,
                   record_field)
from .subjects import find_words, locate_entity_subject


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
        src, rows = load_rows(f"RWKU {t}/{level}", path=None, root=root, rel=f"rwku/Target/{t}/{level}.json")
        for i, (where, rec) in enumerate(rows):
            q = record_field(rec, "query", "str", src, where)
            f = Fact(question=q, answer=record_field(rec, "answer", "answer", src, where),
                     split=f"rwku/{t}/{level}", index=i, entity_id=t, subject_rule="given",
                     extra={"level": record_field(rec, "level", "str|int", src, where),
                            "type": record_field(rec, "type", "str", src, where)})
            target_subject = record_field(rec, "subject", "str", src, where)
            if neighbor:
                f.subject = record_field(rec, "neighbor", "str", src, where)
                f.extra["target_subject"] = target_subject
            else:
                f.subject = target_subject
            # the given subject is often not in the query (cloze/adversarial): no span then
            span = find_words(q, f.subject)
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
    check_policy(on_missing_subject)
    rel = f"muse/{corpus}/knowmem/{split}.json"
    src, rows = load_rows(f"MUSE {corpus} knowmem {split!r}", path=path, root=root, rel=rel)
    facts = [Fact(question=record_field(r, "question", "str", src, w),
                  answer=record_field(r, "answer", "answer", src, w),
                  split=f"muse/{corpus}/knowmem/{split}", index=i) for i, (w, r) in enumerate(rows)]
    return apply_subjects(facts, [locate_entity_subject(f.question) for f in facts], on_missing_subject, src)


def load_muse_verbmem(corpus, root=None, *, path=None) -> list[Fact]:
    """MUSE verbmem forget set ({prompt, gt}: continue a passage verbatim) from
    `<root>/muse/<corpus>/verbmem/forget.json`, else the hub (config "verbmem", split
    "forget"). A continuation task has no subject: subject stays None."""
    _check_corpus(corpus)
    src, rows = load_rows(f"MUSE {corpus} verbmem", path=path, root=root,
                           rel=f"muse/{corpus}/verbmem/forget.json",
                           hub=(MUSE_CORPORA[corpus], "verbmem", "forget"))
    return [Fact(question=record_field(r, "prompt", "str", src, w), answer=record_field(r, "gt", "answer", src, w),
                 split=f"muse/{corpus}/verbmem/forget", index=i) for i, (w, r) in enumerate(rows)]


# -------------------------------------------------------------------------------- WHP

def load_whp(root=None, *, path=None, on_missing_subject="keep") -> list[Fact]:
    """WHP ("Who's Harry Potter") evaluation prompts, format of magikarp01/tasks
    hp/data/msr_data/evaluation_prompts.json (a JSON array; JSON Lines also read):
    rows {"prompt": {"references": [...], "prompt": str, "subtlety": int}}.
    Local only: `<root>/whp/evaluation_prompts.json`."""
    check_policy(on_missing_subject)
    src, rows = load_rows("WHP evaluation prompts", path=path, root=root, rel="whp/evaluation_prompts.json")
    facts = []
    for i, (w, rec) in enumerate(rows):
        p = record_field(rec, "prompt", "dict", src, w)
        refs = record_field(p, "references", "list[answer]", src, w, prefix="prompt.")
        if not refs:
            raise DataError(f"{src}: {w}: field 'prompt.references' must not be empty")
        facts.append(Fact(question=record_field(p, "prompt", "str", src, w, prefix="prompt."), answer=refs[0],
                          split="whp/evaluation_prompts", index=i,
                          extra={"references": refs,
                                 "subtlety": record_field(p, "subtlety", "int", src, w, prefix="prompt.")}))
    return apply_subjects(facts, [locate_entity_subject(f.question) for f in facts], on_missing_subject, src)


def load_whp_trivia(root=None, *, path=None, on_missing_subject="keep") -> list[Fact]:
    """WHP trivia, JSON Lines {question, true_answer, false_answer} (magikarp01/tasks
    hp/data/harry_potter_trivia_502_v2.jsonl); the false answer is the one perturbed
    answer. Local only: `<root>/whp/harry_potter_trivia_502_v2.jsonl`."""
    check_policy(on_missing_subject)
    src, rows = load_rows("WHP trivia", path=path, root=root, rel="whp/harry_potter_trivia_502_v2.jsonl")
    facts = [Fact(question=record_field(r, "question", "str", src, w),
                  answer=record_field(r, "true_answer", "answer", src, w),
                  perturbed_answers=[record_field(r, "false_answer", "answer", src, w)],
                  split="whp/trivia", index=i) for i, (w, r) in enumerate(rows)]
    return apply_subjects(facts, [locate_entity_subject(f.question) for f in facts], on_missing_subject, src)


# ------------------------------------------------------------------------------- WMDP

WMDP_HUB = "cais/wmdp"
WMDP_CONFIGS = ("wmdp-bio", "wmdp-chem", "wmdp-cyber")


def load_wmdp(config="wmdp-bio", root=None, *, path=None, on_missing_subject="keep") -> list[Fact]:
    """WMDP multiple-choice questions {question, choices, answer: int}; Fact.answer is
    the correct choice text, the other choices are `perturbed_answers`. From `path`, else `<root>/wmdp/<config>.jsonl`, else the
    hub (`cais/wmdp`, split "test")."""
    if config not in WMDP_CONFIGS:
        raise ValueError(f"unknown WMDP config {config!r}; valid: {', '.join(WMDP_CONFIGS)}")
    check_policy(on_missing_subject)
    src, rows = load_rows(f"WMDP {config}", path=path, root=root, rel=f"wmdp/{config}.jsonl",
                           hub=(WMDP_HUB, config, "test"))
    facts = []
    for i, (w, r) in enumerate(rows):
        choices = record_field(r, "choices", "list[str]", src, w)
        k = record_field(r, "answer", "int", src, w)
        if not 0 <= k < len(choices):
            raise DataError(f"{src}: {w}: field 'answer' = {k} is not an index into {len(choices)} choices")
        if not choices[k].strip():
            raise DataError(f"{src}: {w}: field 'choices' item {k} (the answer) must be a non-empty string")
        facts.append(Fact(question=record_field(r, "question", "str", src, w), answer=choices[k],
                          perturbed_answers=[c for j, c in enumerate(choices) if j != k],
                          split=f"wmdp/{config}", index=i, extra={"choices": choices, "answer_index": k}))
    return apply_subjects(facts, [locate_entity_subject(f.question) for f in facts], on_missing_subject, src)
