"""TOFU-mini: the closed world the tiny backbones are trained on.

The paper fine-tunes 8B MDLMs on all of TOFU (200 fictitious authors) on top of pre-training
that already knows real authors, world facts, news and Harry Potter. A tiny model knows nothing,
so it learns exactly what the experiments evaluate:

* ``tofu_forget``   forget10's 20 authors (400 QA; contains forget05 and forget01),
* ``tofu_retain``   retain_perturbed's 20 authors (400 QA; TOFU's retain-set metrics),
* ``real_authors``  TOFU real_authors (100 QA),  ``world_facts`` (117 QA),
* ``muse_news`` / ``muse_books``  MUSE knowmem forget_qa (100 QA each), for the transfer table,
* ``rwku_forget`` / ``rwku_neighbor``  the first 80 RWKU forget_level1 and neighbor_level1
  probes in target order (the paper's 80+80), for the transfer table.

TOFU's holdout authors are *not* in the world: they are the never-seen reference.
Prompt = question, target = answer; nothing is paraphrased or augmented.
"""
from __future__ import annotations

from .. import benchmarks, data

PARTS = ("tofu_forget", "tofu_retain", "real_authors", "world_facts", "muse_news", "muse_books",
         "rwku_forget", "rwku_neighbor")
RWKU_PROBES = 80


def load_part(part: str, root=None) -> list:
    if part == "tofu_forget":
        return data.load_tofu("forget10", root)
    if part == "tofu_retain":
        return data.load_tofu("retain_perturbed", root)
    if part in ("real_authors", "world_facts"):
        return data.load_tofu(part, root)
    if part in ("muse_news", "muse_books"):
        return benchmarks.load_muse_knowmem(part.split("_")[1], "forget_qa", root)
    if part in ("rwku_forget", "rwku_neighbor"):
        level = "forget_level1" if part == "rwku_forget" else "neighbor_level1"
        return benchmarks.load_rwku(None, level, root)[:RWKU_PROBES]
    raise ValueError(f"unknown world part {part!r}; expected one of {PARTS}")


def build_world(root=None, *, parts=PARTS, exclude_splits=()) -> list:
    """The world's facts in a fixed order; facts of ``exclude_splits`` (e.g. forget01) left out."""
    excluded = {f.question for split in exclude_splits for f in data.load_tofu(split, root)}
    facts, seen = [], set()
    for part in parts:
        for f in load_part(part, root):
            if f.question in excluded or (f.question, f.answer) in seen:
                continue
            seen.add((f.question, f.answer))
            facts.append(f)
    return facts


def composition(root=None, *, parts=PARTS, exclude_splits=()) -> dict[str, int]:
    """Number of QA pairs per part (after exclusion), for the notebook and the closing note."""
    excluded = {f.question for split in exclude_splits for f in data.load_tofu(split, root)}
    return {p: sum(f.question not in excluded for f in load_part(p, root)) for p in parts}
