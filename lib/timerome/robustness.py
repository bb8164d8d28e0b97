"""Attacks on an unlearning edit (paper 002 §IV-E, §VI limitation 3): the forget facts re-asked.

Each attack maps a forget fact to the fact that is scored instead; the fact keeps its ``fact_id``,
so an edited and an unedited evaluation of the attacked facts pair up fact by fact
(`metrics.fact_deltas`). The edit's memory is always built on the original facts.

* ``none``: the fact itself.
* ``paraphrase``: TOFU's ``paraphrased_question`` asked, the gold answer scored (question paraphrase).
* ``paraphrase_answer``: the original question, TOFU's ``paraphrased_answer`` scored (answer paraphrase).
* ``relearn``: in-context relearning, the gold answer placed in the prompt before the question:
  the question becomes ``template.format(answer=..., question=...)`` (default
  ``"{answer} {question}"``), the gold answer is scored.

The subject span is moved with the question (found again in a paraphrased question, shifted in the
relearn prompt); where a paraphrase does not name the subject the span is None (scoring needs none).
A fact without the field an attack needs is an error naming the fact.
"""
from __future__ import annotations

import dataclasses

__all__ = ["ATTACKS", "RELEARN_TEMPLATE", "attack"]

ATTACKS = ("none", "paraphrase", "paraphrase_answer", "relearn")
RELEARN_TEMPLATE = "{answer} {question}"


def _with_question(f, question: str):
    """``f`` asked as ``question``; the subject span follows the subject into the new question."""
    if f.subject_in == "question" and f.subject:
        at = question.find(f.subject)
        span, where = ((at, at + len(f.subject)), "question") if at >= 0 else (None, None)
        return dataclasses.replace(f, question=question, subject_span=span, subject_in=where)
    return dataclasses.replace(f, question=question)


def attack(facts, name: str, *, template: str = RELEARN_TEMPLATE) -> list:
    """The facts ``name`` scores instead of ``facts`` (module docstring), same order and fact ids."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; expected one of {ATTACKS}")
    facts = list(facts)
    if name == "relearn" and ("{answer}" not in template or "{question}" not in template):
        raise ValueError(f"relearn template {template!r} must contain {{answer}} and {{question}}")
    out = []
    for f in facts:
        if name == "none":
            out.append(f)
        elif name == "paraphrase":
            if not f.paraphrased_question:
                raise ValueError(f"attack 'paraphrase': fact {f.fact_id} has no paraphrased_question "
                                 f"(load TOFU's *_perturbed split)")
            out.append(_with_question(f, f.paraphrased_question))
        elif name == "paraphrase_answer":
            if not f.paraphrased_answer:
                raise ValueError(f"attack 'paraphrase_answer': fact {f.fact_id} has no paraphrased_answer "
                                 f"(load TOFU's *_perturbed split)")
            out.append(dataclasses.replace(f, answer=f.paraphrased_answer))
        else:
            q = template.format(answer=f.answer, question=f.question)
            g = dataclasses.replace(f, question=q)
            if f.subject_in == "question" and f.subject_span is not None:
                shift = template.format(answer=f.answer, question="\0").index("\0")
                g = dataclasses.replace(g, subject_span=(f.subject_span[0] + shift, f.subject_span[1] + shift))
            out.append(g)
    return out
