"""Tiny-ImageNet-200 from its official zip layout (cs231n): 64×64 RGB, 200 classes, 100k train / 10k val.

Layout (``tiny-imagenet-200/`` as unzipped)::

    wnids.txt                               the 200 class ids, one per line (label = line index)
    train/<wnid>/images/<wnid>_<i>.JPEG     500 per class
    val/images/val_<i>.JPEG                 10,000
    val/val_annotations.txt                 "<file>\\t<wnid>\\t<bbox...>"

The official test split has no labels, so ``val`` is used as the test set (as EigenDamage and
MobilePrune do). Decoding 110k JPEGs takes a few minutes; the arrays are cached next to the data
(``mobileprune_cache.npz``) when that directory is writable.
"""

from __future__ import annotations

import pathlib

import numpy as np

CACHE = "mobileprune_cache.npz"


def find_root(data_dir: str | pathlib.Path) -> pathlib.Path | None:
  """``data_dir`` itself or its ``tiny-imagenet-200`` child, whichever holds wnids.txt."""
  for root in (pathlib.Path(data_dir), pathlib.Path(data_dir) / "tiny-imagenet-200"):
    if (root / "wnids.txt").is_file():
      return root
  return None


def _decode(paths: list[pathlib.Path]) -> np.ndarray:
  try:
    from PIL import Image
  except ImportError as e:
    raise ImportError("reading Tiny-ImageNet JPEGs needs Pillow: pip install pillow") from e
  out = np.empty((len(paths), 64, 64, 3), np.uint8)
  for i, path in enumerate(paths):
    with Image.open(path) as im:
      out[i] = np.asarray(im.convert("RGB").resize((64, 64)))
  return out


def read(root: pathlib.Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """((train images, labels), (val images, labels)); images uint8 (N, 64, 64, 3)."""
  cache = root / CACHE
  if cache.is_file():
    with np.load(cache) as z:
      return (z["train_x"], z["train_y"]), (z["test_x"], z["test_y"])
  wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
  label = {w: i for i, w in enumerate(wnids)}
  train_paths, train_y = [], []
  for wnid in wnids:
    files = sorted((root / "train" / wnid / "images").glob("*.JPEG"))
    if not files:
      raise FileNotFoundError(f"{root / 'train' / wnid / 'images'}: no JPEG files")
    train_paths += files
    train_y += [label[wnid]] * len(files)
  val_paths, val_y = [], []
  for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
    if not line.strip():
      continue
    name, wnid = line.split("\t")[:2]
    if wnid not in label:
      raise ValueError(f"val_annotations.txt: class {wnid!r} of {name} is not in wnids.txt")
    val_paths.append(root / "val" / "images" / name)
    val_y.append(label[wnid])
  train = (_decode(train_paths), np.asarray(train_y, np.int32))
  test = (_decode(val_paths), np.asarray(val_y, np.int32))
  try:
    np.savez(cache, train_x=train[0], train_y=train[1], test_x=test[0], test_y=test[1])
  except OSError:
    pass  # read-only data directory: decode again next time
  return train, test
