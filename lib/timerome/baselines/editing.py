"""What the weight editors (ROME, MEMIT, AlphaEdit) share, adapted to masked diffusion.

* requests: a fact as the editors see it (prompt ids with BOS, the subject's last token, the
  answer and target ids), from `capture.cloze_rows` so the subject is found as everywhere else;
* keys k_z: the input of the MLP down-projection (``blocks.<l>.mlp_in``) at the subject's last
  token, averaged over a few context prefixes (ROME's context templates);
* the second moment C = E[k kᵀ] of ``mlp_in`` over the corpus, cached on disk;
* the target value: a residual δ added to the MLP output at the subject's last token, optimised
  so that the target text is predicted (ROME/MEMIT's ``compute_v`` / ``compute_z``);
* `Edit`: per-layer ΔW of the down-projections, applied to and restored from the weights exactly.

MDLM adaptation. A masked diffusion model reads the answer slots bidirectionally, so every
forward has an answer canvas: keys are read from ``[prompt ; MASK x |answer| ; tail]`` (the
answer masked, as at the start of generation) and the target loss is the cross-entropy of the
target tokens at the masked positions of ``[prompt ; MASK x |target| ; tail]`` (a `Request` may add
masked slots after the target: the rest of an answer; ``VHParams.v_states="partial"`` adds states
with some target tokens shown, the partial-unmasking correction). ``tail`` is
`likelihood.answer_tail` (the EOS the tiny MDLMs are trained and scored with after an answer), so
the target is optimised in the context it is scored in. A causal backbone gets no canvas for its
keys (later tokens cannot change them) and teacher forcing ``[prompt ; target]`` for the loss.
Everything here reads or edits activations through `Backbone.trace` only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..capture import DEFAULT_TARGET, cloze_rows, sync
from ..likelihood import answer_tail
from ..rng import stable_seed
from ..sampler import left_pad

__all__ = ["Request", "VHParams", "VStar", "Edit", "prepare_requests", "context_prefixes", "compute_keys", "read_at",
           "value_canvas", "second_moments", "corpus_texts", "default_cache_dir", "backbone_digest", "optimize_delta",
           "weights_applied", "check_positive", "check_layers", "MASKINGS", "DEFAULT_TARGET"]

MOM2_FORMAT, MOM2_VERSION = "timerome-mom2", 1
MASKINGS = ("none", "answer")  # what `second_moments` masks
V_STATES = ("masked", "partial")  # the target states δ is optimised on (`VHParams.v_states`)


# ----------------------------------------------------------------------------- hyperparameters
def check_positive(obj, name, *, kind=float, allow_zero=False, upper=None):
    """Validate ``obj.<name>`` as a finite int/float (> 0, or >= 0 with ``allow_zero``); a bad value
    is a ValueError naming the dataclass and the field."""
    v = getattr(obj, name)
    ok_type = (isinstance(v, int) if kind is int else isinstance(v, (int, float))) and not isinstance(v, bool)
    if not ok_type or not math.isfinite(v) or (v < 0 if allow_zero else v <= 0) or (upper is not None and v > upper):
        what = "an integer" if kind is int else "a finite number"
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{type(obj).__name__}.{name}={v!r}: must be {what} {bound}"
                         + (f" and <= {upper}" if upper is not None else ""))


def check_layers(obj, name, n_layers=None):
    """``obj.<name>`` as a non-empty tuple of distinct increasing layer indices (>= 0)."""
    v = getattr(obj, name)
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v,)
    if (isinstance(v, (str, bytes)) or not hasattr(v, "__iter__")
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)):
        raise ValueError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r}: must be layer indices (integers >= 0)")
    v = tuple(v)
    if not v or list(v) != sorted(set(v)):
        raise ValueError(f"{type(obj).__name__}.{name}={v!r}: must be non-empty, distinct and increasing")
    if n_layers is not None and v[-1] >= n_layers:
        raise ValueError(f"{type(obj).__name__}.{name}={v!r}: the backbone has {n_layers} layers")
    return v


@dataclass(frozen=True)
class VHParams:
    """The target-value optimisation and statistics settings every editor shares (module docstring).

    ROME's values (GPT-J) unless a comment says why not. The statistics are rescaled to the tiny
    corpus (1353 texts, not 100k Wikipedia texts).
    """
    v_lr: float = 0.5              # Adam step on δ (ROME/MEMIT's 0.5)
    v_steps: int = 25              # at most this many Adam steps (ROME: 20, MEMIT: 25)
    v_loss_threshold: float = 5e-2  # early exit once the total loss is below this (ROME's 5e-2)
    v_weight_decay: float = 0.5    # ROME's decay term v_weight_decay * |δ| / |h|^2
    kl_factor: float = 0.0625      # ROME/MEMIT's weight of the KL term
    clamp_norm_factor: float = 4.0  # |δ| <= clamp_norm_factor * |h| (ROME's 4)
    kl_prompt: str = "{} is a"     # ROME's essence prompt; "{}" is the subject
    n_prefixes: int = 4            # context prefixes besides the empty one (ROME: 10 generated)
    prefix_words: int = 8          # words per prefix (ROME: 5- and 10-token generations)
    mom2_n_samples: int = 1000     # corpus texts for C (of the tiny world's 1353)
    mom2_masking: str = "none"     # `second_moments`' masking: "none" (clean text, ROME's) or "answer"
    # MDLMs: "masked" optimises δ on the fully masked target only; "partial" also on partially
    # unmasked targets (the partial-unmasking correction of Park & Jo, `_target_rows`)
    v_states: str = "masked"
    v_reveal_draws: int = 2        # "partial": random reveal subsets per reveal count k >= 1 and prefix
    seed: int = 0                  # prefix, corpus and reveal sampling

    def _check_v(self):
        for name in ("v_lr", "v_weight_decay", "kl_factor", "clamp_norm_factor", "v_loss_threshold"):
            check_positive(self, name, allow_zero=name in ("v_weight_decay", "kl_factor", "v_loss_threshold"))
        check_positive(self, "v_steps", kind=int, allow_zero=True)
        check_positive(self, "n_prefixes", kind=int, allow_zero=True)
        check_positive(self, "prefix_words", kind=int)
        check_positive(self, "mom2_n_samples", kind=int)
        check_positive(self, "v_reveal_draws", kind=int)
        if self.v_states not in V_STATES:
            raise ValueError(f"{type(self).__name__}.v_states={self.v_states!r}: must be one of {V_STATES}")
        if self.mom2_masking not in MASKINGS:
            raise ValueError(f"{type(self).__name__}.mom2_masking={self.mom2_masking!r}: must be one of {MASKINGS}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"{type(self).__name__}.seed={self.seed!r}: must be an integer")
        if not isinstance(self.kl_prompt, str) or self.kl_prompt.count("{}") != 1 or not self.kl_prompt.split("{}")[1].strip():
            raise ValueError(f"{type(self).__name__}.kl_prompt={self.kl_prompt!r}: must hold '{{}}' (the subject) "
                             f"once, followed by some text (the position after the subject is read)")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Request:
    """One fact as the editors see it."""
    fact_id: str
    subject: str
    prompt: tuple      # BOS (if any) + prompt ids
    last: int          # position of the subject's last token in ``prompt``
    answer: tuple      # answer ids (the key canvas length)
    target: tuple      # target ids
    after: int = 0     # MDLMs: masked slots after the target on its canvas (the rest of an answer)


def check_requests(bb, requests) -> list:
    """``requests`` as a list of valid `Request` objects for ``bb``; a bad one is a ValueError naming it."""
    reqs = list(requests)
    if not reqs:
        raise ValueError("no requests to edit: the request list is empty")
    V = bb.embedding.num_embeddings
    for i, r in enumerate(reqs):
        if not isinstance(r, Request):
            raise TypeError(f"requests[{i}] is a {type(r).__name__}, not an editing.Request")
        for name in ("prompt", "answer", "target"):
            ids = getattr(r, name)
            if not ids or not all(isinstance(t, int) and 0 <= t < V for t in ids):
                raise ValueError(f"request {r.fact_id!r}: {name} must be a non-empty sequence of token ids < {V}")
        if not 0 <= r.last < len(r.prompt):
            raise ValueError(f"request {r.fact_id!r}: last={r.last} is outside its {len(r.prompt)}-token prompt")
        if isinstance(r.after, bool) or not isinstance(r.after, int) or r.after < 0:
            raise ValueError(f"request {r.fact_id!r}: after={r.after!r} must be an integer >= 0")
    return reqs


def prepare_requests(bb, facts, target: str = DEFAULT_TARGET, *, skip_unlocatable: bool = True, requests=None):
    """(requests, skipped fact ids). A fact whose subject is not in its question cannot be keyed:
    it raises `tracer.SubjectError`, or with ``skip_unlocatable`` is listed in ``skipped``.
    ``requests``: ready-made `Request` objects (e.g. `counterfact`'s cloze edits) used as they are,
    instead of ``facts`` and ``target``."""
    if requests is not None:
        if facts is not None:
            raise ValueError("pass facts or requests, not both")
        return check_requests(bb, requests), []
    if facts is None:
        raise ValueError("no facts to edit: pass facts or requests")
    facts = list(facts)
    if not facts:
        raise ValueError("no facts to edit: the fact list is empty")
    rows, skipped = cloze_rows(bb, facts, target, skip_unlocatable)
    if not rows:
        raise ValueError(f"none of the {len(facts)} facts has its subject in the question (skipped {skipped[:5]})")
    reqs = [Request(f.fact_id, f.subject, tuple(p), max(S), tuple(a), tuple(t)) for f, p, S, a, t in rows]
    return reqs, skipped


def _n_bos(bb, prompt) -> int:
    bos = bb.tokenizer.bos_token_id
    return 1 if bos is not None and len(prompt) and prompt[0] == bos else 0


def with_prefix(bb, prompt, prefix_ids) -> tuple[list[int], int]:
    """(BOS + prefix + prompt, shift of the prompt's positions): ROME's "{prefix}. {prompt}"."""
    n = _n_bos(bb, prompt)
    return list(prompt[:n]) + list(prefix_ids) + list(prompt[n:]), len(prefix_ids)


def canvas(bb, n: int) -> list[int]:
    """What follows the prompt when ``n`` answer tokens are masked (MDLM); nothing for causal LMs."""
    return [] if bb.is_causal else [bb.mask_id] * n + answer_tail(bb)


def corpus_texts(root=None) -> list[tuple[str, str]]:
    """(question, answer) of every fact the tiny backbones were trained on (`tiny.world.build_world`):
    this artifact's analogue of ROME's Wikipedia sample."""
    from ..tiny.world import build_world

    return [(f.question, f.answer) for f in build_world(root)]


def context_prefixes(bb, n: int, *, words: int = 8, seed: int = 0, corpus=None) -> list[list[int]]:
    """Token ids of the empty prefix and ``n`` short prefixes.

    ROME averages keys over prefixes the model generates from "The", "Therefore", ... . Here they are
    fixed and seeded instead: the first ``words`` words of the first sentence of ``n`` corpus answers
    drawn with ``seed``, closed with ". " -- text of the backbone's own training distribution, and the
    same prefixes on every run and device.
    """
    texts = corpus_texts() if corpus is None else list(corpus)
    out = [[]]
    if n:
        pick = random.Random(seed).sample(range(len(texts)), min(n, len(texts)))
        for i in pick:
            sentence = re.split(r"(?<=[.!?])\s", texts[i][1].strip())[0]
            out.append(bb.encode(" ".join(sentence.split()[:words]).rstrip(".,;:!?") + ". "))
    return out


# ----------------------------------------------------------------------------- reading activations
@torch.no_grad()
def read_at(bb, point: str, seqs, positions, *, batch_size: int = 32) -> torch.Tensor:
    """[len(seqs), d] float64 on the CPU: the hooked value of ``point`` at ``positions[i]`` of sequence i."""
    out = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths share a batch
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, att = left_pad([seqs[i] for i in idx], bb.pad_id, bb.device)
        T = ids.shape[1]
        with bb.trace(point, stop_after=point) as seen:
            bb.logits(ids, None if bool(att.all()) else att)
        h = seen[point]
        rows = torch.arange(len(idx), device=h.device)
        cols = torch.tensor([T - len(seqs[i]) + positions[i] for i in idx], device=h.device)
        for j, v in zip(idx, h[rows, cols].double().cpu()):
            out[j] = v
    return torch.stack(out)


def compute_keys(bb, reqs, layer: int, prefixes, *, batch_size: int = 32) -> torch.Tensor:
    """[n, d_in] float64 CPU: each request's key at ``layer``, the mean of ``blocks.<layer>.mlp_in``
    at the subject's last token over the prefixes, on the key canvas (module docstring)."""
    seqs, pos = [], []
    for r in reqs:
        for p in prefixes:
            s, shift = with_prefix(bb, r.prompt, p)
            seqs.append(s + canvas(bb, len(r.answer)))
            pos.append(r.last + shift)
    k = read_at(bb, f"blocks.{int(layer)}.mlp_in", seqs, pos, batch_size=batch_size)
    return k.view(len(reqs), len(prefixes), -1).mean(1)


def value_canvas(bb, r) -> list[int]:
    """The sequence the target value is optimised and read on, with no prefix."""
    return list(r.prompt) + (canvas(bb, len(r.target) + r.after) if not bb.is_causal else list(r.target[:-1]))


# ----------------------------------------------------------------------------- second moment
def default_cache_dir() -> Path:
    env = os.environ.get("TIMEROME_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "timerome" / "stats"


def backbone_digest(bb) -> str:
    """sha256 of the backbone's name and the raw bytes of every layer's down-projection weight."""
    h = hashlib.sha256(str(bb.name).encode())
    for l in range(bb.n_layers):
        w = bb.down_proj(l).weight.detach().cpu().contiguous()
        h.update(str((tuple(w.shape), str(w.dtype))).encode())
        h.update(w.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _corpus_sample(texts, n: int, seed: int):
    texts = list(texts)
    if not texts:
        raise ValueError("second moment: the corpus is empty")
    idx = sorted(random.Random(seed).sample(range(len(texts)), min(n, len(texts))))
    sample = [tuple(texts[i]) for i in idx]
    digest = hashlib.sha256(json.dumps(sample, ensure_ascii=False).encode()).hexdigest()
    return sample, digest


def _mom2_path(cache_dir, bb_digest, corpus_digest, name, layer, n, masking) -> Path:
    key = hashlib.sha256(f"{bb_digest}|{corpus_digest}|{layer}|{n}|{masking}".encode()).hexdigest()[:20]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name) or "backbone")[:60]
    return Path(cache_dir) / f"mom2_{safe}_L{layer}_n{n}_{masking}_{key}.pt"


def _load_mom2(path: Path, expect: dict, d: int) -> torch.Tensor:
    fix = "delete it to recompute"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, ...
        raise ValueError(f"{path}: unreadable second-moment cache file ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(blob, dict) or blob.get("format") != MOM2_FORMAT or blob.get("version") != MOM2_VERSION:
        raise ValueError(f"{path}: not a {MOM2_FORMAT} v{MOM2_VERSION} file; {fix}")
    for k, v in expect.items():
        if blob.get(k) != v:
            raise ValueError(f"{path}: cached {k}={blob.get(k)!r} does not match {v!r}; {fix}")
    C = blob.get("mom2")
    if not (torch.is_tensor(C) and C.dtype == torch.float64 and tuple(C.shape) == (d, d) and bool(torch.isfinite(C).all())):
        raise ValueError(f"{path}: the cached second moment is not a finite float64 [{d}, {d}] tensor; {fix}")
    return C


@torch.no_grad()
def second_moments(bb, layers, *, n_samples: int = 1000, texts=None, seed: int = 0, cache_dir=None,
                   masking: str = "none", batch_size: int = 32) -> dict[int, torch.Tensor]:
    """{layer: C_l [d_in, d_in] float64 CPU}, C_l = E[k kᵀ] of ``blocks.<l>.mlp_in`` over every token
    position of ``[BOS prompt ; answer ; EOS]`` of ``n_samples`` corpus texts (drawn with ``seed``).

    ``texts``: (question, answer) pairs; default `corpus_texts` (the tiny world). ``masking="none"``
    (default): nothing is masked, the model's training sequences in their clean state, the analogue
    of ROME's uncorrupted Wikipedia text. ``masking="answer"`` (MDLMs only): each text's answer tokens
    are masked with probability t ~ U(0, 1) drawn per text (seeded), the states the MDLM is trained,
    scored and sampled on, whose keys at masked positions the clean text never shows. Each layer is cached in ``cache_dir`` (default `default_cache_dir`)
    under a name hashing the backbone (`backbone_digest`), the sampled texts, the layer and n; layers
    missing from the cache are computed in one pass. A cache file that cannot be read or does not
    match is an error naming the file.
    """
    layers = sorted({int(l) for l in ([layers] if isinstance(layers, int) else layers)})
    if masking not in MASKINGS:
        raise ValueError(f"masking={masking!r}; expected one of {MASKINGS}")
    if masking != "none" and bb.is_causal:
        raise ValueError(f"masking={masking!r}: {bb.name} is causal and has no masked states")
    for l in layers:
        bb.down_proj(l)  # a bad layer fails before any work
    sample, corpus_digest = _corpus_sample(corpus_texts() if texts is None else texts, n_samples, seed)
    n = len(sample)
    bb_digest = backbone_digest(bb)
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    d = bb.down_proj(layers[0]).in_features
    out, todo = {}, []
    for l in layers:
        path = _mom2_path(cache_dir, bb_digest, corpus_digest, bb.name, l, n, masking)
        expect = dict(backbone=str(bb.name), backbone_digest=bb_digest, corpus_digest=corpus_digest, layer=l, n_samples=n,
                      masking=masking)
        if path.exists():
            out[l] = _load_mom2(path, expect, bb.down_proj(l).in_features)
        else:
            todo.append((l, path, expect))
    if todo:
        points = [f"blocks.{l}.mlp_in" for l, _, _ in todo]
        acc = {l: torch.zeros(bb.down_proj(l).in_features, bb.down_proj(l).in_features, dtype=torch.float64,
                              device=bb.device) for l, _, _ in todo}
        tail = [] if bb.eos_id is None else [int(bb.eos_id)]
        seqs = []
        for q, a in sample:
            p, ans = bb.prompt_ids(q), bb.answer_ids(a)
            if masking == "answer":
                g = torch.Generator().manual_seed(stable_seed(seed, "mom2-mask", q, a, bits=63))
                t = float(torch.rand((), generator=g))
                ans = [bb.mask_id if m else x for x, m in zip(ans, (torch.rand(len(ans), generator=g) < t).tolist())]
            seqs.append(p + ans + tail)
        seqs.sort(key=len)
        count = 0
        for start in range(0, len(seqs), batch_size):
            ids, att = left_pad(seqs[start:start + batch_size], bb.pad_id, bb.device)
            keep = att.bool()
            with bb.trace(points, stop_after=points[-1]) as seen:
                bb.logits(ids, None if bool(keep.all()) else att)
            for (l, _, _), p in zip(todo, points):
                k = seen[p][keep].double()
                acc[l] += k.T @ k
            count += int(keep.sum())
        cache_dir.mkdir(parents=True, exist_ok=True)
        for l, path, expect in todo:
            C = (acc[l] / count).cpu()
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            torch.save({"format": MOM2_FORMAT, "version": MOM2_VERSION, **expect, "n_tokens": count, "mom2": C}, tmp)
            os.replace(tmp, path)  # atomic: a reader never sees half a file
            out[l] = C
    return out


# ----------------------------------------------------------------------------- target value
@dataclass
class VStar:
    """The optimised residual of one request: δ [H] float64 CPU, the MLP output h it is added to
    (on the first prefix's row: the empty prefix of `context_prefixes`), the target NLL (mean per
    token and prefix) at δ = 0 and at the returned δ, the KL term there and the Adam steps taken."""
    delta: torch.Tensor
    h: torch.Tensor
    nll_init: float
    nll: float
    kl: float
    steps: int


def reveal_sets(n: int, draws: int, seed: int, *key) -> list[tuple[int, ...]]:
    """The partial-unmasking states of an ``n``-token target: for each reveal count k = 0 .. n-1
    the target positions shown, ``()`` once for k = 0 and ``draws`` subsets of size k drawn
    uniformly (seeded by ``seed`` and ``key``) for each k >= 1. A state with every token shown has
    nothing left to score and is never drawn."""
    out = [()]
    for k in range(1, n):
        g = random.Random(stable_seed(seed, "reveal", n, k, *key, bits=63))
        out += [tuple(sorted(g.sample(range(n), k))) for _ in range(draws)]
    return out


def _target_rows(bb, r, prefixes, hp=None):
    """Per prefix (and, with ``hp.v_states == "partial"``, per reveal state of `reveal_sets`):
    (sequence, lookup position, [(position, token)] scored for the target). The fully masked
    state comes first for every prefix."""
    partial = hp is not None and hp.v_states == "partial"
    if partial and bb.is_causal:
        raise ValueError(f"v_states='partial' is for masked diffusion backbones; {bb.name} is causal "
                         "(its target is teacher-forced, never partially masked)")
    rows = []
    for i, p in enumerate(prefixes):
        s, shift = with_prefix(bb, r.prompt, p)
        P = len(s)
        if bb.is_causal:  # teacher forcing: position i predicts token i+1
            rows.append((s + list(r.target[:-1]), r.last + shift, [(P - 1 + j, t) for j, t in enumerate(r.target)]))
            continue
        # the target masked (position i scores the token at i), then the rest of the answer masked
        states = reveal_sets(len(r.target), hp.v_reveal_draws, hp.seed, r.fact_id, i) if partial else [()]
        for shown in states:
            seq = s + canvas(bb, len(r.target) + r.after)
            for j in shown:
                seq[P + j] = r.target[j]
            rows.append((seq, r.last + shift, [(P + j, t) for j, t in enumerate(r.target) if j not in shown]))
    return rows


def _kl_row(bb, r, template):
    """("{subject} is a" ids, subject's last position, position whose distribution the KL holds):
    the next-token distribution after the subject (causal), or the masked-token distribution of
    the token after the subject, masked (MDLM)."""
    pre, post = template.split("{}")
    bos = [] if bb.tokenizer.bos_token_id is None else [bb.tokenizer.bos_token_id]
    head = bos + (bb.encode(pre) if pre else []) + bb.encode(r.subject)
    rest = bb.encode(post)
    last = len(head) - 1
    if bb.is_causal:
        return head + rest, last, last
    return head + [bb.mask_id] + rest[1:], last, last + 1


def optimize_delta(bb, r: Request, layer: int, hp: VHParams, prefixes) -> VStar:
    """ROME's ``compute_v``: Adam on δ added (through `Backbone.trace`) to ``blocks.<layer>.mlp_out``
    at the subject's last token of every prefixed target row and of the KL row, minimising

        mean NLL(target) + kl_factor * KL(p_δ || p_0 on the KL row) + v_weight_decay * |δ| / |h|^2,

    ‖δ‖ clamped to clamp_norm_factor·‖h‖ after each step (h: the MLP output at that token with no
    prefix). ``hp.v_states == "partial"`` (MDLMs) adds, per prefix, the partially unmasked target
    states of `reveal_sets`; the NLL is then each row's mean over its still-masked target tokens,
    averaged over rows. Deterministic (δ starts at 0, reveal subsets are seeded). The weights are
    never touched; gradients are taken with respect to δ only."""
    point = f"blocks.{int(layer)}.mlp_out"
    rows = _target_rows(bb, r, prefixes, hp)
    kl_seq, kl_look, kl_pos = _kl_row(bb, r, hp.kl_prompt)
    seqs = [s for s, _, _ in rows] + [kl_seq]
    ids, att = left_pad(seqs, bb.pad_id, bb.device)
    T, dev = ids.shape[1], bb.device
    off = [T - len(s) for s in seqs]
    look_r = torch.arange(len(seqs), device=dev)
    look_c = torch.tensor([o + p for o, p in zip(off, [lk for _, lk, _ in rows] + [kl_look])], device=dev)
    lab = [(i, off[i] + pos, tok) for i, (_, _, labels) in enumerate(rows) for pos, tok in labels]
    lab_r, lab_c, lab_t = (torch.tensor(x, device=dev) for x in zip(*lab))
    n_rows, n_tgt = len(rows), len(r.target)
    read_r = torch.cat([lab_r, torch.tensor([n_rows], device=dev)])  # the labels' positions, then the KL row's
    read_c = torch.cat([lab_c, torch.tensor([off[n_rows] + kl_pos], device=dev)])
    # "partial": each row's mean NLL over its still-masked tokens, averaged over rows
    lab_w = (torch.tensor([1.0 / (n_rows * len(rows[i][2])) for i, _, _ in lab], device=dev)
             if hp.v_states == "partial" else None)
    attention = None if bool(att.all()) else att
    H = bb.hidden_size
    delta = torch.zeros(H, device=dev, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    state = {}

    def add(_name, h):
        if "h" not in state:  # the first forward runs at δ = 0: the unedited output
            state["h"] = h[look_r[0], look_c[0]].detach().float()
        return h.index_put((look_r, look_c), delta.to(h.dtype).expand(len(seqs), H), accumulate=True)

    nll_init = nll = kl = float("nan")
    it = 0
    for it in range(hp.v_steps + 1):
        with bb.trace(point, edit=add):
            logits = bb.forward_logits_at(ids, attention, read_r, read_c)
        logp = torch.log_softmax(logits[:-1].float(), -1)
        picked = logp.gather(1, lab_t[:, None])[:, 0]
        nll_t = -picked.sum() / (n_rows * n_tgt) if lab_w is None else -(picked * lab_w).sum()
        kl_logp = torch.log_softmax(logits[-1].float(), -1)
        if "kl0" not in state:
            state["kl0"] = kl_logp.detach()
        kl_t = F.kl_div(state["kl0"], kl_logp, log_target=True, reduction="sum")  # KL(p_δ || p_0)
        h0 = state["h"]
        loss = nll_t + hp.kl_factor * kl_t + hp.v_weight_decay * delta.norm() / h0.norm().clamp_min(1e-12) ** 2
        nll, kl = float(nll_t.detach()), float(kl_t.detach())
        if it == 0:
            nll_init = nll
        if it == hp.v_steps or float(loss.detach()) < hp.v_loss_threshold:
            break
        (grad,) = torch.autograd.grad(loss, [delta])
        delta.grad = grad
        opt.step()
        with torch.no_grad():  # project back into the ball ‖δ‖ <= clamp_norm_factor·‖h‖
            max_norm = hp.clamp_norm_factor * h0.norm()
            if delta.norm() > max_norm:
                delta.mul_(max_norm / delta.norm())
    return VStar(delta.detach().double().cpu(), state["h"].double().cpu(), nll_init, nll, kl, it)


# ----------------------------------------------------------------------------- applying ΔW
@contextlib.contextmanager
def weights_applied(bb, deltas: dict):
    """While active, ``bb.down_proj(l).weight`` holds ``(W_l + ΔW_l)`` (the sum in float64, cast to
    the weight's dtype); on exit, also on error, each weight gets its original values back bitwise."""
    saved = []
    try:
        for l, dW in deltas.items():
            w = bb.down_proj(int(l)).weight
            if tuple(dW.shape) != tuple(w.shape):
                raise ValueError(f"ΔW of layer {l} has shape {tuple(dW.shape)}, the weight {tuple(w.shape)}")
            orig = w.detach().clone()
            saved.append((w, orig))
            with torch.no_grad():
                w.copy_((orig.double() + dW.to(device=w.device, dtype=torch.float64)).to(w.dtype))
        yield bb
    finally:
        with torch.no_grad():
            for w, orig in reversed(saved):
                w.copy_(orig)


@dataclass(frozen=True)
class Edit:
    """A weight editor's result: ΔW per layer (float64 CPU, the down-projection's shape
    [out, in]) and how it was built. ``applied(bb)`` is a re-enterable context manager."""
    method: str
    backbone: str
    deltas: dict           # {layer: ΔW}
    fact_ids: tuple
    skipped: tuple
    hparams: object
    target: str
    build_s: float
    info: dict = field(default_factory=dict, compare=False)

    @property
    def layers(self) -> tuple:
        return tuple(sorted(self.deltas))

    def _check(self, bb):
        if bb.name != self.backbone:
            raise ValueError(f"this {self.method} edit was built on {self.backbone!r}, not {bb.name!r}")

    def applied(self, bb):
        """Context manager: the edited weights while active, the original ones (bitwise) after."""
        self._check(bb)
        return weights_applied(bb, self.deltas)

    @torch.no_grad()
    def apply_(self, bb):
        """Add ΔW to the weights for good (for a copy of the backbone that stays edited)."""
        self._check(bb)
        for l, dW in self.deltas.items():
            w = bb.down_proj(int(l)).weight
            w.copy_((w.double() + dW.to(device=w.device, dtype=torch.float64)).to(w.dtype))
        return bb

    def norms(self) -> dict:
        """{layer: Frobenius norm of ΔW}."""
        return {l: float(d.norm()) for l, d in sorted(self.deltas.items())}

    def __repr__(self):
        return (f"Edit({self.method}, {self.backbone!r}, layers={self.layers}, facts={len(self.fact_ids)}, "
                f"skipped={len(self.skipped)}, build_s={self.build_s:.2f})")


def timer():
    """A clock that waits for the device: ``t = timer(); ...; t(device)`` -> seconds."""
    t0 = time.perf_counter()

    def elapsed(device=None):
        if device is not None:
            sync(device)
        return time.perf_counter() - t0
    return elapsed
