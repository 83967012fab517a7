"""Data sets by name or file, each with a fixed train/test split: what `scoresde train`,
`sample`, `nll` and `bench --ckpt` read, so that every command sees the same held-out data.

`load_data(spec, split)` takes a built-in name (the 2-D toys, "bimodal1d", "digits") or a
file: `.pt` (a tensor, or a dict of tensors), `.npy` (one array) or `.npz` (arrays), holding
`x` (N, *shape) and optionally `y` (N,) integer labels and `cond` (N, cond_dim) vectors.

Splits: the toys draw `TOY_SIZES[split]` points from a seed fixed per split; the digits use
their fixed 1500/297 split; a file's rows are ordered by a SplitMix64 hash of their index and
the last `ceil(N / 10)` form the test split (the same rows on every machine).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch

from .. import _checks
from .digits import DIGITS_SPLITS, hash_order, load_digits
from .toys import TOYS, sample_toy

__all__ = ["DataSet", "load_data", "BUILTIN_DATA", "TOY_SIZES", "SPLITS", "FILE_SUFFIXES"]

SPLITS = DIGITS_SPLITS  # ("train", "test", "all")
BUILTIN_DATA = (*TOYS, "digits")
TOY_SIZES = {"train": 20_000, "test": 5_000}
FILE_SUFFIXES = (".pt", ".npy", ".npz")
_TOY_SEEDS = {"train": 20241201, "test": 20241202}
_SPLIT_SEED = 20241203
_KEYS = ("x", "y", "cond")


@dataclass(frozen=True)
class DataSet:
    """One split of a data set: `x` (N, *shape) float, `y` (N,) int64 labels or None, `cond`
    (N, cond_dim) float vector conditions or None; `name` is the spec it was loaded from."""

    name: str
    split: str
    x: torch.Tensor
    y: Optional[torch.Tensor] = None
    cond: Optional[torch.Tensor] = None

    @property
    def shape(self):
        """The shape of one sample."""
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> Optional[int]:
        """1 + the largest label (None without labels)."""
        return None if self.y is None else int(self.y.max()) + 1

    @property
    def cond_dim(self) -> Optional[int]:
        return None if self.cond is None else int(self.cond.shape[1])

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _read(path: Path) -> Dict[str, torch.Tensor]:
    """The arrays of a data file as tensors, by key (a bare tensor or .npy array is `x`)."""
    what = f"data file {path}"
    try:
        if path.suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
        else:
            obj = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same bad input
        raise _checks.ArgumentError(f"{what} cannot be read as {path.suffix} ({type(err).__name__}: {err})") from None
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        obj = {"x": obj}
    elif isinstance(obj, np.lib.npyio.NpzFile):
        obj = {k: obj[k] for k in obj.files}
    if not isinstance(obj, dict):
        raise _checks.fail(what, "a tensor or a dict of tensors", type(obj).__name__)
    if "x" not in obj:
        raise _checks.fail(f"the arrays of {what}", "x (N, *shape) and optionally y (labels) and cond (vectors)",
                           f"only {', '.join(sorted(map(str, obj))) or 'none'}")
    unknown = sorted(set(map(str, obj)) - set(_KEYS))
    if unknown:
        raise _checks.fail(f"the keys of {what}", "x, y, cond", f"also {', '.join(unknown)}")
    out = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise _checks.fail(f"{key} in {what}", "a numeric array", value.dtype)
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor):
            raise _checks.fail(f"{key} in {what}", "a tensor or array", type(value).__name__)
        out[key] = value
    return out


def _checked(name: str, arrays: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """x (N, *shape) finite float, y (N,) integer >= 0, cond (N, d) finite float: as float64 / int64."""
    x = arrays["x"]
    if x.ndim < 2 or x.shape[0] < 2 or x.is_complex() or x.dtype == torch.bool:
        raise _checks.fail(f"x in {name}", "a real array (N, *shape) with N >= 2 (one row per sample; 1-D data "
                           "as (N, 1))", f"{x.dtype} {tuple(x.shape)}")
    x = x.to(torch.float64)
    _checks.finite(f"x in {name}", x)
    n, out = x.shape[0], {"x": x}
    if "y" in arrays:
        y = arrays["y"]
        if y.shape != (n,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise _checks.fail(f"y in {name}", f"integer labels of shape (N,) = ({n},)", f"{y.dtype} {tuple(y.shape)}")
        if int(y.min()) < 0:
            raise _checks.fail(f"y in {name}", "labels >= 0 (0 .. num_classes - 1)", int(y.min()))
        out["y"] = y.to(torch.long)
    if "cond" in arrays:
        c = arrays["cond"]
        if c.ndim != 2 or c.shape[0] != n or c.is_complex() or c.dtype == torch.bool:
            raise _checks.fail(f"cond in {name}", f"a real array (N, cond_dim) with N = {n} rows, as x",
                               f"{c.dtype} {tuple(c.shape)}")
        c = c.to(torch.float64)
        _checks.finite(f"cond in {name}", c)
        out["cond"] = c
    return out


def file_split(n: int, split: str) -> torch.Tensor:
    """Row indices of `split` of an n-row file: the hash order's first n - ceil(n / 10) rows
    are "train", the rest "test"; "all" is every row in file order."""
    _checks.choice("split", split, SPLITS)
    if split == "all":
        return torch.arange(n)
    order = hash_order(n, _SPLIT_SEED)
    cut = n - math.ceil(n / 10)
    return order[:cut] if split == "train" else order[cut:]


def load_data(spec: Union[str, os.PathLike], split: str = "train", dtype: torch.dtype = torch.float32,
              device: Optional[torch.device] = None) -> DataSet:
    """The `split` ("train", "test" or "all") of the data set `spec`: a name in BUILTIN_DATA or
    a .pt/.npy/.npz file (see the module docstring); refused with a one-line reason if a file
    lacks `x`, holds NaN or inf, or has labels or conditions that do not fit `x`."""
    _checks.choice("split", split, SPLITS)
    _checks.floating_dtype("dtype", dtype, optional=False)
    name = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else spec
    if name in BUILTIN_DATA:
        if name == "digits":
            x, y = load_digits(split, dtype=dtype, device=device)
            return DataSet(name, split, x, y)
        parts = ("train", "test") if split == "all" else (split,)
        x = torch.cat([sample_toy(name, TOY_SIZES[s], torch.Generator().manual_seed(_TOY_SEEDS[s]), dtype=dtype)
                       for s in parts])
        return DataSet(name, split, x.to(device))
    accepted = f"a built-in data set ({', '.join(BUILTIN_DATA)}) or a {'/'.join(FILE_SUFFIXES)} file"
    if not isinstance(name, str):
        raise _checks.fail("data", accepted, name)
    path = Path(name)
    if path.suffix not in FILE_SUFFIXES:
        raise _checks.fail("data", accepted, name)
    if not path.is_file():
        raise _checks.ArgumentError(f"data must be {accepted}; got {name!r} (no such file)")
    arrays = _checked(f"data file {path}", _read(path))
    rows = file_split(arrays["x"].shape[0], split)
    pick = {k: v[rows] for k, v in arrays.items()}
    return DataSet(name, split, pick["x"].to(dtype=dtype, device=device),
                   pick["y"].to(device) if "y" in pick else None,
                   pick["cond"].to(dtype=dtype, device=device) if "cond" in pick else None)
