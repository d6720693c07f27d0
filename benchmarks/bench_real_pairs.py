"""Accuracy on real neonates: inter-subject pairs (moving T2w -> another subject's T1w) of the
development dataset, ContraReg through the app's command line against its peers, one run.

Data: the BIDS dataset that ``../shared/data/alberts-dev/build.sh`` builds under
``/tmp/alberts-dev/alberts-bids`` (8 real neonates, 37-44 weeks PMA, T1w + T2w, manual
labels ``desc-structures_dseg``). Academic licence: nothing of it, nor anything derived from
it (weights included), is kept in the repository.

The split (written here, never changed after a test score was logged):

- **selection** subjects 01 03 04 05: their 12 ordered pairs choose every setting;
- **test** subjects 06 07 08 10: their 12 ordered pairs score each candidate default once;
  every test evaluation is appended to ``benchmarks/logs/real_test_log.tsv`` (which
  docs/benchmarks.md quotes).

Labels: the 50 structures 1-50. The two low-T2 thalamus parts (86 right, 87 left) are merged
into the thalamus labels 42 and 43 (same side); 85 ("intra-cranial background", the
extracerebral CSF) is not a structure and is not scored. Dice of one pair: the moving
subject's labels carried onto the fixed subject's grid through the method's own transform
(nearest neighbour) against the fixed subject's labels, mean over the 50 structures.
Folding % and std log|J| of the whole transform inside the fixed brain mask (an affine
adds a constant to log|J|: the std is the deformation's).

Methods, per fixed subject F (the others of its set are the moving subjects):

- through ``contrareg-bids BIDS OUT participant --reference sub-F`` (one work folder per F,
  so the preprocessing and the affine step are computed once and shared by every method):
  ``syn`` (``--registration ants``: SyN, Mattes MI, 100x70x50), ``network`` (the model
  alone), ``refine`` (the model with ``--refine-steps``), and any ``--variant NAME='OPTIONS'``
  (participant options added to the model's);
- on the app's own preprocessed images and affine (read from that work folder), in this
  process: ``affine`` (the app's affine step alone), ``convexadam`` (MIND, its defaults),
  ``fireants-cc`` and ``fireants-mi`` (greedy, LNCC / MI, FireANTs' defaults).

    python benchmarks/bench_real_pairs.py --set selection --model M.safetensors \\
        --work-dir /tmp/realbench --methods affine network refine convexadam

Scores of every (method, pair) are cached under the work folder; ``--fresh`` recomputes the
given methods. Times: seconds per pair, the app's wall time (reports and outputs included;
the first app method of each fixed subject also pays the preprocessing) or the peer's own
registration time.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from benchlib import (
    REPO,
    app,
    app_transform,
    command_line,
    derivative,
    log,
    paired_difference,
    registration_options,
    run_peer,
    score_files,
)

SPLIT = {"selection": ("01", "03", "04", "05"), "test": ("06", "07", "08", "10")}
STRUCTURES = tuple(range(1, 51))
MERGED = {86: 42, 87: 43}  # low-T2 thalamus parts -> their thalamus
LOG = REPO / "benchmarks" / "logs" / "real_test_log.tsv"
APP_METHODS = ("syn", "network", "refine")
PEERS = ("affine", "convexadam", "fireants-cc", "fireants-mi")


def structures(labels: np.ndarray) -> np.ndarray:
    """The scored label map: 86/87 merged into 42/43, everything outside 1-50 set to 0."""
    out = labels.astype(np.int16, copy=True)
    for src, dst in MERGED.items():
        out[out == src] = dst
    out[(out < 1) | (out > 50)] = 0
    return out


def score(bids: Path, moving: str, fixed: str, transform, work: Path) -> dict:
    """Dice over the 50 structures of the ``desc-structures_dseg`` maps and the warp's
    folding / std log|J| in the fixed brain (:func:`benchlib.score_files`)."""
    dseg = "desc-structures_dseg"
    return score_files(
        derivative(bids, moving, dseg),
        derivative(bids, fixed, dseg),
        derivative(bids, fixed, "desc-brain_mask"),
        transform,
        STRUCTURES,
        structures,
        work / f"_moved_{moving}_{fixed}.nii.gz",
    )


def parse_variants(items: list[str]) -> dict[str, list[str]]:
    out = {}
    for item in items:
        name, _, opts = item.partition("=")
        if not name or not opts:
            sys.exit(f"error: --variant {item!r}: expected NAME='participant options'")
        out[name] = shlex.split(opts)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bids", type=Path, default=Path("/tmp/alberts-dev/alberts-bids"))
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/realbench"))
    p.add_argument("--set", choices=SPLIT, required=True)
    p.add_argument("--model", type=Path, help="the ContraReg bundle (network, refine, variants)")
    p.add_argument("--lambda", dest="lam", default="0.8", help="the model's lambda")
    p.add_argument("--refine-steps", type=int, default=100)
    p.add_argument(
        "--methods", nargs="+", default=[*PEERS, *APP_METHODS], choices=[*PEERS, *APP_METHODS]
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME='participant options': one more ContraReg row (the model's "
        "options and --lambda come first; these override)",
    )
    p.add_argument("--primary", default="refine", help="the row the differences are taken from")
    p.add_argument(
        "--fresh", nargs="*", default=[], help="methods whose cached scores are dropped"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-pairs", type=int, default=0, help="score only the first N pairs")
    a = p.parse_args(argv)
    command = command_line("bench_real_pairs.py", argv)
    print(f"# {command}", flush=True)
    bids = a.bids.resolve()
    subjects = SPLIT[a.set]
    pairs = [(m, f) for f in subjects for m in subjects if m != f]
    if a.max_pairs:
        pairs = pairs[: a.max_pairs]
    fixed_subjects = sorted({f for _, f in pairs})
    app_methods: dict[str, list[str]] = {}
    model_opts = ["--model", str(a.model), *registration_options(lam=a.lam)] if a.model else []
    if "network" in a.methods:  # first: the one that pays the shared preprocessing
        app_methods["network"] = [*model_opts, *registration_options(refine_steps=0, fine_steps=0)]
    if "refine" in a.methods:
        app_methods["refine"] = [
            *model_opts,
            *registration_options(refine_steps=a.refine_steps, fine_steps=0),
        ]
    for name, opts in parse_variants(a.variant).items():
        app_methods[name] = [*model_opts, *opts]
    if "syn" in a.methods:
        app_methods["syn"] = ["--registration", "ants"]
    if any(m != "syn" for m in app_methods) and not a.model:
        sys.exit("error: the network, refine and variant rows need --model")
    peers = [m for m in PEERS if m in a.methods]
    root = a.work_dir.resolve()
    scores_dir = root / "scores"
    results: dict[str, dict[tuple[str, str], dict]] = {}
    scored = 0  # new scores in this run: only those are a test evaluation to log

    def cached(method: str, m: str, f: str) -> Path:
        return scores_dir / method / f"{m}_to_{f}.json"

    for method in a.fresh:
        shutil.rmtree(scores_dir / method, ignore_errors=True)
    for f in fixed_subjects:
        work = root / "work" / f"ref-{f}"
        movings = [m for m, ff in pairs if ff == f]
        common = [
            "-w",
            str(work),
            "--reference",
            f"sub-{f}",
            "--derivatives",
            f"labels={bids / 'derivatives' / 'labels'}",
            "--labels-desc",
            "structures",
            "--nprocs",
            "1",
            "--omp-nthreads",
            str(a.threads),
            "--random-seed",
            "0",
            "--device",
            "cpu",
            "--skip-bids-validation",
            "--participant-label",
            *movings,
        ]
        # the peers read the app's affine step: a cheap app method runs first when none is due
        need = {
            m: o
            for m, o in app_methods.items()
            if not all(cached(m, mv, f).exists() for mv in movings)
        }
        if peers and not (work / f"sub_{movings[0]}_wf").exists() and not need:
            first = "network" if a.model else "syn"
            need = {
                first: app_methods.get(
                    first,
                    [*model_opts, *registration_options(refine_steps=0)]
                    if a.model
                    else ["--registration", "ants"],
                )
            }
        for method, opts in need.items():
            out = root / "out" / method / f"ref-{f}"
            if method in a.fresh:
                shutil.rmtree(out, ignore_errors=True)
                for mv in movings:  # Nipype caches by inputs, not by the code it runs
                    reg_wf = work / f"sub_{mv}_wf" / "pair_wf" / "registration_wf"
                    shutil.rmtree(reg_wf, ignore_errors=True)
            argv_p = [str(bids), str(out), "participant", *common, *opts]
            log(f"{method} -> sub-{f}: contrareg-bids {shlex.join(argv_p)}")
            rc, seconds = app(argv_p)
            for mv in movings:
                try:
                    s = score(bids, mv, f, str(app_transform(out, mv)), root)
                except FileNotFoundError as err:
                    log(f"  {method} {mv}->{f}: no transform ({err}); rc {rc}")
                    continue
                s["seconds"] = seconds / len(movings)
                cached(method, mv, f).parent.mkdir(parents=True, exist_ok=True)
                cached(method, mv, f).write_text(json.dumps(s) + "\n")
                scored += 1
                log(f"  {method} {mv}->{f}: Dice {s['dice']:.4f}")
        for method in peers:
            for mv in movings:
                if cached(method, mv, f).exists():
                    continue
                tx, seconds = run_peer(method, work, mv)
                s = score(bids, mv, f, tx, root)
                s["seconds"] = seconds
                cached(method, mv, f).parent.mkdir(parents=True, exist_ok=True)
                cached(method, mv, f).write_text(json.dumps(s) + "\n")
                scored += 1
                log(f"  {method} {mv}->{f}: Dice {s['dice']:.4f} ({seconds:.1f} s)")
    rows = [*peers, *app_methods]
    for method in rows:
        results[method] = {}
        for m, f in pairs:
            c = cached(method, m, f)
            if c.exists():
                results[method][(m, f)] = json.loads(c.read_text())
    report(a, command, pairs, rows, results, log_test=scored > 0)
    return 0


def report(a, command: str, pairs, rows, results, log_test: bool) -> None:
    done = [pr for pr in pairs if all(pr in results[m] for m in rows)]
    if not done:
        log("no pair scored by every method")
        return
    print(
        f"\nreal neonates, {a.set} pairs ({len(done)} of {len(pairs)}), moving T2w -> fixed T1w; "
        "Dice: mean over structures 1-50 (86/87 in 42/43, 85 not scored)"
    )
    primary = a.primary if a.primary in rows else None
    head = "| method | mean Dice | folding % | std log\\|J\\| | s / pair |"
    head += f" {primary} minus method (pairs better, p) |" if primary else ""
    print(head)
    print("|---" * (6 if primary else 5) + "|")
    dice = {m: [results[m][pr]["dice"] for pr in done] for m in rows}
    for m in sorted(rows, key=lambda r: -statistics.fmean(dice[r])):
        r = [results[m][pr] for pr in done]
        fold = statistics.fmean(x["folding_percent"] for x in r)
        sdj = statistics.fmean(x["std_log_jacobian"] for x in r)
        sec = statistics.median(x["seconds"] for x in r)
        line = f"| {m} | {statistics.fmean(dice[m]):.4f} | {fold:.3f} | {sdj:.3f} | {sec:.1f} |"
        if primary:
            line += " |" if m == primary else f" {paired_difference(dice[primary], dice[m])} |"
        print(line)
    if a.set == "test" and log_test:  # a re-run that scores nothing new logs nothing
        append_log(command, done, rows, results)


def append_log(command: str, done, rows, results) -> None:
    """Every test evaluation, one line per method, appended (never rewritten)."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    new = not LOG.exists()
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        if new:
            w.writerow(
                [
                    "date",
                    "commit",
                    "method",
                    "pairs",
                    "mean_dice",
                    "folding_percent",
                    "std_log_jacobian",
                    "seconds_per_pair",
                    "dice_per_pair",
                    "command",
                ]
            )
        for m in rows:
            r = [results[m][pr] for pr in done]
            w.writerow(
                [
                    dt.datetime.now().isoformat(timespec="seconds"),
                    commit,
                    m,
                    len(done),
                    f"{statistics.fmean(x['dice'] for x in r):.4f}",
                    f"{statistics.fmean(x['folding_percent'] for x in r):.4f}",
                    f"{statistics.fmean(x['std_log_jacobian'] for x in r):.4f}",
                    f"{statistics.median(x['seconds'] for x in r):.1f}",
                    ",".join(f"{x['dice']:.4f}" for x in r),
                    command,
                ]
            )
    log(f"test scores appended to {LOG}")


if __name__ == "__main__":
    sys.exit(main())
