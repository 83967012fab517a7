"""Measuring samplers: accuracy against NFE on problems with exact answers, and sample quality
on the 8x8 digits in a classifier's feature space."""
from .digits import DigitClassifier, classifier_accuracy, classifier_frechet, image_grid, train_digit_classifier
from .ode import ode_error_table, reference_solution
from .accuracy import Problem, run_benchmark

__all__ = [
    "ode_error_table", "reference_solution", "run_benchmark", "Problem",
    "DigitClassifier", "train_digit_classifier", "classifier_accuracy", "classifier_frechet", "image_grid",
]
