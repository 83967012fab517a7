"""Training data by index: tensors (x, optional labels y, optional vector conditions cond) or a
map-style Dataset served as batches, and the order in
which a run visits them (one seeded permutation per epoch, so a run's position in its data is
just (epoch, offset) and does not depend on the number of processes)."""
from __future__ import annotations

import hashlib
from typing import Any, Mapping, Optional, Tuple, Union

import torch

from .. import _checks

__all__ = ["Data", "IndexedData", "EpochOrder", "derive_seed"]

Data = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], torch.utils.data.Dataset]


def derive_seed(seed: int, *tags: Any) -> int:
    """A 63-bit seed for one independent stream, fixed by (seed, tags) on every platform."""
    digest = hashlib.sha256("/".join(map(str, (seed,) + tags)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


Batch = Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]


class IndexedData:
    """Batches by index from tensors (x, optional labels y) or from any map-style Dataset whose
    items are a tensor, an (x, y) pair or a dict with "x" and optionally "y" and "cond".

    `cond`, a float tensor (N, cond_dim) row-aligned with the data, gives every item a vector
    condition (for Dataset items that carry none)."""

    def __init__(self, data: Data, cond: Optional[torch.Tensor] = None):
        self.x: Optional[torch.Tensor] = None
        self.y: Optional[torch.Tensor] = None
        self.cond: Optional[torch.Tensor] = None
        self.dataset = None
        if isinstance(data, torch.utils.data.TensorDataset):
            data = tuple(data.tensors) if len(data.tensors) > 1 else data.tensors[0]
        if isinstance(data, torch.Tensor):
            self.x = data
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, torch.Tensor) for d in data):
            self.x, self.y = data
        elif isinstance(data, torch.utils.data.Dataset):
            self.dataset = data
        else:
            raise _checks.fail("data", "a tensor (N, *shape), a pair (x, labels) of tensors, or a map-style "
                               "torch.utils.data.Dataset", data)
        self.cond_item_dim: Optional[int] = None  # the width of the conditions Dataset items carry
        if self.x is not None:
            if not self.x.is_floating_point():
                raise _checks.fail("data", "a floating-point tensor", self.x.dtype)
            if self.x.ndim < 2 or self.x.shape[0] == 0:
                raise _checks.fail("data", "a tensor of shape (N, *shape) with N >= 1", tuple(self.x.shape))
            _checks.finite("data", self.x)  # checked once, before training
            self.n = self.x.shape[0]
            self.sample_shape = tuple(self.x.shape[1:])
            self.dtype = self.x.dtype
            if self.y is not None and (self.y.shape != (self.n,) or self.y.is_floating_point()):
                raise ValueError(f"labels must be an integer tensor of shape (N,) = ({self.n},); got {self.y.dtype} {tuple(self.y.shape)}")
        else:
            self.n = len(self.dataset)
            if self.n == 0:
                raise _checks.fail("data", "a Dataset of length >= 1", data)
            x, y, c = self._split(self.dataset[0])
            if not x.is_floating_point():
                raise _checks.fail("data", "a Dataset of floating-point tensors", x.dtype)
            _checks.finite("data[0]", x)  # every later item is checked when its batch is drawn
            self.sample_shape, self.dtype = tuple(x.shape), x.dtype
            self.has_labels_item = y is not None
            if c is not None:
                _checks.tensor("data[0]['cond']", c, "(cond_dim,)", min_ndim=1)
                if c.ndim != 1:
                    raise _checks.fail("data[0]['cond']", "a real floating-point tensor (cond_dim,)", tuple(c.shape))
                self.cond_item_dim = int(c.shape[0])
        if cond is not None:
            if self.cond_item_dim is not None:
                raise _checks.fail("cond", "None when the Dataset items carry 'cond' (a condition given twice)",
                                   type(cond).__name__)
            accepted = f"(N, cond_dim) = ({self.n}, cond_dim), row-aligned with the data"
            _checks.tensor("cond", cond, accepted, min_ndim=2)  # also finite, checked once before training
            if cond.ndim != 2 or cond.shape[0] != self.n:
                raise _checks.fail("cond", f"a real floating-point tensor {accepted}", tuple(cond.shape))
            self.cond = cond

    @property
    def cond_dim(self) -> Optional[int]:
        """The width of the data's vector conditions (None: it has none)."""
        return int(self.cond.shape[1]) if self.cond is not None else self.cond_item_dim

    def use_cond(self, net_cond_dim: Optional[int], cond_dropout: float) -> bool:
        """Whether training feeds vector conditions to a network with `net_cond_dim` (None: it
        has no vector input): if and only if the data has them; checked to fit."""
        if self.cond_dim is None:
            if cond_dropout:
                raise ValueError("cond_dropout > 0 needs vector conditions: pass cond=(N, cond_dim) or Dataset items "
                                 "with 'cond'")
            return False
        if net_cond_dim is None:
            raise ValueError("data has vector conditions (cond) but the network has no cond_dim; build the network "
                             "with cond_dim, or train without cond")
        if self.cond_dim != net_cond_dim:
            raise _checks.fail("cond", f"of width cond_dim = {net_cond_dim} (the network's)", self.cond_dim)
        return True

    @property
    def has_labels(self) -> bool:
        return self.y is not None if self.x is not None else self.has_labels_item

    def use_labels(self, use_labels: Optional[bool], num_classes: Optional[int], label_dropout: float) -> bool:
        """Whether training feeds these labels to a network with `num_classes` (None: it has no
        label input): `use_labels`, or None for "if the data has labels"; checked to fit."""
        if use_labels is None:
            if self.has_labels and num_classes is None:
                raise ValueError(
                    "data has labels but the network has no num_classes; pass use_labels=False to "
                    "train unconditionally, or build the network with num_classes"
                )
            use_labels = self.has_labels
        if use_labels and not self.has_labels:
            raise ValueError("use_labels=True but data has no labels; pass (x, labels)")
        if use_labels and num_classes is None:
            raise ValueError("use_labels=True needs a network with num_classes (the null label for label_dropout)")
        if label_dropout and not use_labels:
            raise ValueError("label_dropout > 0 needs labelled data and use_labels")
        if use_labels and self.y is not None and self.y.numel():
            lo, hi = int(self.y.min()), int(self.y.max())
            if lo < 0 or hi >= num_classes:
                raise ValueError(f"labels must lie in [0, num_classes) = [0, {num_classes}); got [{lo}, {hi}]")
        return bool(use_labels)

    @staticmethod
    def _split(item) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        if isinstance(item, torch.Tensor):
            return item, None, None
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return torch.as_tensor(item[0]), torch.as_tensor(item[1]), None
        if isinstance(item, Mapping) and "x" in item and set(item) <= {"x", "y", "cond"}:
            y, c = item.get("y"), item.get("cond")
            return (torch.as_tensor(item["x"]), None if y is None else torch.as_tensor(y),
                    None if c is None else torch.as_tensor(c))
        raise _checks.fail("Dataset items", "a tensor, an (x, label) pair or a dict with 'x' and optionally 'y', "
                           "'cond'", type(item).__name__ if not isinstance(item, Mapping) else sorted(item))

    def get(self, idx: torch.Tensor) -> Batch:
        """(x (b, *shape), labels (b,) or None, conditions (b, cond_dim) or None) for the
        indices idx (b,)."""
        cond = self.cond[idx.to(self.cond.device)] if self.cond is not None else None
        if self.x is not None:
            idx = idx.to(self.x.device)
            return self.x[idx], (self.y[idx] if self.y is not None else None), cond
        items = [self._split(self.dataset[int(i)]) for i in idx]
        x = torch.stack([item[0] for item in items])
        if tuple(x.shape[1:]) != self.sample_shape or not x.is_floating_point():
            raise ValueError(f"Dataset items must all be float tensors of shape {self.sample_shape}; got {x.dtype} {tuple(x.shape[1:])}")
        if x.device.type == "cpu":
            _checks.finite("data", x)
        y = torch.stack([item[1] for item in items]).long() if items[0][1] is not None else None
        if self.cond_item_dim is not None:
            if any(item[2] is None for item in items):
                raise _checks.fail("Dataset items", "all dicts with 'cond' (the first one has it)", "one without")
            cond = torch.stack([item[2] for item in items])
            if cond.shape[1:] != (self.cond_item_dim,) or not cond.is_floating_point():
                raise _checks.fail("Dataset items' cond", f"real floating-point tensors ({self.cond_item_dim},)",
                                   f"{cond.dtype} {tuple(cond.shape[1:])}")
            if cond.device.type == "cpu":
                _checks.finite("Dataset items' cond", cond)
        return x, y, cond


class EpochOrder:
    """The order in which a run visits n items: a permutation per epoch, seeded by (seed,
    epoch), read from (epoch, position) on; a batch may run over into the next epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.epoch, self.position = 0, 0
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def take(self, count: int) -> torch.Tensor:
        """The next `count` indices (count,), advancing the position."""
        parts, need = [], count
        while need:
            if self._perm_epoch != self.epoch:
                g = torch.Generator().manual_seed(derive_seed(self.seed, "data", self.epoch))
                self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), self.epoch
            step = min(need, self.n - self.position)
            parts.append(self._perm[self.position:self.position + step])
            self.position += step
            need -= step
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
        return torch.cat(parts)
