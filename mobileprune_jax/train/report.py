"""The finishing stages of a run and its summary: shrink → measure → ``model/`` → export → ``summary.json``.

``finish`` is a function of the final model and run state only, so it is idempotent: a run
killed while finishing, or resumed after it finished, redoes it and writes the same files.
(Export latencies, when asked for, are measurements and vary.)
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
from flax import nnx

from mobileprune_jax import analysis, atomic, export, metrics, surgery, tree_arrays
from mobileprune_jax import data as data_lib
from mobileprune_jax.train import budget, events
from mobileprune_jax.train.state import RunState
from mobileprune_jax.train.steps import evaluate


def finish(cfg: ml_collections.ConfigDict, workdir: pathlib.Path, model: nnx.Module, ds: data_lib.Dataset, sample,
           spec: dict[str, Any], state: RunState, write: bool = True) -> dict[str, Any]:
  """Shrinks the final model, measures it, writes the shrunk model, summary.json (and TFLite files).

  With ``write=False`` (processes other than 0 of a multi-process run) nothing is written or exported; the summary
  is the same without the export entries. In a multi-process run the model is first copied to each host (every
  process holds the whole replicated model), so what follows runs on each process's own devices.
  """
  if jax.process_count() > 1:
    nnx.update(model, tree_arrays.host_copy(nnx.state(model)))
  # the final model at full width is the dense model's stand-in (every dense number is a function of the shapes;
  # the dense TFLite file then holds the final weights at full width: what a phone runs without surgery)
  dense = model
  structure = analysis.analyze(model, sample)  # one trace: the shrink plan and the dense model's stats
  shrunk, shrink_report = surgery.shrink_with_report(model, sample, graph=structure.graph, round_to=cfg.round_to)
  summary = {
      "name": cfg.name,
      "dataset": cfg.dataset,
      "model": cfg.model,
      "method": cfg.method,
      "mode": cfg.mode,
      "seed": cfg.seed,
      "base_accuracy": state.base_accuracy,
      "pruned_accuracy": evaluate(shrunk, ds.test_x, ds.test_y, cfg.eval_batch_size),
      "masked_accuracy": evaluate(model, ds.test_x, ds.test_y, cfg.eval_batch_size),
      "val_accuracy": evaluate(shrunk, ds.val_x, ds.val_y, cfg.eval_batch_size) if ds.val_x is not None else None,
      "base_val_accuracy": _base_val_accuracy(state.log),
      "train_size": len(ds.train_x),
      "val_size": 0 if ds.val_x is None else len(ds.val_x),
      "test_size": len(ds.test_x),
      "nonzero_params_masked": metrics.count_nonzero(nnx.state(model, nnx.Param)),
      **metrics.summary(dense, shrunk, sample, dense_graph=structure.graph),
      "shrink_max_abs_diff": shrink_report.max_abs_diff,
      "input_shape": list(ds.input_shape),
      "shrink": shrink_report.to_json(),
      "devices": jax.device_count(),
  }
  if cfg.round_to > 1:  # the saved model has rounded widths; the exact cut is reported beside it
    exact, _ = surgery.shrink_with_report(model, sample, check=False)  # its own trace: plans append notes to one
    unrounded = metrics.summary(dense, exact, sample)
    summary["round_to"] = cfg.round_to
    summary["unrounded"] = {k: unrounded[k] for k in ("params_remaining", "nonzero_params", "macs_pruned",
                                                      "macs_shrunk_dense", "architecture", "widths_after")}
  budget_entry = budget.summary_budget(cfg, summary, state.multiplier)
  if budget_entry is not None:
    summary["budget"] = budget_entry
  if not write:
    return summary
  surgery.save(workdir / "model", shrunk, factory=spec["name"], kwargs={"seed": spec["seed"], **spec["kwargs"]},
               cuts=shrink_report.cuts)
  events.reached("finish_model")
  if cfg.export.tflite:
    summary.update(export.compare(dense, shrunk, sample[:1], workdir / "tflite"))
    if cfg.export.quantize:
      q = cfg.export.quantize
      calibration = None
      if q == "int8":  # calibrated on training examples (never the test split), in order: the same every time
        n = min(len(ds.train_x), export.CALIBRATION_LIMIT)
        calibration = [ds.train_x[i : i + 100] for i in range(0, n, 100)]
      path = export.to_tflite(shrunk, sample[:1], workdir / "tflite" / f"pruned_{q}.tflite", quantize=q,
                              calibration_data=calibration)
      summary[f"tflite_bytes_pruned_{q}"] = path.stat().st_size
      if q == "int8":  # what int8 costs: agreement with the float32 shrunk model, accuracy on the test split
        a = export.agreement(path, shrunk, ds.test_x, ds.test_y)
        summary |= {"int8_top1_agreement": a["top1_agreement"], "int8_accuracy": a["accuracy_int8"],
                    "int8_float32_accuracy": a["accuracy_float32"]}
  atomic.write_text(workdir / "summary.json", json.dumps(summary, indent=1))
  return summary


def _base_val_accuracy(log: list[dict[str, Any]]) -> float | None:
  """The validation accuracy of the dense model: the last pretraining epoch's, or the ``init_from`` model's."""
  dense = [e for e in log if (e.get("phase") == "pretrain" or e.get("event") == "init_from") and "val_accuracy" in e]
  return dense[-1].get("val_accuracy") if dense else None


def format_summary(s: dict[str, Any]) -> str:
  """A small table: base vs pruned accuracy, params, MACs, architecture."""
  def pct(a, b):
    return f"{100 * a / b:.2f} %" if b else "-"

  base = s["base_accuracy"]
  rows = [
      ("model / data / method", f"{s['model']} / {s['dataset']} / {s['method']} ({s['mode']})"),
      ("accuracy base -> pruned", f"{base:.4f} -> {s['pruned_accuracy']:.4f}" if base is not None else f"{s['pruned_accuracy']:.4f}"),
      *([("validation accuracy", f"{s['base_val_accuracy']:.4f} -> {s['val_accuracy']:.4f}"
           if s.get("base_val_accuracy") is not None else f"{s['val_accuracy']:.4f}")]
        if s.get("val_accuracy") is not None else []),
      ("params (shrunk model)", f"{s['params_remaining']:,} / {s['params_total']:,} ({pct(s['params_remaining'], s['params_total'])})"),
      ("non-zero params", f"{s['nonzero_params']:,} ({pct(s['nonzero_params'], s['params_total'])})"),
      ("MACs dense -> pruned", f"{s['macs_dense']:,} -> {s['macs_pruned']:,} ({pct(s['macs_pruned'], s['macs_dense'])})"),
      ("architecture", f"{s['architecture_dense']} -> {s['architecture']} (filter sizes {s['filter_sizes'] or '-'})"),
      ("shrink parity (max |diff|)", f"{s['shrink_max_abs_diff']:.2e}"),
  ]
  if "budget" in s:
    b = s["budget"]
    reached = ", ".join(f"{k} {100 * b['reached'][k]:.2f} % (target {100 * v:.2f} %)" for k, v in b["target"].items())
    rows.append(("budget", f"{reached}, multiplier {b['multiplier']:.4g}"
                           + ("" if b["within_tolerance"] else "  NOT REACHED")))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
