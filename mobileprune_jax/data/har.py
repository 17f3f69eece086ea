"""Raw-file loaders of the HAR sensor data sets (WISDM v1.1, UCI-HAR, PAMAP2), docs/algorithms.md §F.

Preprocessing as in MobilePrune's code: drop NaN rows (PAMAP2: interpolate), z-score every
channel, cut windows (label = the window's most frequent label), and split:

* WISDM / PAMAP2: shuffle the windows (seed 10), 80 % train+validation / 20 % test; the
  validation set is the ``fold``-th contiguous fifth of the 80 % (5-fold CV).
* UCI-HAR: the official train/test split; the validation set is the ``fold``-th fifth of train.

All channels are standardised with statistics of the whole data set (the official notebook
leaves two UCI-HAR channels unscaled; we do not copy that quirk).
"""

from __future__ import annotations

import pathlib

import numpy as np

from mobileprune_jax.data.dataset import Dataset
from mobileprune_jax.data.errors import DataUnavailableError, InvalidDataError

EXPECTED = {
    "wisdm": "WISDM_ar_v1.1_raw.txt",
    "uci_har": "'UCI HAR Dataset/' with train/ and test/ (Inertial Signals + y_*.txt)",
    "pamap2": "PAMAP2_Dataset/Protocol/subject10{1..9}.dat",
}
WISDM_CLASSES = ("Walking", "Jogging", "Upstairs", "Downstairs", "Sitting", "Standing")
UCI_SIGNALS = ("body_acc_x", "body_acc_y", "body_acc_z", "body_gyro_x", "body_gyro_y", "body_gyro_z",
               "total_acc_x", "total_acc_y", "total_acc_z")
PAMAP2_ACTIVITIES = (1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17, 24)
# per IMU (17 columns): temperature, acc16 xyz, acc6 xyz, gyro xyz, mag xyz, orientation (4, invalid)
_PAMAP2_IMU_KEEP = list(range(13))
PAMAP2_COLUMNS = [2] + [3 + 17 * imu + c for imu in range(3) for c in _PAMAP2_IMU_KEEP]  # 40 channels
SETTINGS = {"wisdm": (80, 40), "uci_har": (128, 128), "pamap2": (128, 64)}  # window, step


def zscore(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  return ((x - mean) / std).astype(np.float32)


def windows(signal: np.ndarray, labels: np.ndarray, window: int, step: int,
            source: str = "the signal") -> tuple[np.ndarray, np.ndarray]:
  """Sliding windows (N, window, C) and their mode labels (ties: the smallest label)."""
  if len(signal) < window:
    raise InvalidDataError(f"{source}: {len(signal)} readings, fewer than one window of {window}")
  starts = np.arange(0, len(signal) - window + 1, step)
  x = np.stack([signal[s : s + window] for s in starts]) if len(starts) else np.zeros((0, window, signal.shape[1]))
  y = np.array([np.bincount(labels[s : s + window]).argmax() for s in starts], np.int32)
  return x.astype(np.float32), y


def _standardise(data: np.ndarray) -> np.ndarray:
  return zscore(data, data.mean(0), data.std(0) + 1e-8)


def _shuffle_split(x, y, fold: int, seed: int = 10):
  """80/20 shuffle split; validation = the fold-th contiguous fifth of the 80 %."""
  order = np.random.default_rng(seed).permutation(len(x))
  x, y = x[order], y[order]
  n_test = len(x) // 5
  train_x, train_y, test_x, test_y = x[: len(x) - n_test], y[: len(x) - n_test], x[len(x) - n_test :], y[len(x) - n_test :]
  return _fold(train_x, train_y, fold) + (test_x, test_y)


def _fold(x, y, fold: int):
  if not 0 <= fold < 5:
    raise ValueError(f"fold must be in 0..4, got {fold}")
  bounds = np.linspace(0, len(x), 6).astype(int)
  val = np.zeros(len(x), bool)
  val[bounds[fold] : bounds[fold + 1]] = True
  return x[~val], y[~val], x[val], y[val]


def read_wisdm(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(signal (T, 3), labels (T,)) from WISDM_ar_v1.1_raw.txt ("user,activity,time,x,y,z;")."""
  text = path.read_text(errors="ignore").replace("\n", ";")
  rows, labels = [], []
  classes = {c: i for i, c in enumerate(WISDM_CLASSES)}
  for record in text.split(";"):
    parts = record.strip().strip(",").split(",")
    if len(parts) != 6 or parts[1] not in classes:
      continue
    try:
      xyz = [float(v) for v in parts[3:6]]
    except ValueError:
      continue
    if np.all(np.isfinite(xyz)):
      rows.append(xyz)
      labels.append(classes[parts[1]])
  if not rows:
    raise InvalidDataError(f"{path}: no valid 'user,activity,time,x,y,z;' record")
  return np.asarray(rows, np.float64), np.asarray(labels, np.int64)


def read_uci_har(root: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(windows (N, 128, 9), labels 0..5) of the official split."""
  base = root / split
  signals = [_table(base / "Inertial Signals" / f"{s}_{split}.txt", float) for s in UCI_SIGNALS]
  y = _table(base / f"y_{split}.txt", int).reshape(-1) - 1
  for s, signal in zip(UCI_SIGNALS, signals):
    if signal.shape != (len(y), SETTINGS["uci_har"][0]):
      raise InvalidDataError(f"{base / 'Inertial Signals' / f'{s}_{split}.txt'}: {signal.shape[0]} windows of "
                             f"{signal.shape[1]} readings, expected {len(y)} (one per label) of {SETTINGS['uci_har'][0]}")
  return np.stack(signals, axis=-1).astype(np.float64), y


def _table(path: pathlib.Path, dtype: type) -> np.ndarray:
  """A whitespace-separated numeric table (2-D), or one line of InvalidDataError naming the file."""
  try:
    return np.loadtxt(path, dtype=np.float64 if dtype is float else np.int64, ndmin=2)
  except (ValueError, OSError) as e:
    raise InvalidDataError(f"{path}: not a numeric table ({str(e).splitlines()[0]})") from None


def read_pamap2(protocol_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(signal (T, 40), labels 0..11) of subjects 101–109; activity 0 dropped, NaNs interpolated."""
  xs, ys = [], []
  codes = {a: i for i, a in enumerate(PAMAP2_ACTIVITIES)}
  files = sorted(protocol_dir.glob("subject10[1-9].dat"))
  if not files:
    raise FileNotFoundError(f"{protocol_dir}: no subject10*.dat files")
  for f in files:
    data = np.genfromtxt(f, dtype=np.float64)  # non-numeric → NaN
    data = np.atleast_2d(data)
    if data.size == 0 or data.shape[1] <= max(PAMAP2_COLUMNS):
      raise InvalidDataError(f"{f}: {data.shape[1] if data.size else 0} columns, expected 54 (timestamp, activity, "
                             "heart rate, 3 IMUs of 17)")
    cols = data[:, PAMAP2_COLUMNS]
    for c in range(cols.shape[1]):  # linear interpolation over NaNs
      col = cols[:, c]
      bad = np.isnan(col)
      if bad.all():
        col[:] = 0.0
      elif bad.any():
        col[bad] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), col[~bad])
    act = data[:, 1].astype(np.int64)
    keep = np.isin(act, PAMAP2_ACTIVITIES)
    xs.append(cols[keep])
    ys.append(np.array([codes[a] for a in act[keep]], np.int64))
  return np.concatenate(xs), np.concatenate(ys)


def _find(root: pathlib.Path, name: str) -> pathlib.Path | None:
  if (root / name).exists():
    return root / name
  hits = sorted(root.rglob(name))
  return hits[0] if hits else None


def load(name: str, data_dir: str, fold: int = 0, **_):
  """Loads a HAR data set from its raw files under ``data_dir`` (searched recursively)."""
  root = pathlib.Path(data_dir)
  window, step = SETTINGS[name]
  if name == "wisdm":
    path = _find(root, "WISDM_ar_v1.1_raw.txt")
    if path is None:
      raise DataUnavailableError(f"{root}: no {EXPECTED[name]}")
    signal, labels = read_wisdm(path)
    x, y = windows(_standardise(signal), labels, window, step, str(path))
    train_x, train_y, val_x, val_y, test_x, test_y = _shuffle_split(x, y, fold)
    classes = len(WISDM_CLASSES)
  elif name == "uci_har":
    ytrain = _find(root, "y_train.txt")
    if ytrain is None:
      raise DataUnavailableError(f"{root}: no {EXPECTED[name]}")
    base = ytrain.parent.parent
    tr_x, tr_y = read_uci_har(base, "train")
    te_x, te_y = read_uci_har(base, "test")
    flat = np.concatenate([tr_x, te_x]).reshape(-1, tr_x.shape[-1])
    mean, std = flat.mean(0), flat.std(0) + 1e-8
    train_x, train_y, val_x, val_y = _fold(zscore(tr_x, mean, std), tr_y.astype(np.int32), fold)
    test_x, test_y = zscore(te_x, mean, std), te_y.astype(np.int32)
    classes = 6
  elif name == "pamap2":
    anyfile = _find(root, "subject101.dat")
    if anyfile is None:
      raise DataUnavailableError(f"{root}: no {EXPECTED[name]}")
    signal, labels = read_pamap2(anyfile.parent)
    x, y = windows(_standardise(signal), labels, window, step, str(anyfile.parent))
    train_x, train_y, val_x, val_y, test_x, test_y = _shuffle_split(x, y, fold)
    classes = len(PAMAP2_ACTIVITIES)
  else:
    raise ValueError(f"unknown HAR data set {name!r}")
  return Dataset(name, train_x, train_y.astype(np.int32), test_x, test_y.astype(np.int32), classes,
                 val_x=val_x, val_y=val_y.astype(np.int32))
