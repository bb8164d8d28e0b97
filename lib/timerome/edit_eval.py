"""Scoring counterfactual weight edits on a masked diffusion LM and an autoregressive LM alike.

For a `counterfact.Counterfact` and a backbone (edited or not; the caller applies the edit):

* efficacy: the generated continuation of the cloze prompt contains the new object (MDLM: the
  low-confidence sampler on ``[prompt ; MASK x (|new| + |rest|) ; tail]``; ARM: greedy decoding of
  as many tokens);
* margin: log p(new) - log p(old), each object's summed token log-probabilities (MDLM: at the
  fully masked state, the rest of the answer masked too, the state the edit is optimised on; ARM:
  teacher forcing);
* generalisation: efficacy on the paraphrased question with the same answer prefix;
* specificity: the share of neighbourhood requests (other authors' facts) whose generated
  continuation is the unedited model's;
* fluency: the rest of the answer after the new object, shown in place, predicted token by token
  (MDLM: argmax at the masked rest positions of one forward; ARM: teacher-forced argmax);
* visited states (MDLMs, paper 003's "why"): at every state the sampler visits while generating the
  edited cloze, the mean log-probability of the new object's tokens still masked, with k of its
  |new| slots already filled.

The canvas is sized for the object generated (``|new| + |rest|``; a neighbour's own ``|old| +
|rest|``): an MDLM's answer length is a sampler setting, fixed here so that a wrong length is not
mistaken for a failed edit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .counterfact import Cloze, Counterfact, length_bin, request, tokenize
from .likelihood import answer_tail
from .sampler import generate, generate_autoregressive


def contains(text: str, value: str) -> bool:
    """``value`` occurs in ``text`` as whole words, ignoring case and runs of whitespace."""
    norm = lambda s: " ".join(s.lower().split())
    return re.search(rf"(?<![\w-]){re.escape(norm(value))}(?![\w-])", norm(text)) is not None


def _decode(bb, ids) -> str:
    ids = list(ids)
    if bb.eos_id is not None and bb.eos_id in ids:
        ids = ids[:ids.index(bb.eos_id)]
    return bb.tokenizer.decode(ids, skip_special_tokens=True)


@torch.no_grad()
def continuation(bb, cloze: Cloze, obj: str = "new", *, steps: int = 8, on_step=None) -> str:
    """The generated text after the cloze prompt, ``|obj| + |rest|`` tokens (see the module docstring)."""
    n = len(getattr(cloze, obj)) + len(cloze.rest)
    if bb.is_causal:
        out = generate_autoregressive(bb, [list(cloze.prompt)], max_new_tokens=n)
    else:
        out = generate(bb, [list(cloze.prompt)], gen_length=n, steps=steps, suffix=answer_tail(bb), on_step=on_step)
    return _decode(bb, out[0, len(cloze.prompt):].tolist())


@torch.no_grad()
def object_logp(bb, cloze: Cloze, obj: str) -> float:
    """Summed log-probability of the ``obj`` ("old" / "new") tokens after the cloze prompt."""
    tgt = list(getattr(cloze, obj))
    P = len(cloze.prompt)
    if bb.is_causal:
        x = list(cloze.prompt) + tgt
        cols = list(range(P - 1, P - 1 + len(tgt)))
    else:
        x = cloze.canvas(bb, obj)
        cols = list(range(P, P + len(tgt)))
    ids = torch.tensor([x], device=bb.device)
    logits = bb.logits_at(ids, None, torch.zeros(len(cols), dtype=torch.long, device=bb.device),
                          torch.tensor(cols, device=bb.device))
    lp = torch.log_softmax(logits.double(), -1)
    return float(lp[torch.arange(len(tgt)), torch.tensor(tgt, device=bb.device)].sum())


@torch.no_grad()
def rest_accuracy(bb, cloze: Cloze) -> float:
    """Share of the rest-of-answer tokens predicted (argmax) with the new object in place; NaN when
    the object ends the answer."""
    if not cloze.rest:
        return float("nan")
    head = list(cloze.prompt) + list(cloze.new)
    if bb.is_causal:
        x, cols = head + list(cloze.rest), list(range(len(head) - 1, len(head) - 1 + len(cloze.rest)))
    else:
        x = head + [bb.mask_id] * len(cloze.rest) + answer_tail(bb)
        cols = list(range(len(head), len(head) + len(cloze.rest)))
    ids = torch.tensor([x], device=bb.device)
    logits = bb.logits_at(ids, None, torch.zeros(len(cols), dtype=torch.long, device=bb.device),
                          torch.tensor(cols, device=bb.device))
    return float((logits.argmax(-1).cpu() == torch.tensor(cloze.rest)).double().mean())


@torch.no_grad()
def visited_states(bb, cloze: Cloze, *, steps: int = 8) -> tuple[str, list[tuple[int, float]]]:
    """(continuation, [(k, mean log p of the still-masked new-object tokens)]) for each state the
    sampler visits with at least one of them masked; k = object slots already filled."""
    P, tgt = len(cloze.prompt), torch.tensor(cloze.new)
    states = []
    text = continuation(bb, cloze, "new", steps=steps, on_step=lambda k, x: states.append(x[0].clone()))
    out = []
    for x in states:
        slots = x[P:P + len(tgt)].cpu()
        masked = slots == bb.mask_id
        if not masked.any():
            continue
        lp = torch.log_softmax(bb.logits(x[None].to(bb.device))[0, P:P + len(tgt)].double(), -1).cpu()
        per = lp[torch.arange(len(tgt)), tgt]
        out.append((int((~masked).sum()), float(per[masked].mean())))
    return text, out


@dataclass(frozen=True)
class Reference:
    """The unedited model's continuation of every request's cloze (old-object canvas)."""
    texts: dict  # request id -> text

    @classmethod
    def of(cls, bb, cfs, *, steps: int = 8):
        return cls({cf.request_id: continuation(bb, tokenize(bb, cf), "old", steps=steps) for cf in cfs})


def score(bb, cf: Counterfact, by_id: dict, reference: Reference, *, steps: int = 8, why: bool = False) -> dict:
    """One request's metrics (module docstring) on ``bb`` as it is now; ``by_id`` maps request ids to
    `Counterfact` (for the neighbours); with ``why`` (MDLMs) also ``states``: the visited states."""
    c = tokenize(bb, cf)
    row = dict(request=cf.request_id, kind=cf.kind, bin=length_bin(len(c.new)), n_new=len(c.new),
               old=cf.old, new=cf.new)
    if why and not bb.is_causal:
        text, states = visited_states(bb, c, steps=steps)
        row["states"] = states
    else:
        text = continuation(bb, c, "new", steps=steps)
    row["text"] = text
    row["efficacy"] = float(contains(text, cf.new))
    row["old_kept"] = float(contains(text, cf.old))
    row["margin"] = object_logp(bb, c, "new") - object_logp(bb, c, "old")
    if cf.paraphrase:
        row["paraphrase"] = float(contains(continuation(bb, tokenize(bb, cf, cf.paraphrase), "new", steps=steps), cf.new))
    else:
        row["paraphrase"] = float("nan")
    same = [continuation(bb, tokenize(bb, by_id[n]), "old", steps=steps) == reference.texts[n] for n in cf.neighbours]
    row["specificity"] = float(np.mean(same)) if same else float("nan")
    row["fluency"] = rest_accuracy(bb, c)
    return row


KEY_SITES = ("last", "mention_ends", "subject", "prompt")  # where `reachable_nll` may add a free δ


def key_positions(cloze: Cloze, site: str) -> list[int]:
    """The prompt positions of ``site``: the last subject token (ROME's key), the last token of every
    subject mention, every subject token, or every prompt token."""
    if site not in KEY_SITES:
        raise ValueError(f"site={site!r}: expected one of {KEY_SITES}")
    return {"last": [cloze.last], "mention_ends": list(cloze.mention_ends), "subject": sorted(cloze.subject),
            "prompt": list(range(len(cloze.prompt)))}[site]


def reachable_nll(bb, cloze: Cloze, layer: int, site: str = "last", *, steps: int = 100, lr: float = 0.5,
                  tol: float = 1e-3) -> float:
    """The lowest mean NLL of the new object (nats/token) that Adam reaches with one free vector per
    position of ``site`` added to ``blocks.<layer>.mlp_out``: no norm bound, no KL, no prefixes.

    A diagnostic of ROME's premise on a model: if a free δ at the last subject token cannot make
    the model produce the new object, no rank-one edit keyed there can (the edit's v* is such a δ,
    bounded). MDLM: the fully masked canvas; ARM: teacher forcing. Stops early once below ``tol``."""
    pos = key_positions(cloze, site)
    if min(pos) < 0:
        raise ValueError(f"site={site!r}: the cloze has no located subject mention")
    P, n = len(cloze.prompt), len(cloze.new)
    if bb.is_causal:
        seq, look = list(cloze.prompt) + list(cloze.new[:-1]), P - 1
    else:
        seq, look = cloze.canvas(bb, "new"), P
    ids = torch.tensor([seq], device=bb.device)
    tgt = torch.tensor(cloze.new, device=bb.device)
    rows, cols = torch.zeros(len(pos), dtype=torch.long, device=bb.device), torch.tensor(pos, device=bb.device)
    delta = torch.zeros(len(pos), bb.hidden_size, device=bb.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    best = float("inf")
    for _ in range(steps + 1):
        with bb.trace(f"blocks.{int(layer)}.mlp_out", edit=lambda _n, h: h.index_put((rows, cols), delta.to(h.dtype),
                                                                                    accumulate=True)):
            logits = bb.forward_logits_at(ids, None, torch.zeros(n, dtype=torch.long), torch.arange(look, look + n))
        logp = torch.log_softmax(logits.float(), -1)
        nll = -logp[torch.arange(n, device=bb.device), tgt].mean()
        best = min(best, float(nll.detach()))
        if best < tol:
            break
        opt.zero_grad()
        nll.backward()
        opt.step()
    return best


# ----------------------------------------------------------------------------- one edit per request
VARIANTS = ("uncorrected", "corrected", "control")
METRICS = ("efficacy", "paraphrase", "specificity", "fluency", "margin")


def variant_hparams(hp, variant: str, steps: int):
    """The target-value settings of an edit variant: ``uncorrected`` = ``hp``; ``corrected`` = the
    partial-unmasking states (`editing.VHParams.v_states`) for exactly ``steps`` Adam steps;
    ``control`` = the fully masked state only, for the same ``steps`` (so a gain of ``corrected``
    over ``control`` is the states', not the extra optimisation's)."""
    if variant == "uncorrected":
        return hp
    if variant == "corrected":
        return hp.replace(v_states="partial", v_steps=steps, v_loss_threshold=0.0)
    if variant == "control":
        return hp.replace(v_states="masked", v_steps=steps, v_loss_threshold=0.0)
    raise ValueError(f"variant={variant!r}: expected one of {VARIANTS}")


def run(bb, cfs, by_id, methods: dict, *, variants=VARIANTS, correction_steps: int = 50, steps: int = 8,
        corpus=None, cache_dir=None, log=None):
    """Each request edited alone (a fresh edit of the unedited model, CounterFact's protocol) by
    each method and variant, then scored (`score`). ``methods``: {name: (build function, base
    hparams)}, e.g. {"ROME": (rome.build, ROMEHParams(layer=0))}; ``variants``: a list for every
    method or {method: list}; a causal backbone gets the ``uncorrected`` variant only (it has no
    partially masked states). Returns (rows, states): one
    row per (request, method, variant) including the ``unedited`` reference, and the visited
    states of the MDLM's edited generations, one row per state."""
    import pandas as pd

    table = variants if isinstance(variants, dict) else {name: variants for name in methods}
    for name, vs in table.items():
        if name not in methods:
            raise ValueError(f"variants for {name!r}, which is not among the methods {sorted(methods)}")
        bad = [v for v in vs if v not in VARIANTS]
        if bad:
            raise ValueError(f"{name}: unknown variant(s) {bad}; expected some of {VARIANTS}")
    needed = sorted({n for c in cfs for n in c.neighbours} | {c.request_id for c in cfs})
    reference = Reference.of(bb, [by_id[i] for i in needed], steps=steps)
    rows, states = [], []
    for c in cfs:
        r = score(bb, c, by_id, reference, steps=steps, why=True)
        st = r.pop("states", [])
        rows.append(dict(r, method="unedited", variant="unedited", nll_init=np.nan, nll=np.nan, v_steps=0))
        states += [dict(request=c.request_id, bin=r["bin"], n_new=r["n_new"], method="unedited", variant="unedited",
                        k=k, logp=lp) for k, lp in st]
        for name, (build, hp) in methods.items():
            mine = variants.get(name, ()) if isinstance(variants, dict) else variants
            for v in (mine if not bb.is_causal else [v for v in mine if v == "uncorrected"]):
                e = build(bb, requests=[request(bb, c)], hp=variant_hparams(hp, v, correction_steps), corpus=corpus,
                          cache_dir=cache_dir)
                info = (e.info.get("per_fact") or [{}])[0]
                with e.applied(bb):
                    r = score(bb, c, by_id, reference, steps=steps, why=True)
                st = r.pop("states", [])
                rows.append(dict(r, method=name, variant=v, nll_init=info.get("nll_init"), nll=info.get("nll"),
                                 v_steps=info.get("steps")))
                states += [dict(request=c.request_id, bin=r["bin"], n_new=r["n_new"], method=name, variant=v, k=k,
                                logp=lp) for k, lp in st]
        if log:
            log(c.request_id)
    return pd.DataFrame(rows), pd.DataFrame(states)


def summary(df, by, metrics=METRICS, *, seed: int = 0):
    """Mean and percentile-bootstrap 95% CI (`stats.bootstrap_ci`) of each metric per group of
    ``by``: columns ``<metric>``, ``<metric>_lo``, ``<metric>_hi`` and ``n``; NaNs (no paraphrase,
    no rest) are left out of their metric."""
    import pandas as pd

    from .stats import bootstrap_ci

    out = []
    for key, g in df.groupby(list(by), sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)), n=len(g))
        for m in metrics:
            x = g[m].dropna().to_numpy(dtype=float)
            row[m] = float(x.mean()) if len(x) else np.nan
            row[f"{m}_lo"], row[f"{m}_hi"] = bootstrap_ci(x, seed=seed) if len(x) else (np.nan, np.nan)
        out.append(row)
    return pd.DataFrame(out)
