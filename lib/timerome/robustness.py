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

`attack_table` scores each attack (Fig. 5's robustness panel): the attacked facts unedited and
edited, the edit's Δ (`ablations.effect`, forget role) and its shift from the unattacked edit's Δ,
per fact, with a bootstrap CI (positive: the attack gives back what the edit took). An attack
reads as a test of the edit only where the unedited model still knows the attacked answers: its
mean log-probability of them at most `KNOWN_RATIO` times that of the originals (``informative``);
otherwise there is little left for the edit to take, and a shift says nothing about robustness.
"""
from __future__ import annotations

import dataclasses

__all__ = ["ATTACKS", "RELEARN_TEMPLATE", "KNOWN_RATIO", "attack", "attack_table"]

ATTACKS = ("none", "paraphrase", "paraphrase_answer", "relearn")
RELEARN_TEMPLATE = "{answer} {question}"
KNOWN_RATIO = 2.0  # attacked / original unedited log-prob up to which the model still knows the answers


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


def attack_table(facts, score, edit, *, attacks=ATTACKS, template: str = RELEARN_TEMPLATE, n_boot: int = 2000,
                 seed: int = 0):
    """One row per attack of ``attacks`` (``none`` first, it is the reference): ``attack``,
    ``n_facts``, the `ablations.effect` columns of the forget role (``forget_lp`` edited,
    ``base_forget_lp`` unedited, ``d_forget_lp`` with CI and p), ``shift`` = mean over facts of
    Δ_attack − Δ_none with its bootstrap CI (``shift_lo``, ``shift_hi``), ``base_ratio`` (this
    attack's ``base_forget_lp`` over the unattacked one's) and ``informative`` (``base_ratio`` <=
    `KNOWN_RATIO`). ``score(facts, edit)``
    returns a `metrics.evaluate` frame whose role is forget; ``edit`` is the context factory of the
    edit built on the original ``facts``."""
    import pandas as pd

    from . import metrics, stats
    from .ablations import effect

    attacks = list(attacks)
    if not attacks or attacks[0] != "none":
        raise ValueError(f"attack_table: attacks={attacks!r} must start with 'none' (the reference)")
    rows, ref, base_none = [], None, None
    for name in attacks:
        attacked = attack(facts, name, template=template)
        base, edited = score(attacked, None), score(attacked, edit)
        d = metrics.fact_deltas(edited, base, "forget")
        row = {"attack": name, "n_facts": len(attacked),
               "base_forget_lp": float(base[base.role == "forget"].groupby("seed").logprob.mean().mean())}
        row |= effect(edited, base, n_boot=n_boot, seed=seed, roles=("forget",))
        base_none = row["base_forget_lp"] if base_none is None else base_none
        row["base_ratio"] = row["base_forget_lp"] / base_none if base_none else float("nan")
        row["informative"] = bool(row["base_ratio"] <= KNOWN_RATIO)
        ref = d if ref is None else ref
        shift = (d - ref.reindex(d.index)).to_numpy(dtype=float)
        row["shift"] = float(shift.mean())
        row["shift_lo"], row["shift_hi"] = stats.bootstrap_ci(shift, n_resamples=n_boot, seed=seed)
        rows.append(row)
    return pd.DataFrame(rows)
