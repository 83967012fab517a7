"""Measuring samplers: accuracy against NFE on problems with exact answers."""
from .ode import ode_error_table, reference_solution

__all__ = ["ode_error_table", "reference_solution"]
