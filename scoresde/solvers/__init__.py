"""Samplers, all behind `scoresde.sample` and one registry (`available()`, `get()`, `register()`)."""
# importing registers the solvers, in the order `available()` lists them
from . import ode, exponential, dpm_v3, sde, adaptive, backends, learned, sa_solver, restart  # noqa: F401,I001
from ._loop import Grid, History, Loop, NonFiniteError, StateHook, multistep_order
from .hooks import Inpainting
from .registry import ORDER_KINDS, SolverInfo, available, get, register
from .sampling import DEFAULT_SCHEDULE, DEFAULT_SOLVER, DEFAULT_STEPS, SampleResult, sample
from .reference import REFERENCE_OPTIONS, reference_solve

__all__ = [
    "sample", "SampleResult", "available", "get", "register", "SolverInfo", "ORDER_KINDS", "Loop", "Grid",
    "History", "multistep_order", "StateHook", "NonFiniteError", "Inpainting", "DEFAULT_SOLVER",
    "DEFAULT_SCHEDULE", "DEFAULT_STEPS", "REFERENCE_OPTIONS", "reference_solve",
]
