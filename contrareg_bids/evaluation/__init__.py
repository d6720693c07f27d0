"""Lambda-sweep evaluation of trained bundles (and ANTs SyN) on labelled pairs.

The paper's protocol (docs/method.md, Evaluation): register every pair at 17 lambda values, score
Dice, Dice30, % folding voxels and std log|J|, plot each metric against lambda and tabulate
the lambda with the best Dice among those with < 0.5 % folding voxels.
"""

from .sweep import (
    ANTS_METHOD,
    FOLD_LIMIT,
    PAPER_LAMBDAS,
    LabelledPair,
    SweepResult,
    read_pairs_tsv,
    run_sweep,
)
from .table import best_lambda_table, summarize

__all__ = [
    "ANTS_METHOD",
    "FOLD_LIMIT",
    "PAPER_LAMBDAS",
    "LabelledPair",
    "SweepResult",
    "best_lambda_table",
    "read_pairs_tsv",
    "run_sweep",
    "summarize",
]
