"""What each method costs to build on the forget set: wall-clock and extra peak memory (Fig. 5, cost).

Every method is measured in its own fresh process (`measure` behind ``python -m
timerome.baselines.cost``), so one method's allocations never count against another's. In that
process the backbone and the data are loaded and the forget set is scored once (the no-edit
reference); then freed memory is handed back to the OS (glibc ``malloc_trim``), the resident
memory is read, the edit is built while a thread samples the resident set, and the extra memory is
the highest sample minus the reading before the build. On GPU it is the allocator's peak
(``torch.cuda.max_memory_allocated``, reset before the build) minus what was allocated before.
``d_forget_lp`` is the forget set's mean ELBO change made by the edit, scored in the same process
(a few Monte-Carlo draws: a sanity column, Table I has the real numbers).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

KINDS = {"timerome": "inference", "act_steer": "inference", "rmu_like": "inference",
         "ga": "gradient", "gd": "gradient", "npo": "gradient", "simnpo": "gradient", "rmu": "gradient",
         "adaptive_rmu": "gradient", "rome": "weight_edit", "memit": "weight_edit", "alphaedit": "weight_edit"}
METHODS = tuple(KINDS)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _trim() -> None:
    """Hand freed heap memory back to the OS, so the resident set is what is live (glibc only)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager: ``extra`` = peak memory inside the block minus the memory before it (bytes);
    resident set sampled every ``interval`` s on CPU, the allocator's peak on GPU."""

    def __init__(self, device, interval: float = 0.002):
        self.cuda, self.device, self.interval = torch.device(device).type == "cuda", device, interval

    def __enter__(self):
        import threading

        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        _trim()
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, _rss_bytes())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.extra = max(0, torch.cuda.max_memory_allocated(self.device) - self.base)
            return False
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.extra = max(0, self.peak - self.base)
        return False


def forget_lp(bb, facts, edit=None, n_mc: int = 4) -> float:
    from ..likelihood import answer_logprob
    from ..metrics import _enter

    with _enter(edit):
        return float(answer_logprob(bb, [f.question for f in facts], [f.answer for f in facts], n_mc=n_mc).mean())


def measure(method: str, backbone: str = "tiny-mdlm", *, forget_split: str = "forget01", hparams_file=None,
            load_kwargs=None, root=None, seed: int = 0, overrides=None) -> dict:
    """Build ``method``'s edit once on ``forget_split`` in this process; the cost row (see module doc)."""
    import timerome
    from .. import data, splits
    from . import builders

    if method not in KINDS:
        raise ValueError(f"method={method!r}; expected one of {METHODS}")
    torch.manual_seed(seed)
    bb = timerome.load_backbone(backbone, **(load_kwargs or {}))
    forget = data.load_tofu(forget_split, root)
    ctx = builders.Context(bb, forget, hparams_file=hparams_file, root=root, seed=seed, in_place=True,
                           overrides=dict(overrides or {}))
    ctx.prepare(method)  # data for the build (retain / anchor facts): loaded before the clock starts
    before = forget_lp(bb, forget)
    with PeakMemory(bb.device) as mem:
        t0 = time.perf_counter()
        built = builders.build(method, ctx)
        if torch.device(bb.device).type == "cuda":
            torch.cuda.synchronize(bb.device)
        build_s = time.perf_counter() - t0
    extra = mem.extra
    after = forget_lp(built.backbone, forget, built.edit)  # in_place: the trained model is built.backbone
    return {"method": method, "label": built.label, "kind": KINDS[method], "converged": bool(built.converged),
            "install_s": build_s, "d_forget_lp": after - before, "extra_mem_gb": extra / 2 ** 30,
            "device": str(bb.device), "backbone": backbone, "threads": torch.get_num_threads()}


def synthetic_backbone(hidden: int = 4096, d_mlp: int = 12288, n_heads: int = 32, n_blocks: int = 1,
                       vocab: int = 126464, dtype=torch.float32):
    """A randomly initialised LLaDA-8B-shaped stack of ``n_blocks`` blocks (hidden 4096, SwiGLU MLP
    12288, 32 heads, LLaDA's vocabulary) with the tiny tokenizer: real shapes, no real weights --
    enough to measure memory at the paper's size."""
    import timerome
    from ..backbones import Backbone
    from ..families import FAMILIES
    from ..tiny.model import TinyConfig, TinyLM

    tiny = timerome.load_backbone("tiny-mdlm")
    torch.manual_seed(0)
    model = TinyLM(TinyConfig(vocab_size=vocab, n_layers=n_blocks, d_model=hidden, n_heads=n_heads, d_mlp=d_mlp))
    return Backbone(model.to(dtype), tiny.tokenizer, FAMILIES["tiny"], mask_id=tiny.mask_id, name=f"synthetic-{hidden}",
                    prompt_template=tiny.prompt_template, answer_prefix=tiny.answer_prefix)


def measure_synthetic(method: str, *, n_blocks: int = 1, facts: int = 8, root=None, **shape) -> dict:
    """Extra peak memory of one build step of ``method`` ("timerome" or a gradient method: one LoRA
    step on ``facts`` forget facts) on `synthetic_backbone`, in this process (see `measure`)."""
    from .. import data
    from ..memory import EditMemory
    from .unlearn import UnlearnHParams, unlearn

    if method != "timerome" and KINDS.get(method) != "gradient":
        raise ValueError(f"measure_synthetic: method={method!r}; expected timerome or a gradient method")
    bb = synthetic_backbone(n_blocks=n_blocks, **shape)
    forget = data.load_tofu("forget01", root)[:facts]
    import peft  # noqa: F401  (not counted)
    with PeakMemory(bb.device) as mem:
        t0 = time.perf_counter()
        if method == "timerome":
            EditMemory.build(bb, forget, 0, lam_relative=1.0, alpha=2.0, q=4, skip_unlocatable=True)
        else:
            unlearn(bb, forget, forget, UnlearnHParams(method, epochs=1, batch_size=facts, drift_stop=None),
                    validation_retain=[], in_place=True)
        build_s = time.perf_counter() - t0
    return {"method": method, "hidden": bb.hidden_size, "n_blocks": n_blocks, "facts": facts,
            "weights_gb": sum(p.numel() * p.element_size() for p in bb.model.parameters()) / 2 ** 30,
            "extra_mem_gb": mem.extra / 2 ** 30, "build_s": build_s}


def _run_json(cmd, what, timeout_s):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"{what}: the measuring process failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cost_table(methods=METHODS, backbone: str = "tiny-mdlm", *, forget_split: str = "forget01", hparams_file=None,
               load_kwargs=None, overrides=None, threads: int | None = None, timeout_s: float = 1800, log=print):
    """One `measure` per method, each in a fresh ``python -m timerome.baselines.cost`` process."""
    import pandas as pd

    rows = []
    for m in methods:
        cmd = [sys.executable, "-m", "timerome.baselines.cost", m, "--backbone", str(backbone),
               "--forget-split", forget_split, "--load-kwargs", json.dumps(load_kwargs or {}),
               "--overrides", json.dumps(overrides or {})]
        if hparams_file is not None:
            cmd += ["--hparams-file", str(hparams_file)]
        if threads:
            cmd += ["--threads", str(threads)]
        row = _run_json(cmd, f"cost of {m}", timeout_s)
        if log:
            log(f"{row['label']}: build {row['install_s']:.2f} s, extra peak {row['extra_mem_gb'] * 2 ** 10:.1f} MiB, "
                f"ΔForgetLP {row['d_forget_lp']:+.2f}")
        rows.append(row)
    return pd.DataFrame(rows)


def synthetic_memory(methods=("timerome", "npo"), *, n_blocks=(1, 2), facts: int = 8, threads=None,
                     timeout_s: float = 3600) -> "pd.DataFrame":
    """`measure_synthetic` for each method and depth, each in its own process."""
    import pandas as pd

    rows = []
    for m in methods:
        for n in n_blocks:
            cmd = [sys.executable, "-m", "timerome.baselines.cost", m, "--synthetic-blocks", str(n), "--facts", str(facts)]
            if threads:
                cmd += ["--threads", str(threads)]
            rows.append(_run_json(cmd, f"synthetic memory of {m} ({n} blocks)", timeout_s))
    return pd.DataFrame(rows)


def ratios(costs) -> dict:
    """TimeROME against the strongest converged gradient baseline (the converged gradient run with
    the most negative ``d_forget_lp``): build-time speedup, memory share, and a sentence."""
    ours = costs[costs.method == "timerome"]
    grad = costs[(costs.kind == "gradient") & costs.converged.astype(bool)]
    if ours.empty or grad.empty:
        raise ValueError("ratios: the cost table needs a timerome row and a converged gradient row")
    ours, base = ours.iloc[0], grad.loc[grad.d_forget_lp.idxmin()]
    speedup = base.install_s / ours.install_s
    share = ours.extra_mem_gb / base.extra_mem_gb if base.extra_mem_gb > 0 else float("nan")
    mib = lambda gb: f"{gb * 2 ** 10:.1f} MiB"
    sentence = (f"Cost: TimeROME builds its edit in {ours.install_s:.3g} s, {speedup:.0f}x faster than the strongest "
                f"converged gradient baseline, {base.label} ({base.install_s:.3g} s, ΔForgetLP {base.d_forget_lp:+.2f} vs "
                f"TimeROME's {ours.d_forget_lp:+.2f}; paper: 4-14x), and adds {mib(ours.extra_mem_gb)} of peak memory "
                f"against {base.label}'s {mib(base.extra_mem_gb)} ({100 * share:.1f}%; paper: 0 vs 35-51 GB on an 8B model).")
    return {"timerome_s": float(ours.install_s), "baseline": base.label, "baseline_s": float(base.install_s),
            "speedup": float(speedup), "timerome_mem_gb": float(ours.extra_mem_gb),
            "baseline_mem_gb": float(base.extra_mem_gb), "memory_share": float(share), "sentence": sentence}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m timerome.baselines.cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method", choices=METHODS)
    ap.add_argument("--backbone", default="tiny-mdlm")
    ap.add_argument("--forget-split", default="forget01")
    ap.add_argument("--hparams-file", default=None)
    ap.add_argument("--load-kwargs", default="{}", help="JSON, e.g. '{\"device\": \"cuda\"}'")
    ap.add_argument("--overrides", default="{}", help="JSON: per method, keyword overrides of its defaults")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--synthetic-blocks", type=int, default=0,
                    help="measure on an LLaDA-8B-shaped random stack of this many blocks instead (memory only)")
    ap.add_argument("--facts", type=int, default=8, help="forget facts of the synthetic measurement")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.synthetic_blocks:
        print(json.dumps(measure_synthetic(args.method, n_blocks=args.synthetic_blocks, facts=args.facts)))
        return
    row = measure(args.method, args.backbone, forget_split=args.forget_split,
                  hparams_file=Path(args.hparams_file) if args.hparams_file else None,
                  load_kwargs=json.loads(args.load_kwargs), overrides=json.loads(args.overrides))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
