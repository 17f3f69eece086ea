"""Data loaders on small files in the real formats, written by the tests."""

import gzip
import struct
import time

import numpy as np
import pytest

from mobileprune_jax import data
from mobileprune_jax.data import har, idx


def _write_idx(path, array, compress):
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
  payload = header + array.astype(np.uint8).tobytes()
  if compress:
    with gzip.open(str(path) + ".gz", "wb") as f:
      f.write(payload)
  else:
    path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_round_trip(tmp_path, compress):
  rng = np.random.default_rng(0)
  arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (7, 28, 28)), "train-labels-idx1-ubyte": rng.integers(0, 10, 7),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)), "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3)}
  for name, a in arrays.items():
    _write_idx(tmp_path / name, a, compress)
  ds = data.load("fashion_mnist_idx", str(tmp_path))
  assert ds.train_x.shape == (7, 28, 28, 1) and ds.test_x.shape == (3, 28, 28, 1)
  np.testing.assert_allclose(ds.train_x[..., 0] * 255, arrays["train-images-idx3-ubyte"], atol=1e-4)
  np.testing.assert_array_equal(ds.test_y, arrays["t10k-labels-idx1-ubyte"])
  (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
  with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
    idx.read_idx(tmp_path / "bad")


def test_idx_dims_whose_product_wraps_around_are_refused(tmp_path):
  """2³¹·2³¹·4 = 2⁶⁶ is 0 in 64-bit integers: the header must not pass for an empty file's."""
  (tmp_path / "crafted").write_bytes(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", 2**31, 2**31, 4))
  with pytest.raises(ValueError, match="expected 18446744073709551616 values"):
    idx.read_idx(tmp_path / "crafted")


def test_missing_idx_files_are_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    data.load("mnist_idx", str(tmp_path))


def test_embedded_subset():
  ds = data.load("mnist_subset")
  assert ds.train_x.shape == (8000, 28, 28, 1) and ds.test_x.shape == (2000, 28, 28, 1)
  assert ds.train_x.dtype == np.float32 and 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
  assert np.all(np.bincount(ds.test_y) == 200)


def test_tfds_offline_fails_fast_with_instructions(tmp_path):
  t0 = time.time()
  with pytest.raises(data.DataUnavailableError, match="not prepared"):
    data.load("mnist", str(tmp_path))
  assert time.time() - t0 < 30


def test_windows_take_the_mode_label():
  signal = np.arange(20, dtype=float)[:, None]
  labels = np.array([0] * 6 + [1] * 14)
  x, y = har.windows(signal, labels, window=8, step=4)
  assert x.shape == (4, 8, 1)
  np.testing.assert_array_equal(y, [0, 1, 1, 1])  # window 0: six 0s, two 1s
  np.testing.assert_array_equal(x[1, :, 0], np.arange(4, 12))


def test_wisdm_raw_format(tmp_path):
  rng = np.random.default_rng(1)
  lines = []
  for i in range(1000):
    act = har.WISDM_CLASSES[(i // 100) % 6]
    x, y, z = rng.normal(size=3)
    lines.append(f"{i % 7},{act},{1000 + i},{x:.4f},{y:.4f},{z:.4f};")
  lines.insert(10, "33,Jogging,49106062271000,5.012288,11.264028,0.95342433;")
  lines.insert(20, "3,Walking,1234,NaN,1.0,2.0;")  # dropped
  lines.insert(30, "broken,line")
  (tmp_path / "WISDM_ar_v1.1_raw.txt").write_text("\n".join(lines))
  ds = data.load("wisdm", str(tmp_path), fold=2)
  n_windows = (1001 - 80) // 40 + 1
  assert ds.train_x.shape[1:] == (80, 3)
  assert len(ds.train_x) + len(ds.val_x) + len(ds.test_x) == n_windows
  assert len(ds.test_x) == n_windows // 5
  assert ds.num_classes == 6
  allx = np.concatenate([ds.train_x, ds.val_x, ds.test_x]).reshape(-1, 3)
  assert abs(allx.mean()) < 0.2  # standardised


def test_uci_har_raw_format(tmp_path):
  rng = np.random.default_rng(2)
  root = tmp_path / "UCI HAR Dataset"
  for split, n in (("train", 10), ("test", 4)):
    (root / split / "Inertial Signals").mkdir(parents=True)
    for s in har.UCI_SIGNALS:
      np.savetxt(root / split / "Inertial Signals" / f"{s}_{split}.txt", rng.normal(size=(n, 128)))
    np.savetxt(root / split / f"y_{split}.txt", rng.integers(1, 7, n), fmt="%d")
  ds = data.load("uci_har", str(tmp_path), fold=0)
  assert ds.train_x.shape == (8, 128, 9) and ds.val_x.shape == (2, 128, 9) and ds.test_x.shape == (4, 128, 9)
  assert ds.train_y.min() >= 0 and ds.train_y.max() <= 5


def test_pamap2_raw_format(tmp_path):
  rng = np.random.default_rng(3)
  proto = tmp_path / "PAMAP2_Dataset" / "Protocol"
  proto.mkdir(parents=True)
  for subject in (101, 102):
    rows = []
    for t in range(400):
      act = [0, 1, 4, 24][(t // 100) % 4]
      vals = rng.normal(size=52)
      line = [f"{t * 0.01:.2f}", str(act)] + [f"{v:.4f}" for v in vals]
      if t % 9 == 0:
        line[2] = "NaN"  # heart rate is sparse in PAMAP2
      rows.append(" ".join(line))
    (proto / f"subject{subject}.dat").write_text("\n".join(rows))
  ds = data.load("pamap2", str(tmp_path))
  assert ds.train_x.shape[1:] == (128, 40)
  assert ds.num_classes == 12
  assert np.all(np.isfinite(ds.train_x))


def test_har_without_files_is_a_clear_error(tmp_path):
  with pytest.raises(data.DataUnavailableError, match="WISDM_ar_v1.1_raw.txt"):
    data.load("wisdm", str(tmp_path))
  with pytest.raises(data.DataUnavailableError, match="data_dir"):
    data.load("pamap2")


def test_basic_motions_from_aeon():
  pytest.importorskip("aeon")
  ds = data.load("basic_motions")
  assert ds.train_x.shape == (40, 100, 6) and ds.test_x.shape == (40, 100, 6) and ds.num_classes == 4
  assert ds.train_x.dtype == np.float32
  assert sorted(np.bincount(ds.train_y).tolist()) == [10, 10, 10, 10]
  # standardised with the training set's per-channel statistics
  np.testing.assert_allclose(ds.train_x.reshape(-1, 6).mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(ds.train_x.reshape(-1, 6).std(0), 1, atol=1e-3)


def _write_tiny_imagenet(root, wnids=("n01", "n02", "n03"), per_class=2, val=4):
  from PIL import Image

  rng = np.random.default_rng(0)
  (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
  pixels = {}
  for w in wnids:
    d = root / "train" / w / "images"
    d.mkdir(parents=True)
    for i in range(per_class):
      img = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (64, 64, 3)).copy()  # flat colour: JPEG-exact
      Image.fromarray(img).save(d / f"{w}_{i}.JPEG", quality=100)
      pixels[(w, i)] = img
  (root / "val" / "images").mkdir(parents=True)
  lines = []
  for i in range(val):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "val" / "images" / f"val_{i}.JPEG")
    lines.append(f"val_{i}.JPEG\t{wnids[(i * 2) % len(wnids)]}\t0\t0\t63\t63")
  (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
  return pixels


def test_tiny_imagenet_directory_layout_and_cache(tmp_path):
  pytest.importorskip("PIL")
  root = tmp_path / "tiny-imagenet-200"
  root.mkdir()
  pixels = _write_tiny_imagenet(root)
  ds = data.load("tiny_imagenet", str(tmp_path))  # finds the tiny-imagenet-200 child
  assert ds.train_x.shape == (6, 64, 64, 3) and ds.test_x.shape == (4, 64, 64, 3) and ds.num_classes == 200
  assert ds.train_y.tolist() == [0, 0, 1, 1, 2, 2]
  assert ds.test_y.tolist() == [0, 2, 1, 0]  # wnids n01, n03, n02, n01 by line index
  # the decoded pixels are the ones written (flat colours survive JPEG to within rounding)
  assert np.abs(ds.train_x[2] * 255 - pixels[("n02", 0)]).max() < 3
  assert (root / "mobileprune_cache.npz").exists()
  again = data.load("tiny_imagenet", str(root))
  np.testing.assert_array_equal(again.train_x, ds.train_x)


def test_tiny_imagenet_errors(tmp_path):
  with pytest.raises(data.DataUnavailableError, match="tiny-imagenet-200"):
    data.load("tiny_imagenet", str(tmp_path))
  with pytest.raises(data.DataUnavailableError, match="data_dir"):
    data.load("tiny_imagenet")
  root = tmp_path / "t"
  root.mkdir()
  _write_tiny_imagenet(root)
  (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
  with pytest.raises(ValueError, match="n99"):
    data.load("tiny_imagenet", str(root))


def _uci(root, window=128, n_labels=None, text=None):
  rng = np.random.default_rng(4)
  base = root / "UCI HAR Dataset"
  for split, n in (("train", 10), ("test", 4)):
    (base / split / "Inertial Signals").mkdir(parents=True)
    for i, s in enumerate(har.UCI_SIGNALS):
      path = base / split / "Inertial Signals" / f"{s}_{split}.txt"
      if text is not None and i == 3:
        path.write_text(text)
      else:
        np.savetxt(path, rng.normal(size=(n, window if i != 5 else 128)))
    np.savetxt(base / split / f"y_{split}.txt", rng.integers(1, 7, n_labels or n), fmt="%d")


@pytest.mark.parametrize("case, match", [
    ({"window": 127}, r"body_acc_x_train.txt: 10 windows of 127 readings, expected 10 \(one per label\) of 128"),
    ({"n_labels": 9}, r"body_acc_x_train.txt: 10 windows of 128 readings, expected 9 \(one per label\)"),
    ({"text": "0.1 0.2 oops\n"}, r"body_gyro_x_train.txt: not a numeric table"),
])
def test_damaged_uci_har_files_are_one_line_naming_the_file(tmp_path, case, match):
  _uci(tmp_path, **case)
  with pytest.raises(data.InvalidDataError, match=match):
    data.load("uci_har", str(tmp_path))


@pytest.mark.parametrize("text, match", [
    ("garbage\n1,Walking,1,a,b,c;\n", "no valid 'user,activity,time,x,y,z;' record"),
    ("".join(f"1,Walking,{i},1,2,3;\n" for i in range(30)), "30 readings, fewer than one window of 80"),
])
def test_wisdm_files_with_too_little_data_are_one_line(tmp_path, text, match):
  (tmp_path / "WISDM_ar_v1.1_raw.txt").write_text(text)
  with pytest.raises(data.InvalidDataError, match=match):
    data.load("wisdm", str(tmp_path))


@pytest.mark.parametrize("text", ["", "\n".join(" ".join(["1"] * 10) for _ in range(300))])
def test_pamap2_files_without_the_54_columns_are_one_line(tmp_path, text):
  proto = tmp_path / "PAMAP2_Dataset" / "Protocol"
  proto.mkdir(parents=True)
  (proto / "subject101.dat").write_text(text)
  with pytest.raises(data.InvalidDataError, match=r"subject101.dat: (0|10) columns, expected 54"):
    data.load("pamap2", str(tmp_path))
