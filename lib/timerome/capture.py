"""Capture of the edit's keys and deltas (paper 002 Eq. 6-9, Algorithm 1 lines 10-14).

For each fact z, at one coordinate (ℓ*, m*) and with
nothing masked (denoising step 0), two forwards:

* ``[prompt ; original answer]``: u_z = mean of the hooked output over the subject positions S_z
  (found by `tracer.subject_positions`, so exactly the tokens the tracer corrupts), v_o = mean
  over the answer positions;
* ``[prompt ; target]`` (default target "I don't know."; or one target per fact, e.g. a
  counterfactual answer): v_t = mean over the target positions;

and d_z = v_t - v_o. Prompts and answers are tokenised as everywhere else in the package
(`likelihood.encode_example`: BOS if any, ``backbone.prompt(question)``, ``answer_prefix``).
The forward stops right after the hooked module (nothing later is needed), so capture costs
less than a plain forward.
"""
from __future__ import annotations

import time

import torch

from .backbones import MODULES, point

DEFAULT_TARGET = "I don't know."


def _targets(facts, target) -> list:
    """One target string per fact: ``target`` repeated, or ``target`` itself when it is a sequence."""
    if isinstance(target, str):
        return [target] * len(facts)
    target = list(target)
    if len(target) != len(facts) or not all(isinstance(t, str) for t in target):
        raise ValueError(f"target must be one string or one string per fact ({len(facts)} facts), got "
                         f"{len(target)} value(s)")
    return target


def cloze_rows(backbone, facts, target, skip_unlocatable):
    """Per usable fact: (fact, prompt ids, S, answer ids, target ids); and the skipped fact ids.
    ``target``: one string, or one per fact."""
    from .tracer import SubjectError, subject_positions

    targets = _targets(facts, target)
    if isinstance(target, str):
        tgt = backbone.answer_ids(target, what="target")
    rows, skipped = [], []
    for f, t in zip(facts, targets):
        try:
            prompt, S = subject_positions(backbone, f)
        except SubjectError:
            if not skip_unlocatable:
                raise
            skipped.append(f.fact_id)
            continue
        ans = backbone.answer_ids(f.answer, what=f"fact {f.fact_id}: answer")
        rows.append((f, prompt, S, ans, tgt if isinstance(target, str) else
                     backbone.answer_ids(t, what=f"fact {f.fact_id}: target")))
    return rows, skipped


@torch.no_grad()
def _hooked_means(backbone, seqs, spans, layer, module, batch_size, early_exit) -> torch.Tensor:
    """Token sequences ``seqs`` (lists of ids) and per sequence a list of position lists
    ``spans[i]`` -> [total number of position lists, H] float64 on the backbone's device, in
    order: the mean hooked output over each position list."""
    from .sampler import left_pad

    at = point(module, layer)
    H = backbone.hidden_size
    first = [0]
    for s in spans:
        first.append(first[-1] + len(s))  # output row of each sequence's first position list
    out = torch.zeros(first[-1], H, dtype=torch.float64, device=backbone.device)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths share a batch
    with backbone.at_step(0):  # the capture forward is step 0 (nothing masked)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, att = left_pad([seqs[i] for i in idx], backbone.pad_id, backbone.device)
            T = ids.shape[1]
            flat, owner = [], []  # (row of the flattened h, output row) pairs: one index_add per batch
            for b, i in enumerate(idx):
                shift = b * T + T - len(seqs[i])  # left padding
                for j, pos in enumerate(spans[i]):
                    flat += [shift + p for p in pos]
                    owner += [first[i] + j] * len(pos)
            with backbone.trace(at, stop_after=at if early_exit else None) as seen:
                backbone.logits(ids, None if bool(att.all()) else att)  # stops after the point
            h = seen[at].reshape(-1, H)
            dev = h.device
            out.index_add_(0, torch.as_tensor(owner, device=dev), h[torch.as_tensor(flat, device=dev)].double())
    sizes = torch.tensor([len(p) for s in spans for p in s], dtype=torch.float64, device=out.device)
    return out / sizes[:, None]


def capture_keys(backbone, facts, layer: int, *, module: str = "resid", target: str = DEFAULT_TARGET,
                 batch_size: int = 32, skip_unlocatable: bool = False, early_exit: bool = True) -> dict:
    """Eq. 6-9 for a list of facts -> dict(U, D: [n, H] float64 on the backbone's device, fact_ids,
    skipped, capture_s). ``target``: one string for every fact, or a sequence of one per fact.

    A fact whose subject is not in its question raises `tracer.SubjectError`; with
    ``skip_unlocatable`` it is left out and its id listed in ``skipped``. ``early_exit=False``
    runs every forward through to the logits (for benchmarks only: the keys are identical).
    """
    if module not in MODULES:
        raise ValueError(f"module={module!r}; keys are captured at one of {MODULES}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    facts = list(facts)
    if not facts:
        raise ValueError("no facts to capture: the fact list is empty")
    backbone.site(point(module, layer))  # a bad layer fails before any work
    t0 = time.perf_counter()
    rows, skipped = cloze_rows(backbone, facts, target, skip_unlocatable)
    if not rows:
        raise ValueError(f"none of the {len(facts)} facts has a subject in its question (skipped {skipped[:5]}...)")
    seqs, spans = [], []
    for _, prompt, S, ans, tgt in rows:
        P = len(prompt)
        seqs += [prompt + ans, prompt + tgt]  # the key and the original value share one forward
        spans += [[S, list(range(P, P + len(ans)))], [list(range(P, P + len(tgt)))]]
    means = _hooked_means(backbone, seqs, spans, layer, module, batch_size, early_exit).view(len(rows), 3, -1)
    U, V_o, V_t = means[:, 0], means[:, 1], means[:, 2]
    sync(U.device)
    return {"U": U.contiguous(), "D": (V_t - V_o).contiguous(), "fact_ids": [r[0].fact_id for r in rows],
            "skipped": skipped, "capture_s": time.perf_counter() - t0}


def sync(device):
    if torch.device(device).type == "cuda":  # GPU work is asynchronous: time it when it is done
        torch.cuda.synchronize(device)
