"""The 1-D CNN of MobilePrune's sensor (HAR) experiments (docs/algorithms.md §F)."""

from __future__ import annotations

import jax
from flax import nnx

from mobileprune_jax.models.layers import flatten


class HARCNN(nnx.Module):
  """5 × [Conv1D(k, width, valid, no bias) + ReLU] → flatten → Dense(100) + ReLU → Dense(classes).

  Input (batch, time, channels). ``softmax_output=True`` puts the softmax inside the model as
  the paper's code does; by default the model returns logits.
  """

  def __init__(self, in_channels: int, num_classes: int, window: int, kernel: int,
               widths: tuple[int, ...] = (128,) * 5, hidden: int = 100, softmax_output: bool = False,
               *, rngs: nnx.Rngs):
    convs, cin, t = [], in_channels, window
    for width in widths:
      convs.append(nnx.Conv(cin, width, (kernel,), padding="VALID", use_bias=False, rngs=rngs))
      cin, t = width, t - kernel + 1
    if t <= 0:
      raise ValueError(f"window {window} is too short for {len(widths)} valid convs of size {kernel}")
    self.convs = nnx.List(convs)
    self.fc1 = nnx.Linear(t * cin, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)
    self.softmax_output = softmax_output

  def __call__(self, x, train: bool = False):
    for conv in self.convs:
      x = nnx.relu(conv(x))
    x = self.fc2(nnx.relu(self.fc1(flatten(x))))
    return jax.nn.softmax(x) if self.softmax_output else x
