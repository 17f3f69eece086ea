"""experiments/reproduce.py: the tables and plots regenerate from run directories."""

import json
import pathlib

import pytest

from mobileprune_jax import config as config_lib
from mobileprune_jax.train import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
reproduce = config_lib.import_file(REPO / "experiments" / "reproduce.py")

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One real (tiny) LeNet-300 MobilePrune run, plus copies as seeds 1 and 2 with set accuracies and params."""
  root = tmp_path_factory.mktemp("runs")
  wd = reproduce.workdir(root, "mnist_subset", "lenet300", "mobileprune", 0)
  cfg = config_lib.load_config(f"{reproduce.CONFIG}:lenet300,mobileprune,mnist_subset")
  config_lib.apply_overrides(cfg, ["train_subset=1000", "test_subset=500", "pretrain.epochs=1", "prune.iterations=1",
                                   "prune.epochs=2", "retrain.epochs=1", "progress=False", "data_parallel=False",
                                   "coef.neuron=0.3"])
  s0 = pipeline.run(cfg, wd, log=lambda *_: None)
  for seed, acc, params in ((1, 0.80, 1000), (2, 0.90, 3000)):
    s = dict(s0, seed=seed, pruned_accuracy=acc, params_remaining=params)
    d = reproduce.workdir(root, "mnist_subset", "lenet300", "mobileprune", seed)
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(s))
  return root, s0


def test_report_tables_hold_the_seed_statistics(runs, tmp_path):
  root, s0 = runs
  written = reproduce.report(root, tmp_path)
  table = (tmp_path / "mnist_subset.md").read_text()
  row = next(line for line in table.splitlines() if line.startswith("| lenet300 | MobilePrune (prox-SGD)"))
  cells = [c.strip() for c in row.split("|")[1:-1]]
  accs = [100 * s0["pruned_accuracy"], 80.0, 90.0]
  mean = sum(accs) / 3
  std = (sum((a - mean) ** 2 for a in accs) / 2) ** 0.5  # sample std, by hand
  assert cells[2] == "3"
  assert cells[4] == f"{mean:.2f} ± {std:.2f}"
  params = [s0["params_remaining"], 1000, 3000]
  assert cells[5].startswith(f"{sum(params) / 3:,.0f} ± ")
  assert cells[9] == f"{s0['architecture_dense']} → {s0['architecture']}"
  pngs = [p for p in written if p.suffix == ".png"]
  assert {p.name for p in pngs} == {"mnist_subset_accuracy_vs_params.png", "mnist_subset_lenet300_widths.png"}
  for p in pngs:
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
  side = (tmp_path / "paper_vs_ours.md").read_text()
  # LeNet-300: our prox-SGD cell (no PALM run here); LeNet-5: no run; CIFAR rows: not runnable here, config named
  assert "| MobilePrune | CIFAR-10 | VGG-like |" in side and "paper_mobileprune_vgglike_cifar10" in side
  lenet300 = [x for x in side.splitlines() if x.startswith("| MobilePrune | MNIST | LeNet-300-100")]
  assert len(lenet300) == 1 and "MobilePrune (prox-SGD)" in lenet300[0]
  assert f"→ {mean:.2f} ± {std:.2f}" in lenet300[0] and "⚠ mnist_subset" in lenet300[0]
  lenet5 = [x for x in side.splitlines() if x.startswith("| MobilePrune | MNIST | LeNet-5 |")]
  assert len(lenet5) == 1 and "no run of this cell" in lenet5[0]


def test_side_by_side_uses_our_cell(runs, tmp_path):
  root, s0 = runs
  # present the prox-SGD cell as the PALM one: the LeNet-300 paper row must show its numbers, marked ⚠
  d = reproduce.workdir(root, "mnist_subset", "lenet300", "mobileprune_palm", 0)
  d.mkdir(parents=True, exist_ok=True)
  (d / "summary.json").write_text(json.dumps(dict(s0, mode="palm")))
  reproduce.report(root, tmp_path)
  side = (tmp_path / "paper_vs_ours.md").read_text()
  line = next(x for x in side.splitlines() if x.startswith("| MobilePrune | MNIST | LeNet-300-100"))
  assert "⚠ mnist_subset" in line and f"{100 * s0['pruned_accuracy']:.2f}" in line
  assert f"{s0['params_remaining']:,}" in line


def test_report_without_runs_says_what_to_do(tmp_path):
  with pytest.raises(SystemExit, match="reproduce.py run"):
    reproduce.report(tmp_path / "none", tmp_path / "out")
