"""Accuracy against NFE of every registered sampler (the `scoresde bench` command, with its
results in benchmarks/results/ by default).

    OMP_NUM_THREADS=1 python benchmarks/accuracy_vs_nfe.py [--quick] [--ckpt out/digits_quality/checkpoint.pt [--data SPEC]]
    torchrun --nproc_per_node=2 benchmarks/accuracy_vs_nfe.py ...     # the batch sharded over 2 processes

All options: `scoresde bench --help` (or `python -m scoresde bench --help`). Writes accuracy_vs_nfe.{json,csv,md,png}.
"""
import sys

from scoresde.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", "benchmarks/results"]
    sys.exit(main(["bench", *argv]))
