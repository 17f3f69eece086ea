"""Data sets as numpy arrays: the embedded MNIST subset, tfds, local IDX files, HAR raw files.

``load(name, data_dir=None, **options)`` returns a ``Dataset`` with uint8/float images (N, H, W, C)
or sensor windows (N, T, C), int labels, and the number of classes. Nothing here downloads at
run time unless a tfds name is asked for and the data is not prepared (then it fails fast
with a message saying how to get it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from mobileprune_jax.data import har, splits, tiny_imagenet
from mobileprune_jax.data.dataset import Dataset
from mobileprune_jax.data.embedded import load_mnist_subset
from mobileprune_jax.data.errors import DataUnavailableError, InvalidDataError
from mobileprune_jax.data.idx import find_idx_dir, load_idx_dataset
from mobileprune_jax.data.tfds_loader import load_tfds


def _images(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  return (x.astype(np.float32) / 255.0) if x.dtype == np.uint8 else x.astype(np.float32)


def _mnist_subset(data_dir: str | None = None, **_) -> Dataset:
  d = load_mnist_subset()
  return Dataset("mnist_subset", _images(d["train_images"]), d["train_labels"].astype(np.int32),
                 _images(d["test_images"]), d["test_labels"].astype(np.int32), 10)


def _idx(name: str) -> Callable[..., Dataset]:
  def load(data_dir: str | None = None, **_) -> Dataset:
    directory = data_dir or find_idx_dir(name)
    if directory is None:
      raise DataUnavailableError(
          f"no IDX files for {name!r}: pass --config.data_dir=DIR with train-images-idx3-ubyte[.gz], "
          "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
          + (" (Debian: apt-get install dataset-fashion-mnist)" if "fashion" in name else ""))
    (tx, ty), (vx, vy) = load_idx_dataset(directory)
    return Dataset(name, _images(tx), ty.astype(np.int32), _images(vx), vy.astype(np.int32), 10)

  return load


def _tfds(name: str, classes: int) -> Callable[..., Dataset]:
  def load(data_dir: str | None = None, **_) -> Dataset:
    (tx, ty), (vx, vy) = load_tfds(name, data_dir)
    return Dataset(name, _images(tx), ty.astype(np.int32), _images(vx), vy.astype(np.int32), classes)

  return load


def _har(name: str) -> Callable[..., Dataset]:
  def load(data_dir: str | None = None, **options) -> Dataset:
    if not data_dir:
      raise DataUnavailableError(f"{name!r} needs --config.data_dir pointing at the raw files ({har.EXPECTED[name]})")
    return har.load(name, data_dir, **options)

  return load


def _tiny_imagenet(data_dir: str | None = None, **_) -> Dataset:
  root = tiny_imagenet.find_root(data_dir) if data_dir else None
  if root is None:
    raise DataUnavailableError(
        "tiny_imagenet needs --config.data_dir pointing at the unzipped tiny-imagenet-200 directory (with wnids.txt, "
        "train/, val/) from http://cs231n.stanford.edu/tiny-imagenet-200.zip")
  (tx, ty), (vx, vy) = tiny_imagenet.read(root)
  return Dataset("tiny_imagenet", _images(tx), ty, _images(vx), vy, 200)


def _basic_motions(data_dir: str | None = None, **_) -> Dataset:
  try:
    from aeon.datasets import load_basic_motions
  except ImportError as e:
    raise DataUnavailableError("basic_motions needs the optional package aeon: pip install aeon") from e

  xs, ys = [], []
  for split in ("train", "test"):
    x, y = load_basic_motions(split=split)
    xs.append(np.transpose(np.asarray(x, np.float32), (0, 2, 1)))  # (N, C, T) -> (N, T, C)
    ys.append(np.asarray(y))
  labels = {v: i for i, v in enumerate(sorted(set(ys[0].tolist())))}
  y_train, y_test = (np.array([labels[v] for v in y], np.int32) for y in ys)
  mean, std = xs[0].reshape(-1, xs[0].shape[-1]).mean(0), xs[0].reshape(-1, xs[0].shape[-1]).std(0) + 1e-8
  return Dataset("basic_motions", har.zscore(xs[0], mean, std), y_train, har.zscore(xs[1], mean, std), y_test, len(labels))


LOADERS: dict[str, Callable[..., Dataset]] = {
    "mnist_subset": _mnist_subset,
    "mnist": _tfds("mnist", 10),
    "fashion_mnist": _tfds("fashion_mnist", 10),
    "cifar10": _tfds("cifar10", 10),
    "cifar100": _tfds("cifar100", 100),
    "mnist_idx": _idx("mnist"),
    "fashion_mnist_idx": _idx("fashion_mnist"),
    "wisdm": _har("wisdm"),
    "uci_har": _har("uci_har"),
    "pamap2": _har("pamap2"),
    "basic_motions": _basic_motions,
    "tiny_imagenet": _tiny_imagenet,
}


def load(name: str, data_dir: str | None = None, **options) -> Dataset:
  """Loads a data set by name (see ``LOADERS``) and checks it (``Dataset.check``)."""
  if name not in LOADERS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
  return LOADERS[name](data_dir=data_dir or None, **options).check()


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, skip: int = 0,
            shuffle: bool = True, shift: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Full batches of one epoch in a deterministic order (seeded); ``skip`` drops the first ones.

  ``shift`` > 0 translates every image of batch i by up to ``shift`` pixels (``splits.shift_images``,
  drawn from the seed and i, so a skipped-to batch is the one an uninterrupted epoch would see).
  """
  order = np.random.default_rng(seed).permutation(len(x)) if shuffle else np.arange(len(x))
  n = len(x) // batch_size
  for i in range(skip, n):
    idx = order[i * batch_size : (i + 1) * batch_size]
    xb = x[idx]
    if shift:
      xb = splits.shift_images(xb, shift, np.random.default_rng([seed, i]))
    yield xb, y[idx]


__all__ = ["Dataset", "DataUnavailableError", "InvalidDataError", "LOADERS", "batches", "load", "splits"]
