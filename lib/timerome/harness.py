"""lm-evaluation-harness on a timerome `Backbone`, with an optional inference-time edit installed.

`HarnessLM(backbone, edit=None, n_mc=16, seed=0, ...)` is an ``lm_eval`` model, registered under the
name ``"timerome"`` (``simple_evaluate(model="timerome", model_args="backbone=tiny-mdlm,n_mc=8")``
once this module is imported; ``memory=<dir>`` installs a saved `memory.EditMemory`). Its three
request types:

* ``loglikelihood(context, continuation)`` -> ``(log p, is_greedy)``: `likelihood.answer_logprob`
  with the context as the prompt and the continuation as the answer, both *verbatim*: the model sees
  ``BOS + encode(context)`` then ``encode(continuation)`` (no ``prompt_template``, no ``answer_prefix``;
  whitespace at the end of the context moves to the continuation, as lm-eval's HF model does). For
  an MDLM that is the Monte-Carlo ELBO (``n_mc`` samples, masks seeded by ``(seed, context,
  continuation)``, the EOS after the continuation visible, all of `likelihood.ELBOOptions`), for a
  causal model the exact sum of token log-probs. ``is_greedy``: with ``check_greedy`` the
  continuation is what greedy decoding of ``len(continuation)`` tokens produces (MDLM: the sampler,
  one token per step, low-confidence remasking, as LLaDA's ``eval_llada.py``; causal:
  left-to-right argmax); without it, False (LLaDA's ``is_check_greedy=False``). Only tasks like
  LAMBADA read it.
* ``loglikelihood_rolling(text)``: the same estimator with an empty context (BOS only) and the whole
  text as the continuation, in one window: a text longer than the model's context is an error
  (no sliding windows: the MDLM bound is not a product of per-window conditionals).
* ``generate_until(context, gen_kwargs)``: `sampler.generate` (MDLM: ``max_gen_toks`` masked tokens,
  ``steps`` forwards, default one per token; ``block_length`` semi-autoregressive blocks) or
  `sampler.generate_autoregressive` (causal), cut at the first EOS, decoded without special tokens
  and cut before the first ``until`` string. ``temperature > 0`` samples (Gumbel-max, seeded);
  other sampling options (top_p, ...) are refused.

Edit. ``edit`` is None, a callable returning a context manager (``lambda: mem.installed(bb)``, the
``edit=`` of `metrics.evaluate`), or an object with ``installed(backbone)`` (an `EditMemory`, a
steering baseline). A fresh context manager is entered around each of the three calls and exited
when it returns or raises, so an error never leaves the model edited.

Tasks. `tofu_task(name)` builds one of `LOCAL_TASKS` from the TOFU files under ``$TIMEROME_DATA/tofu``
(`data.load_tofu`, nothing from the hub): ``*_mc``: multiple choice between the gold answer and
TOFU's perturbed answers (lm-eval's ``acc`` and ``acc_norm``, and ``gold_logprob``, the gold answer's
log-likelihood in nats: TOFU's RealAuth / WorldFact LP, informative where accuracy saturates); ``*_gen``: the question answered by
``generate_until`` (exact match and TOFU's ROUGE-L recall, `metrics.rouge_l_recall`). The task is
an lm-eval config dict (a ``custom_dataset`` callable returning an in-memory ``datasets.Dataset``,
``doc_to_text`` etc.), run by `run_tasks` with a `TaskManager` that indexes no task directory, so it
works offline; `multiple_choice_task` / `generation_task` build the same from any list of docs.
`run_tasks(lm, tasks)` runs local configs and registered lm-eval names (those need the hub's
datasets) and returns a `HarnessResult`: one row per (task, metric) and the per-document values.

Determinism: the ELBO masks and the sampler are seeded by ``seed``; lm-eval's own seeds are its
fixed defaults. Sequences longer than the model's context (``max_length``, read from the model's
config when not given) are refused, never truncated.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .likelihood import ELBOOptions, answer_logprob
from .sampler import REMASKING, generate, generate_autoregressive

__all__ = ["HarnessLM", "HarnessResult", "LOCAL_TASKS", "tofu_task", "multiple_choice_task", "generation_task",
           "run_tasks", "paired_delta", "edit_factory"]

# name -> (TOFU file, kind): multiple choice between the answer and its perturbed answers, or generation
LOCAL_TASKS = {
    "tofu_world_facts_mc": ("world_facts_perturbed", "mc"),
    "tofu_real_authors_mc": ("real_authors_perturbed", "mc"),
    "tofu_world_facts_gen": ("world_facts_perturbed", "gen"),
    "tofu_real_authors_gen": ("real_authors_perturbed", "gen"),
    "tofu_forget01_mc": ("forget01_perturbed", "mc"),  # the edited facts themselves: a positive control
}
_GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature"}


def edit_factory(edit, backbone) -> Callable | None:
    """None, or a zero-argument callable returning a fresh context manager that installs ``edit``."""
    if edit is None:
        return None
    if hasattr(edit, "installed") and callable(edit.installed):
        return lambda: edit.installed(backbone)
    if hasattr(edit, "__enter__"):
        raise TypeError("edit is a context manager object, which can be entered only once; pass a callable that "
                        "returns one (e.g. lambda: memory.installed(backbone)) or the memory itself")
    if not callable(edit):
        raise TypeError(f"edit must be None, a callable returning a context manager, or an object with "
                        f"installed(backbone); got {type(edit).__name__}")

    def make():
        cm = edit()
        if not (hasattr(cm, "__enter__") and hasattr(cm, "__exit__")):
            raise TypeError(f"edit() returned {type(cm).__name__}, not a context manager")
        return cm
    return make


def _model_max_length(model) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_len", "max_sequence_length", "max_position_embeddings", "n_positions"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _int(v, name, lo):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name}={v!r} must be an integer >= {lo}")
    return int(v)


@register_model("timerome")
class HarnessLM(LM):
    """An lm-eval model over a timerome backbone (module docstring); ``edit`` is installed per call."""

    def __init__(self, backbone, *, edit=None, memory: str | None = None, n_mc: int = 16, seed: int = 0,
                 batch_size: int = 32, elbo: ELBOOptions | None = None, check_greedy: bool = True,
                 steps: int | None = None, block_length: int | None = None, remasking: str = "low_confidence",
                 gen_batch_size: int = 32, max_length: int | None = None, device=None, dtype=None,
                 trust_remote_code: bool = False, max_batch_size=None):
        super().__init__()
        from .backbones import Backbone

        if isinstance(backbone, str):
            from .loading import load_backbone

            backbone = load_backbone(backbone, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        if not isinstance(backbone, Backbone):
            raise TypeError(f"HarnessLM: backbone must be a timerome Backbone or a model name, not {type(backbone).__name__}")
        if memory is not None:
            if edit is not None:
                raise ValueError("HarnessLM: pass edit= or memory=, not both")
            from .memory import EditMemory

            edit = EditMemory.load(memory, backbone)
        if isinstance(batch_size, str):
            raise ValueError(f"HarnessLM: batch_size={batch_size!r}: give an integer (rows per forward; no 'auto')")
        self.backbone = backbone
        self._edit = edit_factory(edit, backbone)
        self.elbo = (ELBOOptions() if elbo is None else elbo).replace(
            n_mc=_int(n_mc, "HarnessLM n_mc", 1), seed=_int(seed, "HarnessLM seed", 0), batch_size=_int(batch_size, "HarnessLM batch_size", 1))
        self.check_greedy = bool(check_greedy)
        self.steps = None if steps is None else _int(steps, "HarnessLM steps", 1)
        self.block_length = None if block_length is None else _int(block_length, "HarnessLM block_length", 1)
        if remasking not in REMASKING:
            raise ValueError(f"HarnessLM remasking={remasking!r}; expected one of {REMASKING}")
        self.remasking, self.gen_batch_size = remasking, _int(gen_batch_size, "HarnessLM gen_batch_size", 1)
        self.max_length = _model_max_length(backbone.model) if max_length is None else _int(max_length, "HarnessLM max_length", 1)
        # the view the likelihood sees: same model and tokenizer, context and continuation verbatim
        self._raw = copy.copy(backbone)
        self._raw.prompt_template, self._raw.answer_prefix = "{question}", ""
        self._device = backbone.device

    # --- helpers -----------------------------------------------------------------------------
    def _edited(self):
        import contextlib

        return contextlib.nullcontext() if self._edit is None else self._edit()

    @staticmethod
    def _where(i, req) -> str:
        task, doc = getattr(req, "task_name", None), getattr(req, "doc_id", None)
        return f"request {i}" + (f" ({task}, doc {doc})" if task is not None else "")

    def _check_length(self, n, i, req, what):
        if self.max_length is not None and n > self.max_length:
            raise ValueError(f"HarnessLM: {self._where(i, req)}: {what} is {n} tokens, more than the model's "
                             f"context of {self.max_length} (max_length); sequences are never truncated")

    def _pairs(self, requests):
        """[(context, continuation, context ids, continuation ids)], checked."""
        out = []
        for i, req in enumerate(requests):
            args = req.args
            if len(args) != 2 or not all(isinstance(a, str) for a in args):
                raise ValueError(f"HarnessLM.loglikelihood: {self._where(i, req)}: expected (context, continuation) "
                                 f"strings, got {args!r}")
            ctx, cont = args
            n = len(ctx) - len(ctx.rstrip())
            if n:  # trailing whitespace of the context belongs to the continuation (lm-eval's HF model)
                ctx, cont = ctx[:-n], ctx[-n:] + cont
            c_ids = self._raw.prompt_ids(ctx)
            a_ids = self._raw.answer_ids(cont, what=f"{self._where(i, req)}: continuation")
            if self.backbone.is_causal and not c_ids:
                raise ValueError(f"HarnessLM: {self._where(i, req)}: empty context and the tokenizer has no BOS: a "
                                 f"causal model cannot score the first token")
            tail = 0 if self.backbone.is_causal or not self.elbo.eos_tail else 1
            self._check_length(len(c_ids) + len(a_ids) + tail, i, req, "context + continuation")
            out.append((ctx, cont, c_ids, a_ids))
        return out

    def _greedy(self, pairs) -> list[bool]:
        """Whether greedy decoding of len(continuation) tokens reproduces each continuation."""
        bb, out = self.backbone, [False] * len(pairs)
        by_len: dict[int, list[int]] = {}
        for k, (_, _, _, a) in enumerate(pairs):
            by_len.setdefault(len(a), []).append(k)
        for L, idx in sorted(by_len.items()):
            for s in range(0, len(idx), self.gen_batch_size):
                chunk = idx[s:s + self.gen_batch_size]
                prompts = [pairs[k][2] for k in chunk]
                if bb.is_causal:
                    toks = generate_autoregressive(bb, prompts, max_new_tokens=L)
                else:
                    toks = generate(bb, prompts, gen_length=L, steps=L, remasking="low_confidence", seed=self.elbo.seed)
                for k, row in zip(chunk, toks[:, -L:].tolist()):
                    out[k] = row == pairs[k][3]
        return out

    # --- lm-eval API ---------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if not requests:
            return []
        pairs = self._pairs(requests)
        with self._edited():
            lp = answer_logprob(self._raw, [p[0] for p in pairs], [p[1] for p in pairs], self.elbo)
            greedy = self._greedy(pairs) if self.check_greedy else [False] * len(pairs)
        out = [(float(v), bool(g)) for v, g in zip(lp.tolist(), greedy)]
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        if not requests:
            return []
        texts = []
        for i, req in enumerate(requests):
            if len(req.args) < 1 or not isinstance(req.args[0], str):
                raise ValueError(f"HarnessLM.loglikelihood_rolling: {self._where(i, req)}: expected (text,), got {req.args!r}")
            text = req.args[0]
            ids = self._raw.prompt_ids("") + self._raw.answer_ids(text, what=f"{self._where(i, req)}: text")
            if self.backbone.is_causal and not self._raw.prompt_ids(""):
                raise ValueError(f"HarnessLM.loglikelihood_rolling: {self._where(i, req)}: the tokenizer has no BOS, "
                                 f"so a causal model cannot score the first token")
            self._check_length(len(ids) + (0 if self.backbone.is_causal or not self.elbo.eos_tail else 1), i, req,
                               "the text (one window; no sliding-window scoring here)")
            texts.append(text)
        with self._edited():
            lp = answer_logprob(self._raw, [""] * len(texts), texts, self.elbo)
        out = [float(v) for v in lp.tolist()]
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return out

    def _gen_plan(self, i, req):
        if len(req.args) != 2 or not isinstance(req.args[0], str) or not isinstance(req.args[1], Mapping):
            raise ValueError(f"HarnessLM.generate_until: {self._where(i, req)}: expected (context, gen_kwargs), got {req.args!r}")
        ctx, kw = req.args
        unknown = sorted(set(kw) - _GEN_KEYS)
        if unknown:
            raise ValueError(f"HarnessLM.generate_until: {self._where(i, req)}: unsupported generation option(s) "
                             f"{unknown}; supported: {sorted(_GEN_KEYS)}")
        until = kw.get("until", [])
        until = [until] if isinstance(until, str) else list(until or [])
        if not all(isinstance(u, str) and u for u in until):
            raise ValueError(f"HarnessLM.generate_until: {self._where(i, req)}: until={kw.get('until')!r} must be "
                             f"non-empty strings")
        n = kw.get("max_gen_toks", 256)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"HarnessLM.generate_until: {self._where(i, req)}: max_gen_toks={n!r} must be an integer >= 1")
        temp, do_sample = kw.get("temperature") or 0.0, kw.get("do_sample")
        if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not (temp >= 0 and math.isfinite(temp)):
            raise ValueError(f"HarnessLM.generate_until: {self._where(i, req)}: temperature={temp!r} must be a "
                             f"finite number >= 0")
        temp = 0.0 if do_sample is False else 1.0 if do_sample and temp == 0 else float(temp)  # HF's reading
        block = self.block_length or n
        gen_length = -(-n // block) * block  # a whole number of blocks; the output is cut to n tokens
        ids = self._raw.prompt_ids(ctx)
        if self.backbone.is_causal and not ids:
            raise ValueError(f"HarnessLM.generate_until: {self._where(i, req)}: empty context and no BOS token")
        self._check_length(len(ids) + gen_length, i, req, "context + max_gen_toks")
        return ids, until, n, gen_length, block, temp

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not requests:
            return []
        bb, plans = self.backbone, [self._gen_plan(i, r) for i, r in enumerate(requests)]
        groups: dict[tuple, list[int]] = {}
        for k, (_, _, n, g, block, temp) in enumerate(plans):
            groups.setdefault((n, g, block, temp), []).append(k)
        out: list[str] = [""] * len(plans)
        with self._edited():
            for (n, g, block, temp), idx in sorted(groups.items()):
                for s in range(0, len(idx), self.gen_batch_size):
                    chunk = idx[s:s + self.gen_batch_size]
                    prompts = [plans[k][0] for k in chunk]
                    if bb.is_causal:
                        if temp > 0:
                            raise ValueError("HarnessLM.generate_until: sampling (temperature > 0) is implemented "
                                             "for masked-diffusion backbones only; the causal decoder is greedy")
                        toks = generate_autoregressive(bb, prompts, max_new_tokens=n)
                    else:
                        toks = generate(bb, prompts, gen_length=g, steps=self.steps or g, block_length=block,
                                        remasking=self.remasking, temperature=temp, seed=self.elbo.seed)
                    for k, row in zip(chunk, toks[:, toks.shape[1] - g:].tolist()):
                        row = row[:n]
                        if bb.eos_id in row:
                            row = row[:row.index(bb.eos_id)]
                        text = bb.tokenizer.decode(row, skip_special_tokens=True)
                        for u in plans[k][1]:
                            text = text.split(u, 1)[0]
                        out[k] = text
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, res)
        return out


# =================================================================================== local tasks
def _dataset(docs):
    import datasets

    rows = [dict(d) for d in docs]
    return lambda **_: datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def multiple_choice_task(name: str, docs: Sequence[Mapping], *, template: str = "Question: {question}\nAnswer:",
                         delimiter: str = " ") -> dict:
    """An lm-eval multiple-choice config over ``docs`` (``question``, ``choices``, ``gold`` index):
    context ``template.format(question=...)``, continuations ``delimiter + choice``; acc, acc_norm and
    gold_logprob (`_mc_results`)."""
    docs = list(docs)
    if not docs:
        raise ValueError(f"task {name!r}: no documents")
    for i, d in enumerate(docs):
        ch = d.get("choices")
        if not isinstance(d.get("question"), str) or not isinstance(ch, (list, tuple)) or len(ch) < 2 \
                or not all(isinstance(c, str) and c for c in ch):
            raise ValueError(f"task {name!r}, doc {i}: needs a question string and >= 2 non-empty choice strings")
        g = d.get("gold")
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(ch):
            raise ValueError(f"task {name!r}, doc {i}: gold={g!r} must index its {len(ch)} choices")
    return {"task": name, "custom_dataset": _dataset(docs), "test_split": "test", "output_type": "multiple_choice",
            "doc_to_text": lambda d: template.format(question=d["question"]),
            "doc_to_choice": lambda d: list(d["choices"]), "doc_to_target": lambda d: d["gold"],
            "target_delimiter": delimiter, "process_results": _mc_results,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                            for m in ("acc", "acc_norm", "gold_logprob")],
            "metadata": {"version": 1}}


def _mc_results(doc, results):
    """lm-eval's multiple-choice acc and acc_norm (argmax of the log-likelihoods, and of them per
    character of the choice; first index on ties), plus the gold choice's log-likelihood (nats), which
    moves even where the accuracy is saturated."""
    lls = np.array([r[0] for r in results], dtype=np.float64)
    lengths = np.array([float(len(c)) for c in doc["choices"]])
    gold = doc["gold"]
    return {"acc": float(np.argmax(lls) == gold), "acc_norm": float(np.argmax(lls / lengths) == gold),
            "gold_logprob": float(lls[gold])}


def _gen_results(doc, results):
    from .metrics import rouge_l_recall

    pred, gold = results[0].strip(), doc["answer"].strip()
    return {"exact_match": float(pred == gold), "rouge_l": rouge_l_recall(pred, gold)}


def generation_task(name: str, docs: Sequence[Mapping], *, template: str = "Question: {question}\nAnswer:",
                    max_gen_toks: int = 32, until: Sequence[str] = ("\n",)) -> dict:
    """An lm-eval generation config over ``docs`` (``question``, ``answer``): exact match (after strip)
    and ROUGE-L recall of the generation against the answer."""
    docs = list(docs)
    if not docs:
        raise ValueError(f"task {name!r}: no documents")
    for i, d in enumerate(docs):
        if not isinstance(d.get("question"), str) or not isinstance(d.get("answer"), str) or not d["answer"].strip():
            raise ValueError(f"task {name!r}, doc {i}: needs question and non-empty answer strings")
    return {"task": name, "custom_dataset": _dataset(docs), "test_split": "test", "output_type": "generate_until",
            "doc_to_text": lambda d: template.format(question=d["question"]), "doc_to_target": lambda d: d["answer"],
            "process_results": _gen_results,
            "generation_kwargs": {"until": list(until), "max_gen_toks": int(max_gen_toks), "do_sample": False},
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("exact_match", "rouge_l")],
            "metadata": {"version": 1}}


def tofu_task(name: str, *, backbone=None, root=None, max_examples: int | None = None, max_gen_toks: int = 32) -> dict:
    """One of `LOCAL_TASKS` from ``$TIMEROME_DATA/tofu`` (or ``root``). With ``backbone`` the prompt is
    its ``prompt_template`` and the choices follow its ``answer_prefix``, so the harness scores exactly
    the token sequences `likelihood.answer_logprob` scores for that backbone."""
    if name not in LOCAL_TASKS:
        raise ValueError(f"unknown local task {name!r}; expected one of {sorted(LOCAL_TASKS)}")
    from .data import load_tofu

    split, kind = LOCAL_TASKS[name]
    facts = load_tofu(split, root)
    if max_examples is not None:
        facts = facts[:_int(max_examples, f"tofu_task({name!r}) max_examples", 1)]
    template = "Question: {question}\nAnswer:" if backbone is None else backbone.prompt_template
    delim = " " if backbone is None else backbone.answer_prefix
    if kind == "mc":
        bad = [f.fact_id for f in facts if not f.perturbed_answers]
        if bad:
            raise ValueError(f"{split}: facts without perturbed answers ({bad[:3]}...): not a multiple-choice split")
        docs = [{"question": f.question, "choices": [f.answer, *f.perturbed_answers], "gold": 0, "fact_id": f.fact_id}
                for f in facts]
        return multiple_choice_task(name, docs, template=template, delimiter=delim)
    docs = [{"question": f.question, "answer": f.answer, "fact_id": f.fact_id} for f in facts]
    return generation_task(name, docs, template=template, max_gen_toks=max_gen_toks)


# =================================================================================== running
@dataclass
class HarnessResult:
    """``table``: task, metric, value, stderr, n, num_fewshot (one row per requested task and metric, in
    the order the tasks were given and lm-eval lists their metrics);
    ``samples``: {(task, metric): per-document values, ordered by (subtask, doc_id)}; ``raw``: lm-eval's dicts."""
    table: pd.DataFrame
    samples: dict
    raw: list


def _leaves(res, name) -> list[str]:
    subs = res.get("group_subtasks", {})
    if name not in subs:
        return [name]
    return [leaf for s in sorted(subs[name]) for leaf in _leaves(res, s)]


def _rows(res, name):
    metrics = res["results"].get(name, {})
    rows = []
    for key, v in metrics.items():
        if "," not in key or "_stderr," in key or not isinstance(v, (int, float, np.floating)) or isinstance(v, bool):
            continue
        metric, filt = key.split(",", 1)
        se = metrics.get(f"{metric}_stderr,{filt}")
        rows.append({"metric": metric if filt == "none" else f"{metric},{filt}", "key": metric, "value": float(v),
                     "stderr": float(se) if isinstance(se, (int, float, np.floating)) else math.nan})
    return rows


def run_tasks(lm: HarnessLM, tasks: Sequence, *, num_fewshot: Mapping | None = None, limit: int | None = None,
              bootstrap_iters: int = 1000) -> HarnessResult:
    """Run ``tasks`` (local config dicts, or registered lm-eval names) on ``lm`` with ``simple_evaluate``.

    ``num_fewshot``: {task name: shots} (None or absent: the task's default); tasks are run in one
    ``simple_evaluate`` call per distinct value. Registered names need lm-eval's task index (built only
    when one is asked for) and their datasets (the hub, or its cache). ``limit``: the first ``limit``
    documents of each task."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if not isinstance(lm, HarnessLM):
        raise TypeError(f"run_tasks: lm must be a HarnessLM, not {type(lm).__name__}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("run_tasks: no tasks")
    names = []
    for t in tasks:
        if isinstance(t, Mapping) and isinstance(t.get("task"), str):
            names.append(t["task"])
        elif isinstance(t, str) and t:
            names.append(t)
        else:
            raise TypeError(f"run_tasks: a task is a registered name or a config dict with 'task', got {t!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"run_tasks: duplicate task names {sorted({n for n in names if names.count(n) > 1})}")
    shots = dict(num_fewshot or {})
    unknown = sorted(set(shots) - set(names))
    if unknown:
        raise ValueError(f"run_tasks: num_fewshot names task(s) {unknown} that are not run")
    registered = any(isinstance(t, str) for t in tasks)
    manager = TaskManager() if registered else TaskManager(include_defaults=False)
    if registered:
        missing = [t for t in tasks if isinstance(t, str) and t not in manager.all_tasks]
        if missing:
            raise ValueError(f"run_tasks: {missing} are not lm-eval tasks, groups or tags")
    by_shots: dict = {}
    for t, n in zip(tasks, names):
        by_shots.setdefault(shots.get(n), []).append(t)
    rows, samples, raw = [], {}, []
    for k, group in by_shots.items():
        res = simple_evaluate(model=lm, tasks=group, num_fewshot=k, limit=limit, task_manager=manager,
                              bootstrap_iters=bootstrap_iters, log_samples=True)
        raw.append(res)
        for t in group:
            n = t["task"] if isinstance(t, Mapping) else t
            task_rows = _rows(res, n)
            if not task_rows:
                raise RuntimeError(f"run_tasks: lm-eval returned no metrics for {n!r}")
            leaves = _leaves(res, n)
            for r in task_rows:
                vals = [float(s[r["key"]]) for leaf in leaves
                        for s in sorted(res["samples"].get(leaf, []), key=lambda s: s["doc_id"]) if r["key"] in s]
                samples[n, r["metric"]] = np.asarray(vals, dtype=np.float64)
                rows.append({"task": n, "metric": r["metric"], "value": r["value"], "stderr": r["stderr"],
                             "n": len(vals), "num_fewshot": k})
    order = {n: i for i, n in enumerate(names)}  # tasks in the order given, metrics in lm-eval's order
    table = pd.DataFrame(rows).sort_values("task", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    return HarnessResult(table, samples, raw)


def paired_delta(edited, base) -> tuple[float, float]:
    """(mean of edited - base, its standard error) over documents scored by both runs (same order)."""
    a, b = np.asarray(edited, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_delta: need two equal-length, non-empty 1-D arrays; got shapes {a.shape} and {b.shape}")
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan
