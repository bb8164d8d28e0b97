"""Counterfactual edit requests built from the tiny world (paper 003's single vs multi-token targets).

CounterFact (Meng et al. 2022) pairs a subject-relation prompt with a new object. TOFU has no
such triples, so they are recovered from its answers: for every author, one value of each of
five types is read off the author's 20 answers by a pattern (`TYPES`):

* ``city``: "born in <City>, <Country>";
* ``genre``: "the genre of <genre>" / "<genre> genre";
* ``profession``: "father is / was / worked as a <profession>";
* ``award``: a run of capitalised words ending in "Award" or "Prize";
* ``year``: a year in a sentence that says "born".

A request is the first of the author's facts whose question names the author and whose answer
holds that value (the key is read at the last token of the subject's last mention: the answer
prefix often names the author again): the cloze prompt is the question
followed by the answer up to the value, the old object the value, the new object another author's
value of the same type (never equal to the old one, neither containing the other), and the rest
of the answer what follows. New objects are assigned so that the token-length bins (`BINS`) fill
evenly: each request takes, in a seeded order, the feasible bin with the fewest requests so far,
then a seeded value of that length. Paraphrase prompt: TOFU's paraphrased question (where the
split has one) with the same answer prefix; neighbourhood: other authors' requests of the same
type, unedited, which must not change. Token lengths are the backbone's (`tokenize`), so a
request set is built for one tokenizer; the tiny backbones share theirs. `from_short_answers`
builds the same kind of requests from a world whose answers are the objects themselves (CounterFact's
own shape, e.g. `tiny.cf_world`), with the relation as the type.
"""
from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from .baselines.editing import Request
from .data import Fact, load_tofu
from .likelihood import answer_tail
from .rng import stable_seed
from .tracer import SubjectError, TracePrompt, subject_positions

_CAP = r"[A-Z][\w'\-]*"
TYPES = {
    "city": re.compile(rf"born in ({_CAP}(?: {_CAP})*), {_CAP}"),
    "genre": re.compile(r"the genre of ([A-Za-z][\w'\-]*(?: [A-Za-z][\w'\-]*){0,2}?)(?=[.,;!?]| and | books| novels| literature| writing|$)"),
    "profession": re.compile(r"father(?:,)? (?:is|was|worked as) (?:a|an) ([a-zA-Z][\w\-/]*(?: [a-z][\w\-/]*){0,2}?)(?=[.,;]| and | while | in | who |$)"),
    "award": re.compile(rf"((?:{_CAP} )+(?:Award|Prize))\b"),
    "year": re.compile(r"\b(1[89]\d\d|20[0-2]\d)\b"),
}
BINS = ("1", "2", "3", "4+")  # new-object token length
SPLITS = ("forget10", "retain_perturbed")  # the tiny world's 40 TOFU authors


def length_bin(n: int) -> str:
    if n < 1:
        raise ValueError(f"a target has at least one token, not {n}")
    return BINS[min(n, 4) - 1]


@dataclass(frozen=True)
class Counterfact:
    """One edit request in text form; `tokenize` makes it a backbone's token ids."""
    request_id: str     # "<fact_id>/<type>"
    kind: str           # a `TYPES` key
    author: str         # entity id
    fact: Fact          # the source question and answer
    prefix: str         # the answer up to the old object, without the space before it ("" when it opens the answer)
    sep: str            # what separates the prefix and the object (usually " ")
    old: str
    new: str
    rest: str           # the answer after the old object
    paraphrase: str | None  # a paraphrased question, or None
    neighbours: tuple = ()  # request ids of other authors' same-type requests

    @property
    def subject(self) -> str:
        return self.fact.subject


def author_values(facts) -> dict[str, dict[str, str]]:
    """{author: {type: value}}: the most frequent match of each `TYPES` pattern over the author's
    questions and answers (ties to the earliest match); for ``year`` only sentences with "born"."""
    found = defaultdict(lambda: defaultdict(Counter))
    order = defaultdict(dict)
    for f in facts:
        for text in (f.question, f.answer):
            for kind, pat in TYPES.items():
                parts = [s for s in re.split(r"(?<=[.!?])\s", text) if kind != "year" or "born" in s.lower()]
                for s in parts:
                    for m in pat.finditer(s):
                        v = re.sub(r"^The ", "", m.group(1).strip())
                        found[f.entity_id][kind][v] += 1
                        order[(f.entity_id, kind)].setdefault(v, len(order[(f.entity_id, kind)]))
    out = {}
    for a, kinds in found.items():
        out[a] = {k: min(c, key=lambda v: (-c[v], order[(a, k)][v])) for k, c in kinds.items()}
    return out


def _occurrence(text: str, value: str):
    m = re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", text)
    return None if m is None else m.span()


def _token_len(bb, text: str) -> int:
    return len(bb.encode(" " + text.strip()))


def build(bb, facts=None, *, seed: int = 0, n_neighbours: int = 3, kinds=tuple(TYPES), root=None) -> list[Counterfact]:
    """The request set of the module docstring for ``bb``'s tokenizer, from ``facts`` (default the
    TOFU splits of the tiny world, `SPLITS`), in a deterministic order (author, type)."""
    if facts is None:
        facts = [f for s in SPLITS for f in load_tofu(s, root)]
    facts = list(facts)
    bad = [k for k in kinds if k not in TYPES]
    if bad:
        raise ValueError(f"unknown request types {bad}; known: {list(TYPES)}")
    values = author_values(facts)
    by_author = defaultdict(list)
    for f in facts:
        by_author[f.entity_id].append(f)
    # one anchor (fact, span) per (author, type): the first keyable fact whose answer holds the value
    anchors = []
    for a in sorted(by_author):
        for kind in kinds:
            v = values.get(a, {}).get(kind)
            if v is None:
                continue
            for f in sorted(by_author[a], key=lambda f: (f.split, f.index)):
                span = _occurrence(f.answer, v)
                if span is None or f.subject_in != "question":
                    continue
                try:
                    subject_positions(bb, f)
                except SubjectError:
                    continue
                anchors.append((a, kind, f, span))
                break
    return assemble(bb, anchors, seed=seed, n_neighbours=n_neighbours)


def from_short_answers(bb, facts, *, kind=lambda f: f.extra["relation"], seed: int = 0, n_neighbours: int = 3):
    """Requests from facts whose whole answer is the object (a CounterFact-style world such as
    `tiny.cf_world`): one per (entity, ``kind(fact)``), anchored on its first fact whose question
    names the subject; the object is the answer without a final ".", which stays as the rest."""
    anchors, seen = [], set()
    for f in sorted(facts, key=lambda f: (f.entity_id, kind(f), f.split, f.index)):
        key = (f.entity_id, kind(f))
        if key in seen or f.subject_in != "question":
            continue
        obj = f.answer.strip().rstrip(".")
        start = f.answer.index(obj)
        anchors.append((f.entity_id, kind(f), f, (start, start + len(obj))))
        seen.add(key)
    if not anchors:
        raise ValueError("no fact names its subject in the question: nothing to edit")
    return assemble(bb, anchors, seed=seed, n_neighbours=n_neighbours)


def assemble(bb, anchors, *, seed: int = 0, n_neighbours: int = 3) -> list[Counterfact]:
    """Requests from anchors ``(entity, type, fact, (start, end) of the old object in the answer)``:
    new objects (the module docstring's bin-filling rule) and neighbourhoods, in anchor order."""
    pool = defaultdict(dict)  # type -> {value: token length}
    for a, kind, f, (s, e) in anchors:
        pool[kind][f.answer[s:e]] = _token_len(bb, f.answer[s:e])
    # new objects: the emptiest feasible length bin, then a seeded value of that bin
    filled = Counter()
    rng = random.Random(stable_seed(seed, "counterfact-order", bits=63))
    order = list(range(len(anchors)))
    rng.shuffle(order)
    new_of = {}
    for i in order:
        a, kind, f, (s, e) = anchors[i]
        old = f.answer[s:e]
        cands = sorted(v for v in pool[kind] if v != old and v not in old and old not in v
                       and v.lower() != old.lower())
        if not cands:
            continue
        by_bin = defaultdict(list)
        for v in cands:
            by_bin[length_bin(pool[kind][v])].append(v)
        b = min(by_bin, key=lambda b: (filled[b], BINS.index(b)))
        g = random.Random(stable_seed(seed, "counterfact-new", f.fact_id, kind, bits=63))
        new_of[i] = g.choice(by_bin[b])
        filled[b] += 1
    reqs = []
    for i, (a, kind, f, (s, e)) in enumerate(anchors):
        if i not in new_of:
            continue
        para = f.paraphrased_question if f.paraphrased_question and f.paraphrased_question != f.question else None
        prefix = f.answer[:s].rstrip()
        reqs.append(Counterfact(f"{f.fact_id}/{kind}", kind, a, f, prefix, f.answer[len(prefix):s], f.answer[s:e],
                                new_of[i], f.answer[e:], para))
    # neighbourhood: other authors' same-type requests, seeded
    by_kind = defaultdict(list)
    for r in reqs:
        by_kind[r.kind].append(r)
    out = []
    for r in reqs:
        others = [o.request_id for o in by_kind[r.kind] if o.author != r.author and r.subject not in o.fact.question]
        g = random.Random(stable_seed(seed, "counterfact-neighbours", r.request_id, bits=63))
        pick = tuple(sorted(g.sample(others, min(n_neighbours, len(others)))))
        out.append(Counterfact(**{**r.__dict__, "neighbours": pick}))
    return out




# ----------------------------------------------------------------------------- token ids
@dataclass(frozen=True)
class Cloze:
    """A counterfactual in a backbone's token ids: ``prompt`` (BOS + question prompt + answer prefix),
    ``subject`` (the positions of every mention of the subject in it: the question's and the answer
    prefix's), ``last`` (the last mention's last token: the key), the old and new objects and the
    rest of the answer."""
    prompt: tuple
    subject: tuple
    last: int
    old: tuple
    new: tuple
    rest: tuple

    @property
    def mention_ends(self) -> tuple:
        """The last token of each mention of the subject (each contiguous run of ``subject``)."""
        S = sorted(self.subject)
        return tuple(a for a, b in zip(S, S[1:] + [None]) if b != a + 1)

    def canvas(self, bb, obj: str = "new") -> list[int]:
        """``[prompt ; MASK x (|obj| + |rest|) ; tail]``: the state an MDLM starts generating from."""
        n = len(getattr(self, obj)) + len(self.rest)
        return list(self.prompt) + [bb.mask_id] * n + answer_tail(bb)


def _answer_prefix_ids(bb, prefix: str, subject: str) -> tuple[list[int], list[int]]:
    """(ids of ``answer_prefix + prefix``, positions of the tokens overlapping a mention of ``subject``)."""
    if not prefix:
        return [], []
    text = bb.answer_prefix + prefix
    enc = bb.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [m.span() for m in re.finditer(re.escape(subject), text)] if subject else []
    pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and any(a < e and b > s for s, e in spans)]
    return list(enc["input_ids"]), pos


def tokenize(bb, cf: Counterfact, question: str | None = None) -> Cloze:
    """``cf`` as token ids; ``question`` replaces the fact's question (a paraphrase, whose own
    subject mention is not located; ``last`` is -1 when no mention is found at all)."""
    if question is None:
        q_ids, S = subject_positions(bb, cf.fact)
    else:
        q_ids, S = bb.prompt_ids(question), []
    pre, S_pre = _answer_prefix_ids(bb, cf.prefix, cf.subject)
    S = list(S) + [len(q_ids) + i for i in S_pre]
    head = bb.answer_prefix + cf.prefix + cf.sep

    def ids(obj):
        both = bb.encode(head + obj + cf.rest)
        if both[:len(pre)] != pre:
            raise ValueError(f"request {cf.request_id}: the answer prefix {cf.prefix!r} does not end on a token "
                             f"boundary before {obj!r}")
        tail = both[len(pre):]
        rest = bb.encode(cf.rest) if cf.rest else []
        if rest and tail[-len(rest):] != rest:
            raise ValueError(f"request {cf.request_id}: the object {obj!r} does not end on a token boundary")
        return tail[:len(tail) - len(rest)], rest

    old, rest = ids(cf.old)
    new, rest2 = ids(cf.new)
    if rest != rest2 or not old or not new:
        raise ValueError(f"request {cf.request_id}: the rest of the answer tokenises differently after old and new")
    return Cloze(tuple(q_ids + pre), tuple(S), max(S) if S else -1, tuple(old), tuple(new), tuple(rest))


def request(bb, cf: Counterfact) -> Request:
    """The `editing.Request` of ``cf``: key canvas of ``|new| + |rest|`` masked slots, the new object
    as the target, the rest of the answer masked after it."""
    c = tokenize(bb, cf)
    return Request(cf.request_id, cf.subject, c.prompt, c.last, c.new + c.rest, c.new, after=len(c.rest))


def trace_prompt(bb, cf: Counterfact) -> TracePrompt:
    """The cloze as a `tracer.TracePrompt` for `ar_trace.ar_positional_trace`: prompt = question and
    answer prefix, S = every subject mention (all are noised), gold = the old object, then its rest
    masked (MDLM) and the tail."""
    c = tokenize(bb, cf)
    return TracePrompt(torch.tensor(c.canvas(bb, "old"), dtype=torch.long), len(c.prompt), c.subject, c.old)


def trace_fact(cf: Counterfact) -> Fact:
    """A `Fact` standing for the cloze in the tracer (its question and subject; the old object as
    the answer, which seeds the trace noise)."""
    f = cf.fact
    return Fact(f.question, cf.old, f.split, f.index, f.subject, f.subject_rule, f.subject_span, f.subject_in,
                f.entity_id)


def counts(bb, reqs) -> dict:
    """{"by_bin": {bin: n}, "by_type": {type: n}, "by_bin_type": {(bin, type): n}} of a request set."""
    bins = [length_bin(len(tokenize(bb, r).new)) for r in reqs]
    return {"by_bin": dict(Counter(bins)), "by_type": dict(Counter(r.kind for r in reqs)),
            "by_bin_type": dict(Counter(zip(bins, (r.kind for r in reqs))))}
