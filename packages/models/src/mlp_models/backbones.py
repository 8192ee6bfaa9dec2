"""Where things are inside each torchvision backbone that :class:`VisionModel` wraps.

torchvision's classifiers differ in layout: a ResNet has ``conv1 ... layer4, avgpool, fc``;
EfficientNet and MobileNetV3 have ``features`` (a stem conv, then blocks), ``avgpool`` and a
``classifier`` whose last Linear is the head. Naming the parts per family lets one forward pass
checkpoint the stages, one freeze keep the classifier trainable, and one loader skip the head,
without changing any parameter name (so torchvision state dicts load as they are).

Which backbones exist is declared once, in :mod:`mlp_models.vision`, with ``@backbone``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class BackboneLayout:
    builder: Callable[..., nn.Module]
    # Modules before the stages, run one after another on the image.
    stem: tuple[str, ...]
    # Gradient checkpointing wraps each of these; found on the built network (their count
    # differs between EfficientNet and MobileNet variants).
    stages: Callable[[nn.Module], tuple[str, ...]]
    pool: str
    # Everything after pooling and flattening; stays trainable when the backbone is frozen.
    classifier: str
    # The final Linear: sized for num_classes, left new when pretrained weights have other classes.
    head: str
    # The Conv2d that reads the image; replaced when in_channels is not 3.
    first_conv: str


def _resnet_stages(network: nn.Module) -> tuple[str, ...]:
    return _RESNET_STAGES


def _feature_blocks(network: nn.Module) -> tuple[str, ...]:
    # features.0 is the stem conv; every block after it is a stage.
    blocks = len(list(network.get_submodule("features").children()))
    return tuple(f"features.{index}" for index in range(1, blocks))


def resnet_layout(builder: Callable[..., nn.Module]) -> BackboneLayout:
    """A torchvision ResNet: ``conv1 ... layer4, avgpool, fc``."""
    return BackboneLayout(
        builder=builder,
        stem=("conv1", "bn1", "relu", "maxpool"),
        stages=_resnet_stages,
        pool="avgpool",
        classifier="fc",
        head="fc",
        first_conv="conv1",
    )


def features_layout(builder: Callable[..., nn.Module], *, head: str) -> BackboneLayout:
    """A torchvision EfficientNet or MobileNet: ``features``, ``avgpool``, ``classifier``."""
    return BackboneLayout(
        builder=builder,
        stem=("features.0",),
        stages=_feature_blocks,
        pool="avgpool",
        classifier="classifier",
        head=head,
        first_conv="features.0.0",
    )
