"""Test-time refinement settings on the pseudo-subject pairs of the development atlas.

Runs ``register_arrays`` with refinement for each ``steps:lr:coarse:lambda[:draws[:schedule]]``
variant (``draws``: PatchNCE location samples averaged per step, default 1; ``schedule``: the
learning rate's, cosine (the default) or constant) on the
pseudo pairs of ``bench_accuracy_atlas.py`` (same cohorts, same generator) with one bundle,
and prints the Dice gain over affine alignment (paired mean ± SD), std log|J|, % folding and
the time per pair.

    python benchmarks/probe_refine_atlas.py --bundle <run>/model.safetensors \\
        --variants 30:0.05:2:0.3 30:0.05:2:0.8 --max-pairs 6
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy_atlas import probe_pairs, score


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument(
        "--variants", nargs="+", required=True, help="steps:lr:coarse:lambda[:draws[:schedule]]"
    )
    p.add_argument("--work-dir", default="/tmp/atlas3", help="bench_train_atlas's work dir")
    p.add_argument("--set", default="pseudo", choices=("pseudo", "atlas"))
    p.add_argument("--max-pairs", type=int, default=12)
    p.add_argument(
        "--cohorts", type=int, nargs="+", default=[31, 35, 39, 43],
        help="cohorts paired (default: the benchmark's held-out ones; training cohorts such "
        "as 29 33 37 41 give a selection set disjoint from the test pairs)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    print(f"# python benchmarks/probe_refine_atlas.py {shlex.join(sys.argv[1:])}")
    import torch

    from contrareg_bids.io.bundle import load_model
    from contrareg_bids.nn.inference import register_arrays
    from contrareg_bids.nn.refine import RefineSettings
    from contrareg_bids.training.objective import objective_from_bundle

    torch.set_num_threads(1)
    pairs = probe_pairs(a.work_dir, a.cohorts, a.set)[: a.max_pairs]
    bundle = load_model(a.bundle)
    objective = objective_from_bundle(bundle)
    res: dict[str, list[dict]] = {}
    for i, (name, mov, fix) in enumerate(pairs):
        res.setdefault("affine", []).append(score(mov, fix, np.zeros((3, *fix["T1w"].shape))))
        for v in a.variants:
            steps, lr, coarse, lam, *rest = v.split(":")
            t0 = time.perf_counter()
            out = register_arrays(
                bundle.regnet, mov["T2w"], fix["T1w"], lam=float(lam), objective=objective,
                refine=RefineSettings(steps=int(steps), lr=float(lr), coarse=int(coarse), seed=i,
                                     draws=int(rest[0]) if rest else 1,
                                     schedule=rest[1] if len(rest) > 1 else "cosine"),
                moving_mask=mov["mask"], fixed_mask=fix["mask"],
            )  # fmt: skip
            row = score(mov, fix, out.forward_disp)
            row["time_s"] = time.perf_counter() - t0
            res.setdefault(v, []).append(row)
        now = " ".join(f"{k}={r[-1]['dice']:.4f}" for k, r in res.items())
        print(f"pair {i + 1} {name}: {now}", flush=True)
    base = np.array([r["dice"] for r in res["affine"]])
    print("\n| variant (steps:lr:coarse:lambda) | Dice | vs affine | std log|J| | % folds "
          "| s / pair |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for k, rows in res.items():
        d = np.array([r["dice"] for r in rows])
        gain = f"{np.mean(d - base):+.4f} ± {np.std(d - base, ddof=1):.4f}"
        print(f"| {k} | {d.mean():.4f} | {gain} | "
              f"{np.mean([r['std_log_jacobian'] for r in rows]):.3f} | "
              f"{np.mean([r['folding_percent'] for r in rows]):.3f} | "
              f"{np.median([r.get('time_s', 0.0) for r in rows]):.1f} |")  # fmt: skip
    if a.out:
        a.out.write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
