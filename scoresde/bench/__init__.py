"""Measuring samplers: accuracy against NFE (`problems`: what is measured against, mixtures with
exact answers or any trained model on a data set's held-out split; `run`: the cells and the run,
sharded under torchrun; `report`: JSON, CSV, Markdown and plots), terminal ODE error tables
(`ode`), and sample quality on the 8x8 digits in a classifier's feature space (`digits`)."""
from .digits import DigitClassifier, classifier_accuracy, classifier_frechet, image_grid, train_digit_classifier
from .ode import ode_error_table
from .problems import (
    ANALYTIC, BENCH_SDES, CHECKPOINT_PROBLEMS, Problem, analytic_problem, checkpoint_data, checkpoint_problem,
    digits_problem, make_problem, score_checkpoint,
)
from .report import CSV_COLUMNS, METRICS, OPTIMIZED, TABLE_NFES, markdown, plot, summary, write_json, write_outputs
from .run import ADAPTIVE_TOLERANCES, DEFAULT_NFES, QUICK, run_benchmark

__all__ = [
    "Problem", "analytic_problem", "checkpoint_problem", "digits_problem", "make_problem", "score_checkpoint",
    "checkpoint_data", "ANALYTIC", "BENCH_SDES", "CHECKPOINT_PROBLEMS",
    "run_benchmark", "QUICK", "DEFAULT_NFES", "ADAPTIVE_TOLERANCES",
    "METRICS", "OPTIMIZED", "CSV_COLUMNS", "TABLE_NFES", "write_json", "write_outputs", "markdown", "summary", "plot",
    "ode_error_table",
    "DigitClassifier", "train_digit_classifier", "classifier_accuracy", "classifier_frechet", "image_grid",
]
