"""A one-command check that a backbone works with this artifact, before any long run::

    python -m timerome.smoke GSAI-ML/LLaDA-8B-Base --trust-remote-code --device cuda --dtype bfloat16
    python -m timerome.smoke tiny-dream

Load it, sample one answer, trace one fact (Eq. 2-4), build and install a 4-fact edit memory
(Eq. 11-12) and check that the edit changes the logits and that leaving it restores the model bitwise
(same weights, no hooks, same logits). Exit status 0 when every step passed; a missing checkpoint is a
one-line error naming it.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time

import torch


class SmokeFailure(RuntimeError):
    """A step of the smoke check failed; the message names the step."""


def _digest(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def smoke(name: str, *, root=None, steps: int = 8, lam_relative: float = 10.0, log=print, **load_kwargs) -> dict:
    """Run every step on ``name``; returns the timings. Raises `SmokeFailure` or the loader's error."""
    import timerome
    from . import hooks, metrics, splits, tracer
    from .memory import EditMemory

    t = {}
    t0 = time.perf_counter()
    try:
        bb = timerome.load_backbone(name, **load_kwargs)
    except (OSError, FileNotFoundError) as e:
        raise SmokeFailure(f"load: cannot load {name!r}: its weights are not here and the hub is not reachable "
                           f"(or the id is wrong) -- {type(e).__name__}: {str(e).splitlines()[0]}") from None
    t["load_s"] = time.perf_counter() - t0
    log(f"loaded {bb}")
    facts = splits.validation_facts(4, root)  # TOFU facts whose subject is in the question
    t0 = time.perf_counter()
    gen = metrics.generate_answers(bb, [facts[0].question], gen_length=32, steps=steps)[0]
    t["sample_s"] = time.perf_counter() - t0
    log(f"sample: {facts[0].question!r} -> {bb.tokenizer.decode(gen).strip()!r}")
    t0 = time.perf_counter()
    res = tracer.trace_tie(bb, facts[:1], steps=steps, batch_size=8)
    layer = res.select().paper.layer
    t["trace_s"] = time.perf_counter() - t0
    log(f"trace: {res.tie.shape[1:]} (modules, layers, steps); Eq. 5 layer {layer}")
    before, probe = _digest(bb.model), tracer.prepare_prompt(bb, facts[0]).ids[None].to(bb.device)
    with torch.no_grad():
        clean = bb.forward_logits(probe)
    t0 = time.perf_counter()
    mem = EditMemory.build(bb, facts, layer, lam_relative=lam_relative, alpha=2.0, q=4, skip_unlocatable=True)
    t["build_s"] = time.perf_counter() - t0
    with mem.installed(bb), torch.no_grad():
        edited = bb.forward_logits(probe)
    if torch.equal(edited, clean):
        raise SmokeFailure(f"install: the {len(mem)}-fact memory at layer {layer} left the logits unchanged")
    with torch.no_grad():
        after = bb.forward_logits(probe)
    if hooks.has_hooks(bb.model):
        raise SmokeFailure("restore: hooks are left on the model after the memory was removed")
    if _digest(bb.model) != before or not torch.equal(after, clean):
        raise SmokeFailure("restore: the weights or the logits differ after the memory was removed")
    log(f"memory: {len(mem)} facts at layer {layer}, installed (logits changed) and removed (bitwise restored)")
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a tiny model name, hub id or checkpoint directory")
    ap.add_argument("--trust-remote-code", action="store_true")
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--family", help="override the inferred family (e.g. llama for DiffuLLaMA)")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    kw = {k: v for k, v in dict(device=args.device, dtype=args.dtype, family=args.family).items() if v is not None}
    if args.trust_remote_code:
        kw["trust_remote_code"] = True
    try:
        t = smoke(args.model, steps=args.steps, **kw)
    except SmokeFailure as e:
        print(f"smoke check FAILED for {args.model}: {e}", file=sys.stderr)
        return 1
    print(f"smoke check passed for {args.model}: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
