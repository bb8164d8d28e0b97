"""Evaluation metrics: answer reproduction, and TOFU's unlearning columns.

Reproduction (`generate_answers`, `answer_token_accuracy`, `token_accuracy_summary`): greedy answers
and token accuracy against the gold answer.

TOFU columns (`evaluate` -> per-example frame, `summarize` -> one row per seed)
------------------------------------------------------------------------------
Definitions follow the official TOFU code, checked in locuslab/tofu (commit 8c49eee):
``evaluate_util.py`` (`get_all_evals`, `eval_perturbation_ratio`, `eval_rouge_recall`),
``data_module.py`` (`get_batch_loss`: summed token NLL), ``aggregate_eval_stat.py``
(`get_model_utility`, `get_forget_quality`) and ``config/eval_everything.yaml`` (which answer is
the "paraphrase" per split), cross-checked with locuslab/open-unlearning
``src/evals/metrics/memorization.py`` (`truth_ratio`, `probability_w_options`),
``src/evals/metrics/utils.py`` (`evaluate_probability`, `get_forget_quality`,
`eval_text_similarity`) and ``src/evals/metrics/utility.py`` (`hm_aggregate`).

Per example (``nll`` = mean NLL per answer token, ``P = exp(-nll)``):

* ``logprob``: summed log p(answer | question) (`likelihood.answer_logprob`: the MC ELBO for
  MDLMs, exact for causal LMs). ForgetLP / RetainLP / RealAuth / WorldFact are its means.
* ``prob = exp(-nll(answer))``: TOFU "Prob." on retain/forget (``avg_gt_loss``).
* ``prob_norm = P(answer) / (P(answer) + sum_k P(perturbed_k))``: TOFU "Prob." on real_authors
  and world_facts (``normalize_gt`` / ``probability_w_options``).
* ``truth_ratio R = P_pert / P_para`` with ``P_pert = exp(-mean_k nll(perturbed_k))``, the geometric
  mean over the perturbed answers (TOFU: ``average_perturb_loss.mean(-1)``; open-unlearning:
  ``aggregate_to_1D`` over the per-token losses). The "paraphrase" is ``paraphrased_answer`` on
  forget/retain and the original ``answer`` on real_authors/world_facts (their perturbed files
  have no paraphrase; ``base_answer_key`` in eval_everything.yaml). TOFU's code stores
  ``exp(pert - para) = 1/R``; its aggregations are written for that, and are equal to the ones below.
* ``rouge_l``: ROUGE-L recall (``RougeScorer(["rougeL"], use_stemmer=True).score(gold, generated)``)
  of the greedy generation (`generate_answers`) against the gold answer.

Aggregates (`summarize`):

* ForgetTR = mean(min(R, 1/R)); RetainTR / RealAuthTR / WorldFactTR = mean(max(0, 1 - R)).
* KS_p (Forget Quality) = ``scipy.stats.ks_2samp`` p-value between the evaluated model's and the
  retain (reference) model's per-example forget truth ratios. TOFU runs it on ``1/R``; the KS
  statistic is invariant under a strictly monotone map applied to both samples, so it is the same.
* Model Utility = harmonic mean of the nine {retain, real_authors, world_facts} x {Prob., ROUGE-L,
  truth ratio} values (0 if any is 0; NaN if any is missing).

Known differences from TOFU's numbers (conventions of this package, not of the metric): answers
are scored without an EOS token (TOFU's labels include one), with the backbone's own prompt
template, and for MDLMs the log-probability is the Monte-Carlo ELBO (so ``prob`` etc. use the
ELBO per token). TOFU evaluates only the first 300 examples of each split (``ds_size: 300``);
pass ``max_examples=300`` to do the same.

Over 400 lines for one reason: the TOFU column definitions and the `evaluate` loop that feeds
them are read together against TOFU's own code, line by line.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats as _st

from .likelihood import ELBOOptions, answer_logprob_details
from .sampler import generate, generate_autoregressive

__all__ = ["fact_deltas", "generate_answers", "answer_token_accuracy", "token_accuracy_summary", "split_role", "truth_ratio",
           "forget_truth_ratio", "retain_truth_ratio", "forget_quality", "normalized_prob", "rouge_l_recall",
           "harmonic_mean", "model_utility", "evaluate", "summarize", "TOFU_ROLES", "UTILITY_COLUMNS"]

TOFU_ROLES = ("forget", "retain", "real_authors", "world_facts")
_ROLE_PREFIX = {"forget": "Forget", "retain": "Retain", "real_authors": "RealAuth", "world_facts": "WorldFact"}
# The nine values whose harmonic mean is TOFU's Model Utility (aggregate_eval_stat.get_model_utility).
UTILITY_COLUMNS = tuple(f"{p}{m}" for p in ("Retain", "RealAuth", "WorldFact") for m in ("Prob", "ROUGE", "TR"))


def generate_answers(backbone, questions, *, gen_length: int = 96, steps: int = 8, batch_size: int = 64,
                     remasking: str = "low_confidence", seed: int = 0) -> list[list[int]]:
    """Greedy answers as token ids (up to, not including, the first EOS)."""
    out = []
    for i in range(0, len(questions), batch_size):
        prompts = [backbone.prompt_ids(q) for q in questions[i:i + batch_size]]
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
        gold = backbone.answer_ids(f.answer, what=f"fact {f.fact_id}: gold answer")
        correct = sum(a == b for a, b in zip(got, gold))
        rows.append({"fact_id": f.fact_id, "n_tokens": len(gold), "correct": correct,
                     "accuracy": correct / len(gold), "exact": got == gold,
                     "generated": backbone.tokenizer.decode(got)})
    return pd.DataFrame(rows)


def token_accuracy_summary(df: pd.DataFrame) -> dict:
    """Token-weighted accuracy over all answer tokens, mean per-fact accuracy, exact-match rate."""
    return {"token_accuracy": df.correct.sum() / df.n_tokens.sum(), "mean_fact_accuracy": df.accuracy.mean(),
            "exact_match": df.exact.mean(), "n_facts": len(df)}


# --- per-example TOFU quantities ------------------------------------------------------------------
def knowledge_row(backbone, split_facts: Mapping[str, list], *, gen_length: int = 96, steps: int = 8,
                  max_facts: int | None = None) -> dict:
    """Per split: ``<split> n``, ``<split> acc`` (answer-token accuracy) and ``<split> EM`` of
    ``backbone`` on the first ``max_facts`` facts (all when None), as `00_tiny_backbones` reports them."""
    row = {}
    for split, facts in split_facts.items():
        facts = list(facts)[:max_facts] if max_facts else list(facts)
        s = token_accuracy_summary(answer_token_accuracy(backbone, facts, gen_length=gen_length, steps=steps))
        row |= {f"{split} n": len(facts), f"{split} acc": s["token_accuracy"], f"{split} EM": s["exact_match"]}
    return row


def _np(x, name: str) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _like(arr: np.ndarray, *inputs):
    """Return a torch float64 tensor when any input was a tensor, else the NumPy array."""
    return torch.from_numpy(arr) if any(torch.is_tensor(i) for i in inputs) else arr


def split_role(name: str) -> str:
    """TOFU role of a split name: forget*, retain* -> 'forget'/'retain'; real_authors*, world_facts*;
    anything else is its own role (only log-probabilities and ROUGE are summarised for it)."""
    base = str(name).removesuffix("_perturbed")
    for role in ("forget", "retain"):
        if base.startswith(role):
            return role
    if base in ("real_authors", "world_facts"):
        return base
    return base


def truth_ratio(para_nll, pert_nll):
    """TOFU truth ratio ``R = P_pert / P_para`` per example, from per-token mean NLLs.

    ``para_nll`` [N]: mean NLL per token of the paraphrased (or, for real_authors/world_facts, the
    original) answer; ``pert_nll`` [N, k] (or [N] for k = 1): mean NLL per token of each perturbed
    answer. ``P_pert`` is the geometric mean over the k perturbed answers, so
    ``R = exp(para_nll - mean_k pert_nll)`` (TOFU evaluate_util.eval_perturbation_ratio stores the
    reciprocal, ``exp(gt_loss_per_token - perturb_loss_per_token.mean(-1))`` with the roles of
    the two files swapped in aggregate_eval_stat, i.e. ``P_para / P_pert``).
    Returns [N] float64 (a torch tensor if an input was one, else a NumPy array).
    """
    para, pert = _np(para_nll, "para_nll"), _np(pert_nll, "pert_nll")
    if para.ndim != 1:
        raise ValueError(f"para_nll must be 1-D [N], got shape {para.shape}")
    if pert.ndim == 1:
        pert = pert[:, None]
    if pert.ndim != 2 or pert.shape[0] != para.shape[0] or pert.shape[1] == 0:
        raise ValueError(f"pert_nll must be [N, k] with N={para.shape[0]} and k >= 1, got shape {pert.shape}")
    return _like(np.exp(para - pert.mean(1)), para_nll, pert_nll)


def _finite_ratios(tr, name="truth ratios") -> np.ndarray:
    r = _np(tr, name).reshape(-1)
    if r.size == 0:
        raise ValueError(f"{name}: empty")
    if not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"{name}: every value must be finite and > 0")
    return r


def forget_truth_ratio(tr) -> float:
    """ForgetTR = mean(min(R, 1/R)): 1 when paraphrase and perturbed answers are equally likely."""
    r = _finite_ratios(tr)
    return float(np.mean(np.minimum(r, 1.0 / r)))


def retain_truth_ratio(tr) -> float:
    """RetainTR / RealAuth TR / WorldFact TR = mean(max(0, 1 - R)): high when the truth is preferred."""
    r = _finite_ratios(tr)
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def forget_quality(tr, tr_retain) -> float:
    """Forget Quality: ``scipy.stats.ks_2samp`` p-value between two samples of per-example forget
    truth ratios (the evaluated model's and the retain reference model's).

    TOFU (aggregate_eval_stat.get_forget_quality) and open-unlearning (utils.get_forget_quality)
    test ``1/R``; the two-sample KS statistic, hence the p-value, is unchanged by a strictly
    monotone map applied to both samples.
    """
    a, b = _finite_ratios(tr, "tr"), _finite_ratios(tr_retain, "tr_retain")
    return float(_st.ks_2samp(a, b).pvalue)


def normalized_prob(answer_nll, pert_nll):
    """TOFU "Prob." on real_authors / world_facts: ``P(answer) / (P(answer) + sum_k P(perturbed_k))``
    with ``P = exp(-nll per token)`` (evaluate_util.get_all_evals ``normalize_gt``). [N] float64."""
    a, p = _np(answer_nll, "answer_nll"), _np(pert_nll, "pert_nll")
    if p.ndim == 1:
        p = p[:, None]
    if a.ndim != 1 or p.ndim != 2 or p.shape[0] != a.shape[0]:
        raise ValueError(f"answer_nll must be [N] and pert_nll [N, k]; got {a.shape} and {p.shape}")
    logits = np.concatenate([-a[:, None], -p], axis=1)
    return _like(np.exp(-a - np.logaddexp.reduce(logits, axis=1)), answer_nll, pert_nll)


_SCORER = None


def rouge_l_recall(generated, gold):
    """ROUGE-L recall of ``generated`` against ``gold`` (TOFU eval_rouge_recall:
    ``RougeScorer(['rougeL'], use_stemmer=True).score(gold, generated)['rougeL'].recall``).
    Two strings -> float; two equal-length lists of strings -> list of floats."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    if isinstance(generated, str) and isinstance(gold, str):
        return float(_SCORER.score(gold, generated)["rougeL"].recall)
    if isinstance(generated, str) or isinstance(gold, str) or len(generated) != len(gold):
        raise ValueError("rouge_l_recall takes two strings or two lists of strings of the same length")
    return [float(_SCORER.score(t, g)["rougeL"].recall) for g, t in zip(generated, gold)]


def harmonic_mean(values) -> float:
    """Harmonic mean of non-negative values (``scipy.stats.hmean``): 0 if any is 0, NaN if any is NaN."""
    v = _np(values, "values").reshape(-1)
    if v.size == 0:
        raise ValueError("harmonic_mean of no values")
    if np.isnan(v).any():
        return math.nan
    if (v < 0).any():
        raise ValueError(f"harmonic_mean needs non-negative values, got {v.tolist()}")
    if (v == 0).any():
        return 0.0
    return float(v.size / np.sum(1.0 / v))


def model_utility(values: Mapping[str, float] | Sequence[float]) -> float:
    """TOFU Model Utility: harmonic mean of the nine {retain, real_authors, world_facts} x
    {Prob., ROUGE-L, truth ratio} values (a mapping with the `UTILITY_COLUMNS` keys, or 9 numbers)."""
    if isinstance(values, Mapping):
        missing = [c for c in UTILITY_COLUMNS if c not in values]
        if missing:
            raise KeyError(f"model_utility needs {', '.join(missing)}")
        values = [values[c] for c in UTILITY_COLUMNS]
    if len(values) != len(UTILITY_COLUMNS):
        raise ValueError(f"model_utility takes {len(UTILITY_COLUMNS)} values, got {len(values)}")
    return harmonic_mean(values)


# --- evaluate ------------------------------------------------------------------------------------
def _load_splits(names, root):
    from .data import load_tofu
    from .splits import retain_facts

    out = {}
    for name in names:
        role = split_role(name)
        # TOFU evaluates the *_perturbed files (same questions, plus paraphrase / perturbed answers)
        file = name if name.endswith("_perturbed") else (
            "retain_perturbed" if name == "retain" else
            f"{name}_perturbed" if role in ("forget", "real_authors", "world_facts") else name)
        # "retain" is the *test* authors of retain_perturbed only (splits.retain_author_split): a
        # table cell never scores the authors that tuned λ; pass a dict of facts to score others
        out[name] = retain_facts("test", root) if name == "retain" else load_tofu(file, root)
    return out


def _check(split_facts, truth_ratio_for, seeds):
    if not split_facts:
        raise ValueError("evaluate: no splits given")
    if not seeds:
        raise ValueError("evaluate: seeds is empty")
    plans = {}
    for name, facts in split_facts.items():
        facts = list(facts)
        if not facts:
            raise ValueError(f"evaluate: split {name!r} has no facts")
        role = split_role(name)
        want_tr = truth_ratio_for(name)
        ids = [f.fact_id for f in facts]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"evaluate: split {name!r} has duplicate fact_id {dup!r}")
        paras = []
        for f in facts:
            if not isinstance(f.answer, str) or not f.answer:
                raise ValueError(f"evaluate: split {name!r}, fact {f.fact_id}: empty answer")
            para = None
            if want_tr:
                if not f.perturbed_answers:
                    raise ValueError(f"evaluate: split {name!r}, fact {f.fact_id}: no perturbed_answers, but a "
                                     f"truth ratio was requested (load the *_perturbed split, or pass "
                                     f"with_truth_ratio=False / a set of split names without {name!r})")
                if role in ("real_authors", "world_facts"):
                    para = f.answer  # TOFU base_answer_key: answer (no paraphrase in these files)
                elif f.paraphrased_answer:
                    para = f.paraphrased_answer
                elif role in ("forget", "retain"):
                    raise ValueError(f"evaluate: split {name!r}, fact {f.fact_id}: no paraphrased_answer, which "
                                     f"TOFU's {role} truth ratio uses (load the *_perturbed split)")
                else:
                    para = f.answer
            paras.append(para)
        plans[name] = (role, facts, paras)
    return plans


def _enter(edit):
    if edit is None:
        return contextlib.nullcontext()
    if hasattr(edit, "__enter__"):
        return edit
    if not callable(edit):
        raise TypeError("edit must be a callable returning a context manager (or a context manager)")
    cm = edit()
    if not hasattr(cm, "__enter__"):
        raise TypeError(f"edit() returned {type(cm).__name__}, not a context manager")
    return cm


def evaluate(backbone, split_facts, *, seeds: Iterable[int] = (0,), n_mc: int | None = None,
             edit: Callable | None = None, rouge: bool = True, gen_length: int = 96, steps: int = 8,
             with_truth_ratio: bool | Iterable[str] = True, remasking: str = "low_confidence",
             batch_size: int | None = None, gen_batch_size: int = 64, max_examples: int | None = None, root=None,
             eos_tail: bool | None = None, elbo: ELBOOptions | None = None) -> pd.DataFrame:
    """TOFU per-example metrics of one backbone: one row per (split, fact, seed).

    ``split_facts``: ``{split name: [Fact]}``, or a list of TOFU split names loaded with
    `data.load_tofu` (``root``) -- "forget10", "retain", "real_authors", "world_facts" load the
    ``*_perturbed`` files TOFU evaluates. "retain" loads only the **test** authors of
    ``retain_perturbed`` (`splits.retain_facts("test")`), so no cell scores the validation authors
    that tune λ; to score validation facts, pass them in a dict
    (``{"retain_val": splits.retain_facts("validation")}``). The role of a split (forget / retain / real_authors /
    world_facts) comes from its name (`split_role`). ``max_examples`` keeps each split's first
    examples (TOFU: 300).

    ``seeds``: the Monte-Carlo ELBO seed (`likelihood.answer_logprob`), and the
    sampler seed (which matters only for ``remasking="random"``; greedy low-confidence decoding is
    seed-free, so it is generated once). ``with_truth_ratio``: True (every split), False, or the split
    names that need it; a requested truth ratio needs ``perturbed_answers`` (and, on forget/retain,
    ``paraphrased_answer``) on every fact, checked before anything runs. ``rouge``: generate greedy
    answers (``gen_length``, ``steps``) and score ROUGE-L recall. ``edit``: a callable returning a
    context manager (e.g. ``lambda: memory.installed(backbone, layer)``), entered once around all of
    the evaluation and exited afterwards, also on error.

    ``elbo``: the `likelihood.ELBOOptions` answers are scored with (default ``ELBOOptions()``: n_mc 16,
    batch_size 32, the EOS after the answer as context); its ``seed`` is replaced by each of ``seeds``.
    ``n_mc``, ``batch_size`` (scoring rows per forward) and ``eos_tail`` (False: nothing after the
    answer, LLaDA's protocol for base models), when given, override the same fields of ``elbo``.

    Columns: split, role, fact_id, seed, n_tokens, logprob, logprob_per_token, logprob_stderr, prob,
    para_nll, pert_nll (mean over k of the per-token NLLs), n_perturbed, truth_ratio, prob_norm,
    generation, rouge_l (NaN where not computed).
    """
    given = {k: v for k, v in dict(n_mc=n_mc, batch_size=batch_size, eos_tail=eos_tail).items() if v is not None}
    elbo = (ELBOOptions() if elbo is None else elbo).replace(**given)
    seeds = [int(s) for s in seeds]
    if isinstance(split_facts, str):
        split_facts = [split_facts]
    if not isinstance(split_facts, Mapping):
        split_facts = _load_splits(list(split_facts), root)
    if max_examples is not None:
        split_facts = {k: list(v)[:int(max_examples)] for k, v in split_facts.items()}
    if isinstance(with_truth_ratio, bool):
        want = (lambda name, t=with_truth_ratio: t)
    else:
        names = {with_truth_ratio} if isinstance(with_truth_ratio, str) else set(with_truth_ratio)
        unknown = names - set(split_facts)
        if unknown:
            raise ValueError(f"evaluate: with_truth_ratio names unknown split(s) {sorted(unknown)}")
        want = names.__contains__
    plans = _check(split_facts, want, seeds)

    rows = []
    with _enter(edit):
        for name, (role, facts, paras) in plans.items():
            qs = [f.question for f in facts]
            gens = {}
            if rouge:
                gen_seeds = seeds if remasking == "random" and not backbone.is_causal else seeds[:1]
                for s in gen_seeds:
                    ids = generate_answers(backbone, qs, gen_length=gen_length, steps=steps, batch_size=gen_batch_size,
                                           remasking=remasking, seed=s)
                    gens[s] = [backbone.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
            # one scoring call per seed: answers, paraphrases (when distinct), perturbed answers
            pairs, idx = [], []
            for f, para in zip(facts, paras):
                i_ans = len(pairs)
                pairs.append((f.question, f.answer))
                i_para = None
                if para is not None:
                    i_para = i_ans
                    if para != f.answer:
                        i_para = len(pairs)
                        pairs.append((f.question, para))
                i_pert = []
                if para is not None:
                    for p in f.perturbed_answers:
                        i_pert.append(len(pairs))
                        pairs.append((f.question, p))
                idx.append((i_ans, i_para, i_pert))
            for s in seeds:
                d = answer_logprob_details(backbone, [q for q, _ in pairs], [a for _, a in pairs], elbo.replace(seed=s))
                nll = (-d.per_token).numpy()
                gen = gens.get(s, gens.get(seeds[0])) if rouge else None
                for j, (f, (i_ans, i_para, i_pert)) in enumerate(zip(facts, idx)):
                    row = {"split": name, "role": role, "fact_id": f.fact_id, "seed": s,
                           "n_tokens": int(d.n_tokens[i_ans]), "logprob": float(d.total[i_ans]),
                           "logprob_per_token": float(d.per_token[i_ans]), "logprob_stderr": float(d.stderr[i_ans]),
                           "prob": math.exp(float(d.per_token[i_ans])),
                           "para_nll": math.nan, "pert_nll": math.nan, "n_perturbed": 0, "truth_ratio": math.nan,
                           "prob_norm": math.nan, "generation": None, "rouge_l": math.nan}
                    if i_para is not None:
                        pn = nll[i_pert]
                        row.update(para_nll=float(nll[i_para]), pert_nll=float(pn.mean()), n_perturbed=len(i_pert),
                                   truth_ratio=float(truth_ratio(nll[[i_para]], pn[None, :])[0]),
                                   prob_norm=float(normalized_prob(nll[[i_ans]], pn[None, :])[0]))
                    if gen is not None:
                        row.update(generation=gen[j], rouge_l=rouge_l_recall(gen[j], f.answer))
                    rows.append(row)
    return pd.DataFrame(rows)


# --- summarize -----------------------------------------------------------------------------------
def _role_rows(frame, role, where="frame"):
    sub = frame[frame["role"] == role]
    splits = sorted(sub["split"].unique())
    if len(splits) > 1:
        raise ValueError(f"summarize: {where} has several {role} splits ({', '.join(splits)}); pass one at a time")
    return sub


def summarize(frame: pd.DataFrame, retain_frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's columns from an `evaluate` frame: one row per seed.

    ForgetLP, RetainLP, RealAuth, WorldFact (mean summed log-prob of the gold answer), ForgetTR,
    RetainTR, RealAuthTR, WorldFactTR, the Prob. columns (ForgetProb, RetainProb: mean
    exp(-nll/token); RealAuthProb, WorldFactProb: mean normalised probability among the options),
    ROUGE-L recall per split (ForgetROUGE, ...), KS_p (Forget Quality; needs ``retain_frame``, the
    retain reference model's `evaluate` frame on the same forget facts -- its rows of the same seed,
    or of its only seed) and ModelUtility (harmonic mean of `UTILITY_COLUMNS`). A column is NaN
    when its split (or ROUGE, or the truth ratio, or the reference) is missing; n_<role> counts
    examples. Splits whose role is not a TOFU role are not summarised.
    """
    need = {"role", "split", "seed", "fact_id", "logprob", "prob", "prob_norm", "truth_ratio", "rouge_l"}
    missing = need - set(frame.columns)
    if missing:
        raise ValueError(f"summarize: frame lacks column(s) {sorted(missing)} (is it from evaluate()?)")
    if frame.empty:
        raise ValueError("summarize: empty frame")
    out = []
    for seed in sorted(frame["seed"].unique()):
        fs = frame[frame["seed"] == seed]
        row = {"seed": int(seed)}
        for role, pre in _ROLE_PREFIX.items():
            sub = _role_rows(fs, role)
            lp_col = f"{pre}LP" if role in ("forget", "retain") else pre
            row[f"n_{role}"] = len(sub)
            row[lp_col] = float(sub["logprob"].mean()) if len(sub) else math.nan
            prob = sub["prob"] if role in ("forget", "retain") else sub["prob_norm"]
            row[f"{pre}Prob"] = float(prob.mean()) if len(sub) and prob.notna().all() else math.nan
            row[f"{pre}ROUGE"] = float(sub["rouge_l"].mean()) if len(sub) and sub["rouge_l"].notna().all() else math.nan
            tr = sub["truth_ratio"]
            if len(sub) and tr.notna().all():
                row[f"{pre}TR"] = forget_truth_ratio(tr) if role == "forget" else retain_truth_ratio(tr)
            else:
                row[f"{pre}TR"] = math.nan
        row["KS_p"] = _ks(fs, retain_frame, seed)
        row["ModelUtility"] = model_utility({c: row[c] for c in UTILITY_COLUMNS})
        out.append(row)
    return pd.DataFrame(out)


def _ks(fs, retain_frame, seed):
    forget = _role_rows(fs, "forget")
    if retain_frame is None or forget.empty or forget["truth_ratio"].isna().any():
        return math.nan
    ref = _role_rows(retain_frame, "forget", "retain_frame")
    if ref.empty:
        raise ValueError("summarize: retain_frame has no forget split rows")
    ref_seeds = sorted(ref["seed"].unique())
    if seed in ref_seeds:
        ref = ref[ref["seed"] == seed]
    elif len(ref_seeds) == 1:
        ref = ref[ref["seed"] == ref_seeds[0]]
    else:
        raise ValueError(f"summarize: retain_frame has seeds {ref_seeds} but not seed {seed}")
    if set(ref["fact_id"]) != set(forget["fact_id"]):
        raise ValueError("summarize: retain_frame's forget facts differ from the frame's "
                         f"({len(set(forget['fact_id']) ^ set(ref['fact_id']))} fact_id(s) in only one)")
    if ref["truth_ratio"].isna().any():
        raise ValueError("summarize: retain_frame has forget rows without a truth ratio")
    return forget_quality(forget["truth_ratio"].to_numpy(), ref["truth_ratio"].to_numpy())


def fact_deltas(frame: pd.DataFrame, base: pd.DataFrame, role: str) -> pd.Series:
    """Per fact of ``role``: the mean over seeds of logprob(edited) - logprob(no_edit), two `evaluate`
    frames matched on (fact_id, seed); indexed by fact_id, in ``frame``'s order."""
    a, b = _role_rows(frame, role), _role_rows(base, role, "base")
    key = ["fact_id", "seed"]
    joined = a[key + ["logprob"]].merge(b[key + ["logprob"]], on=key, how="outer", suffixes=("", "_base"),
                                        indicator=True)
    if (joined["_merge"] != "both").any():
        odd = joined.loc[joined["_merge"] != "both", key].head(3).values.tolist()
        raise ValueError(f"fact_deltas: the frames score different (fact, seed) pairs for role {role!r}, e.g. {odd}")
    d = joined.assign(delta=joined["logprob"] - joined["logprob_base"]).groupby("fact_id", sort=False)["delta"].mean()
    return d.reindex(pd.unique(a["fact_id"]))
