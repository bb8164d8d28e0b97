"""Benchmarks (timing goals live here, never in unit tests).

    python -m timerome.bench likelihood [--backbone tiny-mdlm] [--first 0] [--n 400] [--seeds 20] [--no-eos-tail]

``likelihood``: throughput of `answer_logprob` at n_mc = 16 (answers scored per second), and
the standard error of the estimate -- the default (mask ratio stratified at the quantiles of
Beta(0.6, 0.8), one offset per stratum, balanced positions), the same with one shared offset
(the previous default), LLaDA's scheme (even strata, one shared offset, independent positions),
and plain i.i.d. mask ratios -- measured as the spread of the estimate over independent seeds,
per example (target: the default SE ≤ 0.7 × the i.i.d. SE), over forget10[first : first + n] and
per block of ``--block`` facts (the Beta parameters were chosen on facts 100-199, so the other
blocks are facts they were not tuned on). ``--no-eos-tail`` scores with nothing after the answer.

    python -m timerome.bench tracer [--backbone tiny-mdlm] [--n 8] [--naive-n 2] [--steps 8]

``tracer``: `trace_tie` on the F_v facts: sequence-forwards and wall time per fact versus the
naive tracer (every patch trajectory run alone from step 0; its wall time measured on the first
``naive-n`` facts, against the tracer's on the same facts), target ≤ 0.55 × the naive forwards;
and throughput as a fraction of plain batched forwards of exactly the same batch shapes (the
recorded model calls replayed through `Backbone.logits` with no hooks, scoring or commits),
target ≥ 70%.

    python -m timerome.bench memory [--backbone tiny-mdlm] [--sizes 10,100,400,1000,4000]

``memory``: the edit memory (`timerome.memory`). Install time vs |F| split into capture (real
TOFU facts) and solve, capture throughput as a fraction of plain batched forwards over the same
rows and batches (target ≥ 70%; also without the early exit after the hooked layer), solve share
of install time (target < 5% up to |F| = 4000; also on synthetic keys and for the |F|×|F| Gram
of Eq. 11); sampling time with |F| = 400, q = 4 installed vs none (target ≤ 1.05×; wall clock
and the hook's own time); one streaming insert at |F| = 1000 vs a rebuild (target ≥ 20×).

    python -m timerome.bench streaming [--backbone tiny-mdlm] [--facts 1000] [--repeats 101] [--hidden 4096]

``streaming``: that last part alone. Each insert is also set against its memory-traffic floor:
W (|F|×H float64) is read and written once per insert, so floor_s = 2·|F|·H·8 bytes over the
memory bandwidth, measured in the same run as the best of a few copies of a 256 MB tensor.

    python -m timerome.bench cost [--backbone tiny-mdlm] [--methods timerome,npo,...] [--synthetic-blocks 1,2]

``cost``: TimeROME's build against every gradient baseline's on forget01, each in its own process
(`timerome.baselines.cost`), as ratios against the strongest converged gradient baseline: build
speedup (target >= 20x) and extra peak memory share (target <= 2%); then the extra memory of one
build step at the paper's size (LLaDA-8B-shaped random blocks, 1 and 2 deep, extrapolated linearly
to 32 blocks).
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch


def bench_likelihood(backbone_name="tiny-mdlm", n=400, seeds=20, n_mc=16, split="forget10", threads=None, first=0,
                     block=100, eos_tail=True):
    import timerome
    from timerome import data, likelihood

    if threads:
        torch.set_num_threads(threads)
    bb = timerome.load_backbone(backbone_name)
    split_facts = data.load_tofu(split)
    facts = split_facts[first:first + n]
    if first < 0 or n < 1 or not facts:
        raise ValueError(f"{split} has {len(split_facts)} facts: first={first}, n={n} selects none")
    qs, ans = [f.question for f in facts], [f.answer for f in facts]
    n = len(facts)
    likelihood.answer_logprob(bb, qs[:4], ans[:4], n_mc=n_mc, eos_tail=eos_tail)  # warm-up
    t0 = time.perf_counter()
    likelihood.answer_logprob(bb, qs, ans, n_mc=n_mc, seed=0, eos_tail=eos_tail)
    seconds = time.perf_counter() - t0
    variants = {"default": {}, "shared_offset": dict(shared_offset=True),  # the previous default
                "llada": dict(strata=None, shared_offset=True, balanced=False),  # even strata, one offset
                "iid": dict(stratified=False)}
    est = {v: torch.stack([likelihood.answer_logprob(bb, qs, ans, n_mc=n_mc, seed=k, eos_tail=eos_tail, **kw)
                           for k in range(seeds)]).numpy() for v, kw in variants.items()}
    se = {v: e.std(0, ddof=1) for v, e in est.items()}
    ok = se["iid"] > 0
    out = {"backbone": backbone_name, "split": split, "first": first, "n_examples": n, "n_mc": n_mc, "seeds": seeds,
           "eos_tail": eos_tail, "threads": torch.get_num_threads(), "seconds": round(seconds, 3),
           "answers_per_s": round(n / seconds, 2), "forward_rows_per_s": round(n * n_mc / seconds, 1)}
    for v in variants:
        out[f"se_{v}_mean"] = float(se[v].mean())
        out[f"mean_estimate_{v}"] = float(est[v].mean())
    for v in ("default", "shared_offset", "llada"):  # the target: default SE <= 0.7 x the i.i.d. SE
        out[f"se_ratio_{v}_vs_iid"] = float(se[v].mean() / se["iid"].mean())
        out[f"se_ratio_{v}_vs_iid_median_per_example"] = float(np.median(se[v][ok] / se["iid"][ok]))
        out[f"se_ratio_{v}_vs_iid_by_block"] = {
            f"{first + b}-{first + min(b + block, n) - 1}": float(se[v][b:b + block].mean() / se["iid"][b:b + block].mean())
            for b in range(0, n, block)}
    return out


def bench_tracer(backbone_name="tiny-mdlm", n=8, naive_n=2, steps=8, repeats=3, threads=None):
    import timerome
    from timerome import splits, tracer

    if threads:
        torch.set_num_threads(threads)
    bb = timerome.load_backbone(backbone_name)
    facts = splits.validation_facts(n)
    tracer.trace_tie(bb, facts[:1], steps=2, modules=("resid",))  # warm-up
    shapes, plain_logits = [], bb.logits
    bb.logits = lambda ids, attention_mask=None: shapes.append(tuple(ids.shape)) or plain_logits(ids, attention_mask)
    res = tracer.trace_tie(bb, facts, steps=steps)
    bb.logits = plain_logits
    inputs = {s: torch.randint(2, len(bb.tokenizer), s) for s in set(shapes)}
    seconds, plain_seconds = [], []  # alternated and the best of each kept: the machine may be shared
    for _ in range(repeats):
        t0 = time.perf_counter()
        tracer.trace_tie(bb, facts, steps=steps)
        seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for s in shapes:
            bb.logits(inputs[s])
        plain_seconds.append(time.perf_counter() - t0)
    seconds, plain_seconds = min(seconds), min(plain_seconds)
    # the naive tracer, on the first naive_n facts: each trajectory alone, from step 0
    t0 = time.perf_counter()
    few = tracer.trace_tie(bb, facts[:naive_n], steps=steps, sigma=res.settings["sigma"])
    few_seconds = time.perf_counter() - t0
    names = [f"{m}.{l}" for m in res.modules for l in range(bb.n_layers)]
    naive = {"forwards": 0, "calls": 0}
    t0 = time.perf_counter()
    for f in facts[:naive_n]:
        p = tracer.prepare_prompt(bb, f)
        noise = res.settings["sigma"] * tracer.draw_noise(bb, f, p)
        clean = tracer.run_trajectory(bb, p, steps=steps, capture=names, counts=naive)
        tracer.run_trajectory(bb, p, steps=steps, noise=noise, counts=naive)
        for name, k in itertools.product(names, range(steps)):
            tracer.run_trajectory(bb, p, steps=steps, noise=noise, patches={(name, k): clean.captured[name][k]},
                                  counts=naive)
    naive_seconds = time.perf_counter() - t0
    c = res.counts
    return {"backbone": backbone_name, "facts": res.fact_ids, "steps": steps, "layers": bb.n_layers,
            "modules": list(res.modules), "threads": torch.get_num_threads(), "repeats": repeats,
            "forwards_per_fact": c["forwards"] / n, "naive_forwards_per_fact": c["naive_forwards"] / n,
            "forward_ratio": c["forwards"] / c["naive_forwards"],  # target <= 0.55
            "prefix_sharing_only_ratio": c["prefix_shared_forwards"] / c["naive_forwards"],
            "naive_forwards_counted": naive["forwards"], "naive_forwards_expected": few.counts["naive_forwards"],
            "rows_per_call": (c["forwards"] - 2 * (steps + 1) * n) / (c["calls"] - 2 * (steps + 1) * n),
            "seconds_per_fact": seconds / n, "naive_seconds_per_fact": naive_seconds / naive_n,
            "tracer_seconds_per_fact_same_facts": few_seconds / naive_n,
            "wall_ratio_same_facts": few_seconds / naive_seconds,
            "forwards_per_s": c["forwards"] / seconds, "plain_forwards_per_s": c["forwards"] / plain_seconds,
            "throughput_fraction": plain_seconds / seconds}  # target >= 0.70


def _memory_facts(n, split="full"):
    """n TOFU facts whose subject is in the question, cycling through the split when it has fewer."""
    from timerome import data

    pool = [f for f in data.load_tofu(split) if f.subject_in == "question"]
    return [pool[i % len(pool)] for i in range(n)], len(pool)


def _plain_forward_s(bb, facts, target, batch_size):
    """Seconds for plain forwards (to the logits) over exactly the rows and batches a capture runs."""
    from timerome.capture import cloze_rows
    from timerome.sampler import left_pad

    rows, _ = cloze_rows(bb, facts, target, False)
    seqs = sorted((s for _, p, _, a, t in rows for s in (p + a, p + t)), key=len)
    t0 = time.perf_counter()
    for i in range(0, len(seqs), batch_size):
        ids, att = left_pad(seqs[i:i + batch_size], bb.pad_id, bb.device)
        bb.logits(ids, None if bool(att.all()) else att)
    return time.perf_counter() - t0, len(seqs)


def _copy_bandwidth(device, nbytes=256 * 2 ** 20, repeats=5):
    """Memory bandwidth (bytes/s) of ``device``: the best of ``repeats`` `copy_`s of an ``nbytes``
    float64 tensor, each reading and writing ``nbytes``. (Both tensors are touched first, so no page
    faults are timed.)"""
    from timerome.capture import sync

    src = torch.ones(nbytes // 8, dtype=torch.float64, device=device)
    dst = torch.empty_like(src).copy_(src)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def _insert_vs_rebuild(U, D, n, repeats, bandwidth=None, **kw):
    """Median seconds of one `insert` into an n-fact memory, and of building the (n+1)-fact memory anew.

    Steady state, as `timeit` measures: the inserts run back to back (each undone by a `remove`
    off the clock), then the rebuilds back to back. (Interleaving them would time each insert
    right after a rebuild has evicted its data from the caches: on this 2-core VM a cold start
    slows every small operation several-fold, which measures the machine, not the algorithm.)

    With ``bandwidth`` (bytes/s, `_copy_bandwidth`): also the memory-traffic floor of one insert,
    floor_s = 2·n·H·8 bytes / bandwidth (W, n×H float64, is read and written once), and
    insert_s / floor_s."""
    from timerome.memory import EditMemory

    mem = EditMemory(U[:n], D[:n], keys=list(range(n)), **kw)
    ins, reb, cuda = [], [], U.device.type == "cuda"
    for r in range(repeats):
        t0 = time.perf_counter()
        mem.insert(U[n + r], D[n + r], n + r)
        if cuda:  # GPU work is asynchronous: time the insert when it is done
            torch.cuda.synchronize(U.device)
        ins.append(time.perf_counter() - t0)
        mem.remove(n + r)
    for r in range(repeats):
        rows = torch.cat([torch.arange(n), torch.tensor([n + r])])
        U_new, D_new = U[rows], D[rows]  # the stored keys, stacked before the clock starts
        t0 = time.perf_counter()
        EditMemory(U_new, D_new, **kw)
        reb.append(time.perf_counter() - t0)
    i, b = float(np.median(ins)), float(np.median(reb))
    out = {"form": mem.gram, "n_facts": n, "hidden": U.shape[1], "insert_s": round(i, 6)}
    if bandwidth:
        floor = 2 * n * U.shape[1] * 8 / bandwidth
        out.update(floor_s=float(f"{floor:.4g}"), insert_over_floor=round(i / floor, 1))
    out.update(rebuild_s=round(b, 5), rebuild_over_insert=round(b / i, 1))
    return out


def bench_streaming(bb, layer, stream_facts=1000, stream_repeats=101, paper_hidden=4096, batch_size=32,
                    lam=1.0, alpha=1.0, q=4):
    """One streaming insert at |F| = stream_facts vs a rebuild from the stored keys (target >= 20x), on
    captured keys (auto and facts form) and on synthetic keys at H = paper_hidden; each insert also
    against its memory-traffic floor, with the copy bandwidth measured in this run."""
    from timerome.capture import capture_keys

    k = capture_keys(bb, _memory_facts(stream_facts + stream_repeats)[0], layer, batch_size=batch_size)
    kw = dict(lam=lam, alpha=alpha, q=q)
    g = torch.Generator().manual_seed(0)
    U_big = torch.randn(stream_facts + stream_repeats, paper_hidden, generator=g, dtype=torch.float64)
    n, r = stream_facts, stream_repeats
    bw = {str(dev): _copy_bandwidth(dev) for dev in {k["U"].device, U_big.device}}
    big_r = min(r, 21)  # a rebuild at H = paper_hidden is slow: fewer repeats suffice, the ratio is far from noise
    return {
        "n_facts": n, "repeats": r, "note": "from stored keys in both cases (capturing the new fact is common to both); "
                                            "floor_s = 2*|F|*H*8 bytes / copy bandwidth (W read and written once)",
        "copy_bandwidth_GBps": {dev: round(b / 1e9, 2) for dev, b in bw.items()},
        "captured_keys": _insert_vs_rebuild(k["U"], k["D"], n, r, bw[str(k["U"].device)], **kw),
        "captured_keys_facts_form_eq11": _insert_vs_rebuild(k["U"], k["D"], n, r, bw[str(k["U"].device)],
                                                            gram="facts", **kw),
        f"synthetic_keys_hidden_{paper_hidden}": _insert_vs_rebuild(U_big + 1.0, U_big.flip(0), n, big_r,
                                                                     bw[str(U_big.device)], **kw)}


def bench_memory(backbone_name="tiny-mdlm", layer=None, sizes=(10, 100, 400, 1000, 4000), batch_size=32,
                 lam=1.0, alpha=1.0, q=4, overhead_facts=400, gen_prompts=64, gen_length=96, steps=8,
                 stream_facts=1000, repeats=7, stream_repeats=101, paper_hidden=4096, threads=None):
    import timerome
    from timerome import data
    from timerome.capture import DEFAULT_TARGET, capture_keys
    from timerome.memory import EditMemory, install
    from timerome.likelihood import encode_example
    from timerome.sampler import generate

    if threads:
        torch.set_num_threads(threads)
    bb = timerome.load_backbone(backbone_name)
    layer = bb.n_layers // 2 if layer is None else layer
    warm, n_pool = _memory_facts(8)
    EditMemory.build(bb, warm, layer, lam=lam, alpha=alpha, q=q)  # warm-up
    out = {"backbone": backbone_name, "hidden": bb.hidden_size, "layer": layer, "threads": torch.get_num_threads(),
           "batch_size": batch_size, "lam": lam, "alpha": alpha, "q": q,
           "facts": f"TOFU full: {n_pool} facts with the subject in the question, cycled beyond that"}

    # --- install time vs |F|: capture of real facts, solve on their keys (and on synthetic keys) ------
    table = []
    for n in sizes:
        facts, _ = _memory_facts(n)
        k = capture_keys(bb, facts, layer, batch_size=batch_size)  # = EditMemory.build, with unique keys
        ids = [f"{f}#{i}" for i, f in enumerate(k["fact_ids"])]
        mem = EditMemory(k["U"], k["D"], lam=lam, alpha=alpha, q=q, keys=ids)
        cap, solve = k["capture_s"], mem.timings["solve_s"]
        cap_full = capture_keys(bb, facts, layer, batch_size=batch_size, early_exit=False)["capture_s"]
        plain_s, n_rows = _plain_forward_s(bb, facts, DEFAULT_TARGET, batch_size)
        g = torch.Generator().manual_seed(n)
        synth = torch.randn(n, bb.hidden_size, generator=g, dtype=torch.float64) * mem.U.std() + mem.U.mean(0)
        solve_syn = EditMemory(synth, synth.flip(0), lam=lam, alpha=alpha, q=q).timings["solve_s"]
        solve_eq11 = EditMemory(synth, synth.flip(0), lam=lam, alpha=alpha, q=q, gram="facts").timings["solve_s"]
        table.append({"n_facts": n, "capture_s": round(cap, 4), "solve_s": round(solve, 5), "form": mem.gram,
                        "solve_share": round(solve / (cap + solve), 5),
                        "solve_synthetic_s": round(solve_syn, 5),
                        "solve_share_synthetic": round(solve_syn / (cap + solve_syn), 5),
                        "solve_facts_form_synthetic_s": round(solve_eq11, 4),
                        "solve_share_facts_form_synthetic": round(solve_eq11 / (cap + solve_eq11), 4),
                        "forward_rows": n_rows, "plain_forward_rows_per_s": round(n_rows / plain_s, 1),
                        "capture_rows_per_s": round(n_rows / cap, 1), "capture_vs_plain": round(plain_s / cap, 3),
                        "capture_vs_plain_no_early_exit": round(plain_s / cap_full, 3)})
    out["install"] = table

    # --- sampling overhead: a memory of overhead_facts facts at q installed vs none -------------------
    facts, n_pool = _memory_facts(overhead_facts)
    mem = EditMemory.build(bb, facts[:n_pool], layer, lam=lam, alpha=alpha, q=q, batch_size=batch_size)
    prompts = [encode_example(bb, f.question, f.answer)[0] for f in data.load_tofu("forget10")[:gen_prompts]]
    run = lambda: generate(bb, prompts, gen_length=gen_length, steps=steps)
    spent = []

    def timed_delta(h):  # the hook's own work, timed inside the edited runs
        t0 = time.perf_counter()
        d = mem.delta(h)
        spent.append(time.perf_counter() - t0)
        return d

    run()
    with install(bb, timed_delta, layer):
        run()
    plain_t, edit_t, hook_t = [], [], []
    for _ in range(repeats):  # interleaved, so background load hits both alike
        t0 = time.perf_counter()
        run()
        plain_t.append(time.perf_counter() - t0)
        spent.clear()
        with install(bb, timed_delta, layer):
            t0 = time.perf_counter()
            run()
            edit_t.append(time.perf_counter() - t0)
        hook_t.append(sum(spent))
    p, e, h = (float(np.median(x)) for x in (plain_t, edit_t, hook_t))
    out["sampling"] = {"n_facts": overhead_facts, "q": q, "prompts": gen_prompts, "gen_length": gen_length,
                       "steps": steps, "repeats": repeats, "plain_s_median": round(p, 4),
                       "edited_s_median": round(e, 4), "overhead_x_wall": round(e / p, 4),
                       "hook_s_median": round(h, 4), "overhead_x_from_hook_time": round((p + h) / p, 4)}

    # --- streaming: one insert at |F| = stream_facts vs a rebuild from the stored keys -----------------
    out["streaming"] = bench_streaming(bb, layer, stream_facts, stream_repeats, paper_hidden, batch_size, lam, alpha, q)
    return out


def bench_cost(backbone_name="tiny-mdlm", methods=None, hparams_file=None, threads=None, synthetic_blocks=(1, 2),
               synthetic_facts=8, min_speedup=20.0, max_memory_share=0.02):
    """TimeROME's build against the gradient baselines', each in its own process, with the issue's
    goals as ratios: speedup >= ``min_speedup`` and memory share <= ``max_memory_share`` on the tiny
    backbone; then extra memory at the paper's size (LLaDA-8B-shaped random blocks) per depth."""
    from .baselines import cost

    methods = methods or ("timerome", "ga", "gd", "npo", "simnpo", "rmu", "adaptive_rmu")
    hparams_file = hparams_file or str(Path(__file__).resolve().parents[2] / "tables" / "timerome_hparams.json")
    table = cost.cost_table(methods, backbone_name, hparams_file=hparams_file, threads=threads, log=None)
    r = cost.ratios(table)
    out = {"backbone": backbone_name, "rows": table.to_dict("records"), **{k: v for k, v in r.items() if k != "sentence"},
           "speedup_goal": f">= {min_speedup:g}x: " + ("met" if r["speedup"] >= min_speedup else "NOT met"),
           "memory_goal": f"<= {100 * max_memory_share:g}%: " + ("met" if r["memory_share"] <= max_memory_share else "NOT met"),
           "sentence": r["sentence"]}
    if synthetic_blocks:
        syn = cost.synthetic_memory(("timerome", "npo"), n_blocks=synthetic_blocks, facts=synthetic_facts, threads=threads)
        out["paper_size"] = syn.to_dict("records")
        by = {m: g.sort_values("n_blocks") for m, g in syn.groupby("method")}
        if len(synthetic_blocks) > 1:  # per block of depth: the slope between the two depths
            per_block = {m: float(g.extra_mem_gb.diff().iloc[-1] / g.n_blocks.diff().iloc[-1]) for m, g in by.items()}
            at_32 = {m: float(g.extra_mem_gb.iloc[-1] + per_block[m] * (32 - g.n_blocks.iloc[-1])) for m, g in by.items()}
            out["paper_size_per_block_gb"] = per_block
            out["paper_size_32_blocks_gb_extrapolated"] = at_32
            out["paper_size_memory_share"] = at_32["timerome"] / at_32["npo"] if at_32["npo"] > 0 else float("nan")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m timerome.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    common = argparse.ArgumentParser(add_help=False)  # every benchmark: which model, how many threads
    common.add_argument("--backbone", default="tiny-mdlm")
    common.add_argument("--threads", type=int, default=None)
    p = sub.add_parser("likelihood", parents=[common])
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--n-mc", type=int, default=16)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--block", type=int, default=100)
    p.add_argument("--no-eos-tail", dest="eos_tail", action="store_false")
    p = sub.add_parser("tracer", parents=[common])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--naive-n", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("memory", parents=[common])
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--sizes", default="10,100,400,1000,4000")
    p.add_argument("--repeats", type=int, default=7)
    p = sub.add_parser("streaming", parents=[common])
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--facts", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=101)
    p.add_argument("--hidden", type=int, default=4096)
    p = sub.add_parser("cost", parents=[common])
    p.add_argument("--methods", default=None, help="comma-separated; default timerome and every gradient baseline")
    p.add_argument("--hparams-file", default=None, help="default tables/timerome_hparams.json")
    p.add_argument("--synthetic-blocks", default="1,2", help="depths of the paper-size memory measurement ('' = skip)")
    p.add_argument("--synthetic-facts", type=int, default=8)
    args = ap.parse_args(argv)
    if args.what == "cost":
        out = bench_cost(args.backbone, tuple(args.methods.split(",")) if args.methods else None, args.hparams_file,
                         args.threads, tuple(int(n) for n in args.synthetic_blocks.split(",") if n), args.synthetic_facts)
    if args.what == "likelihood":
        out = bench_likelihood(args.backbone, args.n, args.seeds, args.n_mc, threads=args.threads, first=args.first,
                               block=args.block, eos_tail=args.eos_tail)
    if args.what == "tracer":
        out = bench_tracer(args.backbone, args.n, args.naive_n, args.steps, args.repeats, threads=args.threads)
    if args.what == "memory":
        out = bench_memory(args.backbone, args.layer, tuple(int(n) for n in args.sizes.split(",")),
                           repeats=args.repeats, threads=args.threads)
    if args.what == "streaming":
        import timerome

        if args.threads:
            torch.set_num_threads(args.threads)
        bb = timerome.load_backbone(args.backbone)
        layer = bb.n_layers // 2 if args.layer is None else args.layer
        out = {"backbone": args.backbone, "hidden": bb.hidden_size, "layer": layer, "threads": torch.get_num_threads(),
               **bench_streaming(bb, layer, args.facts, args.repeats, args.hidden)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
