"""tensorflow-datasets loaders that never sit in tfds's offline retry loop."""

from __future__ import annotations

import logging

import numpy as np

from mobileprune_jax.data.errors import DataUnavailableError


def load_tfds(name: str, data_dir: str | None = None):
  """((train_x, train_y), (test_x, test_y)) of a prepared tfds data set, or a clear error.

  Only data that is already prepared is read (``download=False``): offline, ``tfds.load``
  retries for minutes before failing, so we check first and fail at once.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataUnavailableError(f"{name!r} needs tensorflow-datasets: pip install tensorflow-datasets") from e
  absl_logger = logging.getLogger("absl")  # "Variant folder … has no dataset_info.json": said below in one line
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builder.is_prepared()
  finally:
    absl_logger.setLevel(level)
  if not prepared:
    raise DataUnavailableError(
        f"tfds data set {name!r} is not prepared in {builder.data_dir!r}. With network access run "
        f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}').download_and_prepare()\"` "
        "(or pass --config.data_dir=DIR where it is prepared); for MNIST-format files use the *_idx data sets")
  try:
    splits = tfds.as_numpy(builder.as_dataset(split=["train", "test"], batch_size=-1, as_supervised=True))
  except ImportError as e:
    raise DataUnavailableError(f"reading {name!r} from tfds needs TensorFlow: pip install tensorflow") from e
  (tx, ty), (vx, vy) = splits
  return (np.asarray(tx), np.asarray(ty)), (np.asarray(vx), np.asarray(vy))
