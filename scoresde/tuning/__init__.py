"""Samplers fitted to a model: time grids (and, in time, solver coefficients) tuned for one
model, solver and NFE budget on calibration noise, and measured on held-out noise.
`tune` is the front door; every method returns a `TunedSampler`."""
from .api import METHODS, STEPS_DEFAULTS, tune
from .gits import shortest_path, step_costs
from .schedule import MIN_CALIBRATION, OptimizedSchedule, optimize
from .steps import LOSSES, ShiftedTime, learn_steps
from .teacher import Teacher, teacher
from .tuned import TunedSampler, model_fingerprint

__all__ = ["tune", "TunedSampler", "METHODS", "model_fingerprint", "teacher", "Teacher", "shortest_path",
           "step_costs", "optimize", "OptimizedSchedule", "MIN_CALIBRATION", "STEPS_DEFAULTS", "ShiftedTime",
           "learn_steps", "LOSSES"]
