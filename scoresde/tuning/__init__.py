"""Samplers fitted to a model: time grids (and, in time, solver coefficients) tuned for one
model, solver and NFE budget on calibration noise, and measured on held-out noise."""
from .schedule import MIN_CALIBRATION, OptimizedSchedule, optimize

__all__ = ["optimize", "OptimizedSchedule", "MIN_CALIBRATION"]
