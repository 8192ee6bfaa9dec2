"""Image classifiers on torchvision backbones, each registered under the backbone's name.

Each backbone is declared once, at the end of this module, by a function named after it:
``@backbone def resnet18(): return resnet_layout(tv.resnet18)`` registers the model
``resnet18`` (``partial(VisionModel, "resnet18")``) with the layout it returns.

``create_model("resnet18", num_classes=3)`` builds the torchvision network with ``weights=None``
(nothing is ever downloaded) and a head for ``num_classes``. Transfer learning starts from a
local file: ``pretrained_weights="resnet18-f37072fd.pth"`` (a torchvision state dict, or a file
saved by :meth:`BaseModel.save`), then ``freeze_backbone()`` to train only the classifier.

Parameter names are torchvision's under ``network.``, so ``model.network`` is a plain
torchvision model and its state dict loads anywhere torchvision's does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision import models as tv

from mlp_core.batch import IMAGE
from mlp_core.errors import ConfigError, ModelError
from mlp_core.tensors import DYNAMIC, ModelSignature, TensorSpec
from mlp_models.arguments import check_bool, check_choice, check_int
from mlp_models.backbones import BackboneLayout, features_layout, resnet_layout
from mlp_models.base import BaseModel
from mlp_models.model_file import is_model_payload, load_tensors
from mlp_models.registry import register_model
from mlp_models.state_dicts import load_state_dict_checked

_RGB = 3
# Below this the backbones' five stride-2 steps leave less than one pixel.
MIN_IMAGE_SIZE = 32
_SAVED_PREFIX = "network."

# name -> layout of every declared backbone, filled by @backbone below.
BACKBONES: dict[str, BackboneLayout] = {}


class VisionModel(BaseModel):
    """A torchvision classifier with a new head, any input channel count and freezing."""

    supports_gradient_checkpointing = True

    def __init__(
        self,
        backbone: str,
        *,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 224,
        pretrained_weights: str | os.PathLike[str] | None = None,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = check_choice("VisionModel", "backbone", backbone, BACKBONES)
        self.task = "multiclass"
        self.num_classes = check_int(backbone, "num_classes", num_classes, minimum=2)
        self.in_channels = check_int(backbone, "in_channels", in_channels, minimum=1)
        self.image_size = check_int(backbone, "image_size", image_size, minimum=MIN_IMAGE_SIZE)
        check_bool(backbone, "freeze_backbone", freeze_backbone)
        if pretrained_weights is not None and not isinstance(
            pretrained_weights, (str, os.PathLike)
        ):
            raise ConfigError(
                f"model {backbone!r}: pretrained_weights: expected a local file path; "
                f"given {pretrained_weights!r}"
            )
        self.network = self.layout.builder(weights=None, num_classes=num_classes)
        if in_channels != _RGB:
            self._replace_first_conv()
        self._stages = self.layout.stages(self.network)
        self._backbone_frozen = False
        if pretrained_weights is not None:
            self.load_pretrained(pretrained_weights)
        if freeze_backbone:
            self.freeze_backbone()

    @property
    def model_name(self) -> str:
        return self.backbone

    @property
    def layout(self) -> BackboneLayout:
        # Looked up, not stored: the layout holds functions, and a model must stay picklable.
        return BACKBONES[self.backbone]

    def get_config(self) -> dict[str, Any]:
        # pretrained_weights is left out: the saved file holds the weights, and the original
        # file need not exist where the model is loaded again.
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "freeze_backbone": self._backbone_frozen,
        }

    def signature(self) -> ModelSignature:
        size = self.image_size
        image = TensorSpec(
            name=IMAGE, datatype="FP32", shape=(DYNAMIC, self.in_channels, size, size)
        )
        logits = TensorSpec(name="logits", datatype="FP32", shape=(DYNAMIC, self.num_classes))
        return ModelSignature(inputs=(image,), outputs=(logits,))

    def forward(self, image: Tensor) -> Tensor:
        # The same computation as torchvision's own forward, spelled out stage by stage so
        # that each stage can be checkpointed.
        x = image
        for name in self.layout.stem:
            x = self.network.get_submodule(name)(x)
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for name in self._stages:
            stage = self.network.get_submodule(name)
            x = checkpoint(stage, x, use_reentrant=False) if recompute else stage(x)
        x = torch.flatten(self.network.get_submodule(self.layout.pool)(x), 1)
        return self.network.get_submodule(self.layout.classifier)(x)

    # -- transfer learning ------------------------------------------------------------------

    @property
    def backbone_frozen(self) -> bool:
        return self._backbone_frozen

    def freeze_backbone(self) -> None:
        """Stop gradients to everything but the classifier (the layers after pooling).

        BatchNorm running statistics still update in train mode; call ``.eval()`` on the
        backbone modules as well to keep them fixed.
        """
        self._set_backbone_trainable(False)

    def unfreeze_backbone(self) -> None:
        self._set_backbone_trainable(True)

    def load_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Load backbone weights from a local file; the head stays new if its size differs.

        The file is a torchvision state dict for this backbone or a file written by
        :meth:`save`. With ``in_channels`` other than 3, the first conv's RGB filters are
        averaged and spread over the new channels (scaled so a grey image excites it as before).
        """
        file = Path(path)
        expected = f"a local torchvision {self.backbone} state dict (nothing is downloaded)"
        payload = load_tensors(file, what="pretrained weights file", expected=expected)
        state = _network_state(file, payload, expected)
        own = self.network.state_dict()
        for suffix in ("weight", "bias"):
            key = f"{self.layout.head}.{suffix}"
            if key in own and (key not in state or state[key].shape != own[key].shape):
                state[key] = own[key]
        conv_key = f"{self.layout.first_conv}.weight"
        conv = state.get(conv_key)
        if conv is not None and conv.dim() == 4 and conv.shape[1] == _RGB != self.in_channels:
            state[conv_key] = _spread_rgb_filters(conv, self.in_channels)
        load_state_dict_checked(
            self.network,
            state,
            source=str(file),
            target=f"{self.backbone} (num_classes={self.num_classes}, "
            f"in_channels={self.in_channels})",
        )

    def _set_backbone_trainable(self, trainable: bool) -> None:
        classifier = self.layout.classifier + "."
        for name, parameter in self.network.named_parameters():
            if not name.startswith(classifier):
                parameter.requires_grad_(trainable)
        self._backbone_frozen = not trainable

    def _replace_first_conv(self) -> None:
        old = self.network.get_submodule(self.layout.first_conv)
        if not isinstance(old, nn.Conv2d):
            raise ModelError(f"{self.backbone}: {self.layout.first_conv} is not a Conv2d")
        new = nn.Conv2d(
            self.in_channels,
            old.out_channels,
            kernel_size=_pair(old.kernel_size),
            stride=_pair(old.stride),
            padding=old.padding if isinstance(old.padding, str) else _pair(old.padding),
            dilation=_pair(old.dilation),
            groups=old.groups,
            bias=old.bias is not None,
        )
        # The initialisation torchvision gives every conv of these families.
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        self.network.set_submodule(self.layout.first_conv, new)


def _network_state(file: Path, payload: object, expected: str) -> dict[str, Tensor]:
    if is_model_payload(payload):
        saved = payload["state_dict"]
        return {
            key.removeprefix(_SAVED_PREFIX): tensor
            for key, tensor in saved.items()
            if isinstance(tensor, Tensor)
        }
    if (
        isinstance(payload, dict)
        and payload
        and all(
            isinstance(key, str) and isinstance(value, Tensor) for key, value in payload.items()
        )
    ):
        return dict(payload)
    raise ModelError(
        f"pretrained weights file {file} is not a state dict (a mapping of names to tensors); "
        f"expected {expected}"
    )


def _pair(sizes: tuple[int, ...]) -> tuple[int, int]:
    # Conv2d keeps its sizes as tuples of two, typed as tuples of any length.
    return sizes[0], sizes[1]


def _spread_rgb_filters(weight: Tensor, in_channels: int) -> Tensor:
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (_RGB / in_channels)


def backbone(declare: Callable[[], BackboneLayout]) -> partial[VisionModel]:
    """Declare a backbone: registers ``VisionModel`` on the layout ``declare`` returns, as a
    model named after the function (timm's ``@register_model``, one line per model)."""
    name = declare.__name__
    BACKBONES[name] = declare()
    return register_model(name)(partial(VisionModel, name))


@backbone
def resnet18() -> BackboneLayout:
    return resnet_layout(tv.resnet18)


@backbone
def resnet34() -> BackboneLayout:
    return resnet_layout(tv.resnet34)


@backbone
def resnet50() -> BackboneLayout:
    return resnet_layout(tv.resnet50)


@backbone
def efficientnet_b0() -> BackboneLayout:
    return features_layout(tv.efficientnet_b0, head="classifier.1")


@backbone
def mobilenet_v3_small() -> BackboneLayout:
    return features_layout(tv.mobilenet_v3_small, head="classifier.3")


@backbone
def mobilenet_v3_large() -> BackboneLayout:
    return features_layout(tv.mobilenet_v3_large, head="classifier.3")
