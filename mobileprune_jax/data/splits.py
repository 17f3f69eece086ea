"""A validation split held out of the training data, and random-shift augmentation of image batches.

Both are functions of a seed only, so a run and its resume see the same split and the same
augmented batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_VALIDATION_STREAM = 0x7A11D  # keeps the split's random stream apart from the batch order's


def hold_out(ds, fraction: float, seed: int):
  """``ds`` with ``round(fraction · N)`` training examples moved to its validation split.

  The held-out examples are drawn uniformly by ``seed`` (the same ones for every run with that
  seed, whatever its method); both splits keep the original order of the examples.

  Raises:
    ValueError: ``fraction`` outside (0, 1), a split that would be empty, or ``ds`` already has a
      validation split (HAR folds).
  """
  if not 0 < fraction < 1:
    raise ValueError(f"a validation fraction must be in (0, 1), got {fraction!r}")
  if ds.val_x is not None:
    raise ValueError(f"{ds.name} already has a validation split (its fold); do not set val_fraction")
  n = len(ds.train_x)
  n_val = int(round(fraction * n))
  if not 0 < n_val < n:
    raise ValueError(f"val_fraction {fraction} of {n} training examples of {ds.name} leaves an empty split")
  rng = np.random.default_rng([seed, _VALIDATION_STREAM])
  held = np.zeros(n, bool)
  held[rng.choice(n, n_val, replace=False)] = True
  return dataclasses.replace(ds, train_x=ds.train_x[~held], train_y=ds.train_y[~held], val_x=ds.train_x[held],
                             val_y=ds.train_y[held])


def shift_images(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
  """Each (H, W, C) image of ``x`` translated by (dy, dx) ~ U{-max_shift..max_shift}², zero-filled.

  out[n, i, j] = x[n, i - dy_n, j - dx_n] where that index is inside the image, else 0.
  """
  if max_shift == 0:
    return x
  n, h, w = x.shape[:3]
  dy, dx = rng.integers(-max_shift, max_shift + 1, size=(2, n))
  s = max_shift
  padded = np.pad(x, ((0, 0), (s, s), (s, s)) + ((0, 0),) * (x.ndim - 3))
  rows = (np.arange(h)[None, :] + s - dy[:, None])[:, :, None]
  cols = (np.arange(w)[None, :] + s - dx[:, None])[:, None, :]
  return padded[np.arange(n)[:, None, None], rows, cols]
