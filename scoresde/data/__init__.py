"""Data: analytic Gaussian mixtures (exact ground truth), 2-D / 1-D toy sets, 8x8 digits."""
from .digits import DIGITS_TEST_SIZE, DIGITS_TRAIN_SIZE, digits_split_indices, load_digits
from .gmm import GaussianMixture
from .sets import BUILTIN_DATA, DataSet, load_data
from .toys import (
    TOY_MIXTURES, TOYS, bimodal_1d, checkerboard, pinwheel, ring_mixture, sample_toy, swiss_roll, two_moons,
)

__all__ = [
    "GaussianMixture", "DataSet", "load_data", "BUILTIN_DATA",
    "TOYS", "TOY_MIXTURES", "sample_toy", "ring_mixture", "two_moons", "swiss_roll", "checkerboard", "pinwheel",
    "bimodal_1d",
    "load_digits", "digits_split_indices", "DIGITS_TRAIN_SIZE", "DIGITS_TEST_SIZE",
]
