"""Benchmarks (timing goals live here, never in unit tests).

    python -m timerome.bench likelihood [--backbone tiny-mdlm] [--n 100] [--seeds 20]

``likelihood``: throughput of `answer_logprob` at n_mc = 16 (answers scored per second), and
the standard error of the estimate with stratified mask counts versus i.i.d. mask ratios,
measured as the spread of the estimate over independent seeds, per example (target: the
stratified SE ≤ 0.7 × the i.i.d. SE).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def bench_likelihood(backbone_name="tiny-mdlm", n=100, seeds=20, n_mc=16, split="forget10", threads=None):
    import timerome
    from timerome import data, likelihood

    if threads:
        torch.set_num_threads(threads)
    bb = timerome.load_backbone(backbone_name)
    facts = data.load_tofu(split)[:n]
    qs, ans = [f.question for f in facts], [f.answer for f in facts]
    likelihood.answer_logprob(bb, qs[:4], ans[:4], n_mc=n_mc)  # warm-up
    t0 = time.perf_counter()
    likelihood.answer_logprob(bb, qs, ans, n_mc=n_mc, seed=0)
    seconds = time.perf_counter() - t0
    est = {s: torch.stack([likelihood.answer_logprob(bb, qs, ans, n_mc=n_mc, seed=k, stratified=s)
                           for k in range(seeds)]).numpy() for s in (True, False)}
    se_strat, se_iid = est[True].std(0, ddof=1), est[False].std(0, ddof=1)
    ok = se_iid > 0
    return {"backbone": backbone_name, "split": split, "n_examples": n, "n_mc": n_mc, "seeds": seeds,
            "threads": torch.get_num_threads(), "seconds": round(seconds, 3),
            "answers_per_s": round(n / seconds, 2), "forward_rows_per_s": round(n * n_mc / seconds, 1),
            "se_stratified_mean": float(se_strat.mean()), "se_iid_mean": float(se_iid.mean()),
            "se_ratio_of_means": float(se_strat.mean() / se_iid.mean()),
            "se_ratio_median_per_example": float(np.median(se_strat[ok] / se_iid[ok])),
            "mean_estimate_stratified": float(est[True].mean()), "mean_estimate_iid": float(est[False].mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m timerome.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("likelihood")
    p.add_argument("--backbone", default="tiny-mdlm")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--n-mc", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.what == "likelihood":
        out = bench_likelihood(args.backbone, args.n, args.seeds, args.n_mc, threads=args.threads)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
