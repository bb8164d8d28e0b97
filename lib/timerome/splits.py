"""Author-disjoint validation / test splits of TOFU (no hyper-parameter sees a test author).

Retain side. TOFU ``retain_perturbed`` holds 20 facts from each of 20 authors. `retain_author_split`
sends ``n_validation`` of them to a *validation* part, used only to tune (λ, layer diagnostics),
and the rest to a *test* part, the only retain facts a table cell is scored on
(`metrics.evaluate` loads the test part for the split name "retain"). The rule: authors are
ranked by ``sha256(f"{seed}:{entity_id}")`` and the first ``n_validation`` are validation. The
rank depends only on the seed and the author id, never on the file's row order, and both parts
are returned sorted by id.

Forget side. `validation_forget_facts` draws tuning facts from the authors of a larger forget
split that are not in the test forget split (default forget05 minus forget01), round-robin over
those authors, so no single author dominates the tuning set. `validation_facts` is the tracer's
F_v (Eq. 5): one fact from each of the first n forget10 authors outside forget01, so the Table I
forget set never tunes the edited coordinate.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

__all__ = ["AuthorSplit", "split_authors", "retain_author_split", "retain_facts", "validation_forget_facts",
           "validation_facts", "anchor_facts", "RETAIN_FILE"]

RETAIN_FILE = "retain_perturbed"  # carries the paraphrased / perturbed answers the truth ratio needs
RETAIN_PARTS = ("validation", "test")


@dataclass(frozen=True)
class AuthorSplit:
    """Entity ids of the retain authors: ``validation`` (tuning only) and ``test`` (everything else)."""
    validation: tuple[str, ...]
    test: tuple[str, ...]

    def part(self, name: str) -> tuple[str, ...]:
        if name not in RETAIN_PARTS:
            raise ValueError(f"unknown retain part {name!r}; expected one of {RETAIN_PARTS}")
        return getattr(self, name)


def _rank(seed: int, entity_id: str) -> str:
    return hashlib.sha256(f"{seed}:{entity_id}".encode()).hexdigest()


def _authors(facts, what) -> list[str]:
    ids = {f.entity_id for f in facts}
    if None in ids:
        raise ValueError(f"{what}: some facts have no entity_id (author); cannot split by author")
    return sorted(ids)


def split_authors(authors, *, n_validation: int = 4, seed: int = 0) -> AuthorSplit:
    """The split rule on a collection of author ids (see the module docstring)."""
    authors = sorted(set(authors))
    if isinstance(n_validation, bool) or not isinstance(n_validation, int) or not 0 < n_validation < len(authors):
        raise ValueError(f"n_validation={n_validation!r} must be an integer in [1, {len(authors) - 1}] "
                         f"({len(authors)} authors: both parts must be non-empty)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} must be an integer")
    val = set(sorted(authors, key=lambda a: _rank(seed, a))[:n_validation])
    return AuthorSplit(validation=tuple(a for a in authors if a in val),
                       test=tuple(a for a in authors if a not in val))


def retain_author_split(root=None, *, n_validation: int = 4, seed: int = 0) -> AuthorSplit:
    """The validation / test split of TOFU ``retain_perturbed``'s authors (deterministic in ``seed``)."""
    from .data import load_tofu

    return split_authors(_authors(load_tofu(RETAIN_FILE, root), RETAIN_FILE), n_validation=n_validation, seed=seed)


def retain_facts(part: str, root=None, *, max_examples: int | None = None, split: AuthorSplit | None = None) -> list:
    """Facts of ``retain_perturbed`` whose author is in ``part`` ("validation" or "test") of ``split``
    (default: `retain_author_split` with its defaults), round-robin over those authors (sorted by
    id), the j-th author's facts in file order rotated by j. So the first ``max_examples`` span as
    many authors as they can instead of the file's first one or two, and as many question
    positions (TOFU asks each author's questions in one order: name, birthplace, ... )."""
    from .data import load_tofu

    split = retain_author_split(root) if split is None else split
    keep = set(split.part(part))
    by_author = defaultdict(list)
    for f in load_tofu(RETAIN_FILE, root):
        if f.entity_id in keep:
            by_author[f.entity_id].append(f)
    groups = [by_author[a] for a in sorted(by_author)]
    out = _round_robin([g[j % len(g):] + g[:j % len(g)] for j, g in enumerate(groups)])
    if max_examples is not None:
        if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
            raise ValueError(f"max_examples={max_examples!r} must be an integer >= 1 (or None: all)")
        out = out[:max_examples]
    return out


def _round_robin(groups) -> list:
    """Round i takes the i-th item of every group that still has one."""
    return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


def validation_forget_facts(n: int, root=None, *, split: str = "forget05", exclude: str = "forget01",
                            min_authors: int = 4) -> list:
    """``n`` facts of ``split`` whose subject is in the question and whose author is not an author of
    ``exclude``, taken round-robin over those authors (sorted by id; each author's facts in file
    order), so they span min(n, number of such authors) authors. Raises ValueError if that is
    fewer than ``min_authors`` or fewer than ``n`` such facts exist."""
    from .data import load_tofu

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1")
    if split == exclude:
        raise ValueError(f"split and exclude are both {split!r}: no validation author would remain")
    banned = set(_authors(load_tofu(exclude, root), exclude))
    by_author = defaultdict(list)
    for f in load_tofu(split, root):
        if f.entity_id is not None and f.entity_id not in banned and f.subject_in == "question":
            by_author[f.entity_id].append(f)
    authors = sorted(by_author)
    total = sum(len(v) for v in by_author.values())
    if len(authors) < min_authors:
        raise ValueError(f"{split} has {len(authors)} authors outside {exclude} with a subject in the question; "
                         f"min_authors={min_authors} asked")
    if n < min_authors:
        raise ValueError(f"n={n} facts cannot span min_authors={min_authors} authors")
    if n > total:
        raise ValueError(f"n={n} asked but {split} has only {total} facts of authors outside {exclude} "
                         f"with a subject in the question")
    return _round_robin([by_author[a] for a in authors])[:n]


def validation_facts(n: int = 8, root=None, *, split: str = "forget10", exclude: str = "forget01") -> list:
    """F_v: of each of the first n authors of ``split`` that are not in ``exclude``, the first fact
    whose subject is in the question (so the Table I forget set never tunes the coordinate)."""
    from .data import load_tofu

    held, out = {f.entity_id for f in load_tofu(exclude, root)}, {}
    for f in load_tofu(split, root):
        if f.entity_id not in held and f.subject_in == "question":
            out.setdefault(f.entity_id, f)
    if len(out) < n:
        raise ValueError(f"only {len(out)} authors of {split} are outside {exclude}; asked for n={n}")
    return list(out.values())[:n]


def anchor_facts(source: str = "forget10", root=None, *, exclude=("forget05",), max_examples: int | None = None) -> list:
    """Retain facts a gradient baseline may *train* on (its retain-NLL anchor): the facts of
    ``source`` whose author is neither a ``RETAIN_FILE`` author (validation or test) nor an author
    of any ``exclude`` split (the validation forget facts), round-robin over authors. The tiny
    backbones learned forget10, so its authors outside forget05 are facts they know that no cell
    scores; on a model fine-tuned on all of TOFU use ``source="retain99"``."""
    from .data import load_tofu

    banned = set(_authors(load_tofu(RETAIN_FILE, root), RETAIN_FILE))
    for split in exclude:
        banned |= set(_authors(load_tofu(split, root), split))
    by_author = defaultdict(list)
    for f in load_tofu(source, root):
        if f.entity_id not in banned:
            by_author[f.entity_id].append(f)
    if not by_author:
        raise ValueError(f"anchor_facts: every author of {source} is a retain or {list(exclude)} author")
    out = _round_robin([by_author[a] for a in sorted(by_author)])
    return out if max_examples is None else out[:int(max_examples)]
