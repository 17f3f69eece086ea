"""``Dataset``: a data set's train / test (and validation) arrays, checked before use."""

from __future__ import annotations

import dataclasses

import numpy as np

from mobileprune_jax.data.errors import InvalidDataError


@dataclasses.dataclass
class Dataset:
  """Train/test arrays; inputs are float32 in [0, 1] (images) or standardised (sensors)."""

  name: str
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  val_x: np.ndarray | None = None
  val_y: np.ndarray | None = None

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.train_x.shape[1:])

  def check(self) -> Dataset:
    """Raises InvalidDataError unless inputs are finite and labels are integers in [0, num_classes)."""
    splits = [("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)]
    if self.val_x is not None:
      splits.append(("validation", self.val_x, self.val_y))
    for split, x, y in splits:
      if len(x) != len(y):
        raise InvalidDataError(f"{self.name}: {split} split has {len(x)} inputs but {len(y)} labels")
      if not np.issubdtype(np.asarray(y).dtype, np.integer):
        raise InvalidDataError(f"{self.name}: {split} labels have dtype {np.asarray(y).dtype}, not integers")
      if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
        raise InvalidDataError(f"{self.name}: {split} labels must be in [0, {self.num_classes}), "
                               f"found {int(y.min())}..{int(y.max())}")
      if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise InvalidDataError(f"{self.name}: {split} inputs hold {int(np.sum(~np.isfinite(x)))} NaN/inf values")
    if len(self.train_x) == 0:
      raise InvalidDataError(f"{self.name}: the training split is empty")
    return self

  def subset(self, train: int | None = None, test: int | None = None) -> Dataset:
    """The first ``train`` / ``test`` examples (for quick runs)."""
    return dataclasses.replace(self, train_x=self.train_x[:train], train_y=self.train_y[:train],
                               test_x=self.test_x[:test], test_y=self.test_y[:test])
