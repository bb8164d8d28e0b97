"""Evaluation metrics: how well a backbone reproduces, and (later) TOFU's unlearning columns."""
from __future__ import annotations

import pandas as pd
import torch

from .sampler import generate, generate_autoregressive


def generate_answers(backbone, questions, *, gen_length: int = 96, steps: int = 8, batch_size: int = 64,
                     remasking: str = "low_confidence", seed: int = 0) -> list[list[int]]:
    """Greedy answers as token ids (up to, not including, the first EOS)."""
    out = []
    for i in range(0, len(questions), batch_size):
        prompts = [[backbone.tokenizer.bos_token_id] * (backbone.tokenizer.bos_token_id is not None)
                   + backbone.encode(backbone.prompt(q)) for q in questions[i:i + batch_size]]
        if backbone.is_causal:
            toks = generate_autoregressive(backbone, prompts, max_new_tokens=gen_length)
        else:
            toks = generate(backbone, prompts, gen_length=gen_length, steps=steps, remasking=remasking, seed=seed)
        for row in toks[:, -gen_length:].tolist():
            out.append(row[:row.index(backbone.eos_id)] if backbone.eos_id in row else row)
    return out


def answer_token_accuracy(backbone, facts, *, gen_length: int = 96, steps: int = 8, batch_size: int = 64,
                          remasking: str = "low_confidence") -> pd.DataFrame:
    """Per fact: the share of gold answer tokens reproduced at their position, and exact match.

    Only answer tokens count (not the prompt or template); exact match means the generated
    answer, cut at its first EOS, equals the gold answer token for token.
    """
    answers = generate_answers(backbone, [f.question for f in facts], gen_length=gen_length, steps=steps,
                               batch_size=batch_size, remasking=remasking)
    rows = []
    for f, got in zip(facts, answers):
        gold = backbone.encode(backbone.answer_prefix + f.answer)
        correct = sum(a == b for a, b in zip(got, gold))
        rows.append({"fact_id": f.fact_id, "n_tokens": len(gold), "correct": correct,
                     "accuracy": correct / len(gold), "exact": got == gold,
                     "generated": backbone.tokenizer.decode(got)})
    return pd.DataFrame(rows)


def token_accuracy_summary(df: pd.DataFrame) -> dict:
    """Token-weighted accuracy over all answer tokens, mean per-fact accuracy, exact-match rate."""
    return {"token_accuracy": df.correct.sum() / df.n_tokens.sum(), "mean_fact_accuracy": df.accuracy.mean(),
            "exact_match": df.exact.mean(), "n_facts": len(df)}
