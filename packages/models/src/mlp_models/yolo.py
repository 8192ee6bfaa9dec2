"""YOLO object detectors through ultralytics (``pip install 'mlp-models[yolo]'``, AGPL-3.0).

``create_model("yolo", arch="yolov8n.yaml", num_classes=3, class_names=[...])`` builds
ultralytics' ``DetectionModel`` from one of its architecture files (``yolov8n.yaml``,
``yolo11n.yaml``, ...: shipped inside ultralytics, so nothing is downloaded) or from a local
``.yaml``; ``weights="path/to/best.pt"`` starts from a local ultralytics checkpoint instead
(transfer learning: its backbone and neck are kept, the head is rebuilt for ``num_classes``
when the count differs). Nothing downloads, ever: a ``*.pt`` that is not a local file is a
:class:`~mlp_core.errors.ModelError` naming the path.

``model.network`` is the ultralytics ``DetectionModel`` (an ``nn.Module``). In eval mode
``model(image)`` takes ``[B, 3, H, W]`` float pixels in [0, 1] and returns ultralytics' raw
head ``[B, 4 + nc, A]``: box centre x, centre y, width and height in input pixels, then one
sigmoid score per class, for each of the ``A`` anchor points (``A = sum((H/s) * (W/s))`` over
the strides 8, 16, 32). No NMS: that is the consumer's (ultralytics' own ``val`` and
``predict``, or the server).

Training happens in ultralytics' engine (:mod:`mlp_train.detection`), whose loss, assigner
and augmentations detection users expect; :meth:`YOLOModel.training_step` computes the same
loss on one batch of :mod:`mlp_core.batch` keys, for checks and custom loops.

The saved config holds the architecture as the resolved ultralytics YAML document, so
:func:`mlp_models.load_model` rebuilds the network offline anywhere, whatever file or
checkpoint it came from.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mlp_core.batch import BOXES, IMAGE
from mlp_core.errors import ConfigError, ModelError
from mlp_core.tensors import DYNAMIC, ModelSignature, TensorSpec
from mlp_models.arguments import check_int
from mlp_models.base import BaseModel, Batch, StepResult
from mlp_models.registry import register_model
from mlp_models.state_dicts import load_state_dict_checked
from mlp_models.ultralytics_env import import_ultralytics

NAME = "yolo"
DEFAULT_ARCH = "yolov8n.yaml"
RAW_OUTPUT = "output0"  # ultralytics' name for the head's output in its ONNX export
STRIDES = (8, 16, 32)
# The smallest input the three strides leave at least one cell of.
MIN_IMAGE_SIZE = max(STRIDES)


@register_model(NAME)
class YOLOModel(BaseModel):
    """An ultralytics ``DetectionModel`` behind mlp's model interface."""

    # Detection is not one of the classifier/regressor heads of mlp_core.tasks: its head,
    # loss and metrics are ultralytics'. Consumers branch on it (or on isinstance).
    task = "detection"  # pyright: ignore[reportIncompatibleVariableOverride, reportAssignmentType]

    def __init__(
        self,
        *,
        num_classes: int,
        class_names: list[str] | None = None,
        arch: str | dict[str, Any] = DEFAULT_ARCH,
        weights: str | os.PathLike[str] | None = None,
        image_size: int = 640,
    ) -> None:
        super().__init__()
        self.num_classes = check_int(NAME, "num_classes", num_classes, minimum=1)
        self.image_size = check_int(NAME, "image_size", image_size, minimum=MIN_IMAGE_SIZE)
        if image_size % MIN_IMAGE_SIZE:
            raise ConfigError(
                f"model 'yolo': image_size: expected a multiple of {MIN_IMAGE_SIZE} (the "
                f"largest stride); given {image_size}"
            )
        names = [str(i) for i in range(num_classes)] if class_names is None else class_names
        if not isinstance(names, list) or len(names) != num_classes:
            raise ConfigError(
                f"model 'yolo': class_names: expected a list of {num_classes} names; given "
                f"{class_names!r}"
            )
        self.class_names = [str(name) for name in names]
        import_ultralytics()
        if weights is not None:
            self.network = _from_checkpoint(_local_file(weights, "weights"), num_classes)
        else:
            self.network = _from_arch(arch, num_classes)
        self.network.names = dict(enumerate(self.class_names))

    @property
    def model_name(self) -> str:
        return NAME

    @property
    def arch(self) -> dict[str, Any]:
        """The resolved ultralytics architecture document (what rebuilds the network)."""
        return copy.deepcopy(self.network.yaml)

    def get_config(self) -> dict[str, Any]:
        # weights is left out: the saved file holds the weights, and the checkpoint need not
        # exist where the model is loaded again.
        return {
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "arch": _json_ready(self.arch),
            "image_size": self.image_size,
        }

    def signature(self) -> ModelSignature:
        size = self.image_size
        image = TensorSpec(name=IMAGE, datatype="FP32", shape=(DYNAMIC, 3, size, size))
        raw = TensorSpec(
            name=RAW_OUTPUT,
            datatype="FP32",
            shape=(DYNAMIC, 4 + self.num_classes, num_anchors(size, size)),
        )
        return ModelSignature(inputs=(image,), outputs=(raw,))

    def forward(self, image: Tensor) -> Any:
        """Eval mode: the raw head ``[B, 4 + nc, A]``. Train mode: ultralytics' training
        outputs (what its loss takes)."""
        output = self.network(image)
        if self.training:
            return output
        return output[0] if isinstance(output, (list, tuple)) else output

    def predict(self, batch: Batch) -> Tensor:
        """The raw head ``[B, 4 + nc, A]`` for ``batch["image"]``, in eval mode, no gradients."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                (image,) = self.inputs_from_batch(batch)
                return self(image.to(self._device()))
        finally:
            self.train(was_training)

    # -- one batch of loss, as ultralytics' trainer computes it -----------------------------

    def training_step(self, batch: Batch) -> StepResult:
        return self._detection_step(batch)

    def validation_step(self, batch: Batch) -> StepResult:
        with torch.no_grad():
            return self._detection_step(batch)

    def test_step(self, batch: Batch) -> StepResult:
        with torch.no_grad():
            return self._detection_step(batch)

    def _detection_step(self, batch: Batch) -> StepResult:
        """Loss on ``image`` + ``boxes`` (``[N, 6]``: image index, class, cx, cy, w, h,
        normalised). ``outputs`` are the box, cls and dfl loss items; ``targets`` the boxes."""
        if BOXES not in batch:
            raise ModelError(
                f"the batch has no {BOXES!r}: a detection step needs the boxes "
                "(rows of image index, class, cx, cy, w, h)",
                hint="predict(batch) works without boxes.",
            )
        (image,) = self.inputs_from_batch(batch)
        boxes = batch[BOXES].to(image.device)
        if not hasattr(self.network, "args"):
            self.network.args = _default_hyperparameters()
        loss, items = self.network.loss(
            {"img": image, "batch_idx": boxes[:, 0], "cls": boxes[:, 1:2], "bboxes": boxes[:, 2:6]}
        )
        # ultralytics 8.4 returns the items as a dict (box, cls, dfl); older ones as a tensor.
        values = torch.stack(list(items.values())) if isinstance(items, Mapping) else items
        return StepResult(loss.sum(), values.detach(), boxes)

    def load_ultralytics_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Load the weights of an ultralytics checkpoint (``best.pt``) of the same architecture:
        what ``mlp train`` does to make the saved model equal ultralytics' best weights."""
        network = _checkpoint_network(_local_file(path, "checkpoint"))
        load_state_dict_checked(
            self.network,
            network.float().state_dict(),
            source=str(path),
            target="model 'yolo' (network)",
        )


def num_anchors(height: int, width: int) -> int:
    """The number of anchor points ``A`` of the raw head for an input of ``height`` x ``width``."""
    return sum((height // stride) * (width // stride) for stride in STRIDES)


def _local_file(path: str | os.PathLike[str], what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"model 'yolo': {what}: expected a local file path; given {path!r}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(
            f"model 'yolo': {what} {file} is not a local file; mlp never downloads weights",
            hint="Download the .pt yourself and pass its path, or train from an architecture "
            "(arch: yolov8n.yaml).",
        )
    return file


def _from_arch(arch: str | dict[str, Any], num_classes: int) -> Any:
    from ultralytics.nn.tasks import DetectionModel

    if isinstance(arch, dict):
        document: Any = copy.deepcopy(arch)
    elif isinstance(arch, str) and arch.endswith((".yaml", ".yml")):
        document = arch if not Path(arch).expanduser().is_file() else str(Path(arch).expanduser())
    elif isinstance(arch, str) and arch.endswith(".pt"):
        raise ConfigError(
            f"model 'yolo': arch: expected an architecture .yaml (e.g. yolov8n.yaml); given "
            f"{arch!r}",
            hint="A checkpoint goes to weights: path/to/model.pt (a local file).",
        )
    else:
        raise ConfigError(
            f"model 'yolo': arch: expected an ultralytics architecture name ending in .yaml "
            f"(yolov8n.yaml, yolo11n.yaml) or a local .yaml file, or its document; given {arch!r}"
        )
    try:
        return DetectionModel(document, nc=num_classes, verbose=False)
    except FileNotFoundError as exc:
        raise ModelError(
            f"model 'yolo': arch {arch!r} is neither an architecture shipped with ultralytics "
            f"nor a local file ({exc})",
            hint="Use a name such as yolov8n.yaml or yolo11n.yaml, or a path to your own .yaml.",
        ) from exc


def _checkpoint_network(file: Path) -> Any:
    """The model of an ultralytics checkpoint (a pickled ``DetectionModel``: load only files
    you trust, as with ultralytics itself)."""
    from ultralytics.nn.tasks import load_checkpoint

    try:
        network, _ = load_checkpoint(str(file), device="cpu")
    except Exception as exc:  # ultralytics raises anything on a bad file
        raise ModelError(
            f"model 'yolo': {file} is not an ultralytics checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not hasattr(network, "yaml"):
        raise ModelError(f"model 'yolo': {file} holds no ultralytics model")
    return network


def _from_checkpoint(file: Path, num_classes: int) -> Any:
    from ultralytics.nn.tasks import DetectionModel

    source = _checkpoint_network(file)
    network = DetectionModel(copy.deepcopy(source.yaml), nc=num_classes, verbose=False)
    # ultralytics' transfer: every tensor whose name and shape match (the head's class
    # branches differ when num_classes does).
    network.load(source, verbose=False)
    return network


def _default_hyperparameters() -> Any:
    from ultralytics.cfg import get_cfg

    return get_cfg()


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


__all__ = ["DEFAULT_ARCH", "RAW_OUTPUT", "YOLOModel", "num_anchors"]
