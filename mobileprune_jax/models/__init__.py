"""Model zoo (Flax NNX, widths as constructor arguments) and a registry by name."""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

from mobileprune_jax.models.har import HARCNN
from mobileprune_jax.models.layers import max_pool_2x2
from mobileprune_jax.models.lenet import LeNet5, LeNet300100
from mobileprune_jax.models.mobilenet import MobileNetV2, mobilenet_v2
from mobileprune_jax.models.resnet import ResNetCifar, resnet20, resnet32_wide, resnet56
from mobileprune_jax.models.vgg import VGG, vgg_like_cifar, vgg_tiny_imagenet

MODELS: dict[str, Callable[..., nnx.Module]] = {
    "lenet300": LeNet300100,
    "lenet5": LeNet5,
    "vgg_like": vgg_like_cifar,
    "vgg16_tiny": lambda num_classes=200, **kw: vgg_tiny_imagenet(16, num_classes, **kw),
    "vgg19_tiny": lambda num_classes=200, **kw: vgg_tiny_imagenet(19, num_classes, **kw),
    "resnet32_wide": resnet32_wide,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "har_cnn": HARCNN,
    "mobilenet_v2": mobilenet_v2,
}


def create(name: str, *, seed: int = 0, **kwargs) -> nnx.Module:
  """Builds a zoo model by name (see ``MODELS``)."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
  return MODELS[name](rngs=nnx.Rngs(seed), **kwargs)


__all__ = ["MODELS", "create", "HARCNN", "LeNet5", "LeNet300100", "MobileNetV2", "mobilenet_v2", "ResNetCifar", "VGG", "resnet20", "max_pool_2x2",
           "resnet32_wide", "resnet56", "vgg_like_cifar", "vgg_tiny_imagenet"]
