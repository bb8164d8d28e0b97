"""The subject rule: where in a fact's question (or answer) its subject is.

Causal tracing and editing need the subject span of each fact. Only RWKU marks it ("given"; its
span is set only where that subject occurs verbatim in the query); for the other datasets it is
recovered by ONE rule with ordered branches. The first branch that matches wins and is recorded
in `Fact.subject_rule`; the span is stored as `Fact.subject_span` (character offsets) into
`Fact.subject_in` ("question" or "answer"), so
`getattr(fact, fact.subject_in)[slice(*fact.subject_span)] == fact.subject` holds whenever the
span is set. Each branch returns ``(subject, rule, field, span)`` or None; the loaders
(`timerome.data`, `timerome.benchmarks`) store it and apply their missing-subject policy, so this
module only reads text and knows nothing of files or `Fact`.

TOFU fictitious authors (forget*, retain*, full, holdout*): facts are grouped by author
(`entity_id`, 20 facts each). The author's full name is recovered per group as the
capitalised multi-word span that occurs in the most facts of the group (question or
answer; ties go to the longer span; `recover_author_name`). A span is a run of capitalised
words, allowing hyphens ("Al-Kuwaiti", "Jamie-li"), inner capitalised apostrophes ("O'Donnell"),
lower case name particles between capitalised words ("Isabella van Pletzen", "Van der Veen")
and a parenthesised nickname ("Alejandro (Alex) Fuentes"); possessive 's is not part
of it. The name must occur in at least half of the group's facts, else the author is
nameless (one TOFU author, rows 1760-1779 of full, is only ever "the fictitious
author"). Then, per fact (`locate_author_subject`):
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

Real-world entity splits (TOFU real_authors / world_facts, MUSE knowmem, WHP, WMDP;
`locate_entity_subject`):
  question_entity - the first quoted span of the question, else its longest run of
                    capitalised words (leading question/function words such as "What",
                    "The" are dropped; "of"/"the" and name particles may join words:
                    "Land of the Rising Sun").
These questions often have no named entity at all ("Which river is the longest in the
world?", "What percentage of phones ..."), so their loaders keep such facts with subject None
by default.
"""

from __future__ import annotations

import re
from collections import Counter

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


def find_words(text, phrase):
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
        span = find_words(question, name)
        if span:
            return name, "question_full_name", "question", span
        part = next(_name_parts(question, name), None)
        if part:
            return part[0], "question_partial_name", "question", part[1]
        span = find_words(answer, name)
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
        span = find_words(question, part)
        if span:
            yield part, span
