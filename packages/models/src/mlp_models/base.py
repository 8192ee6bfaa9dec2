"""BaseModel: what every mlp model offers the trainer, the exporter and the user.

A model is an ``nn.Module`` whose ``forward`` takes plain tensors in the order of its
:meth:`~BaseModel.signature` (so ``torch.onnx.export(model, model.example_inputs(2))`` works)
and returns raw outputs: logits for classification, values for regression. Around it:

- ``training_step`` / ``validation_step`` / ``test_step`` take a batch dict keyed by
  :mod:`mlp_core.batch` and return a :class:`StepResult`; the trainer owns the loop, the
  optimizer and ``train()``/``eval()``, the model owns how a batch becomes a loss.
- ``predict(batch)`` gives probabilities or values, in eval mode and without gradients.
- ``save(path)`` writes the weights with the config that rebuilds the model by its registered
  name; :func:`mlp_models.load_model` reads it back.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from mlp_core.batch import TARGET
from mlp_core.errors import ModelError
from mlp_core.tasks import Task
from mlp_core.tensors import ModelSignature, TensorSpec
from mlp_models.dtypes import torch_dtype
from mlp_models.model_file import read_model_file, write_model_file
from mlp_models.state_dicts import load_state_dict_checked
from mlp_models.tasks import task_loss, task_predictions

Batch = Mapping[str, Any]

_EXAMPLE_SEED = 0


@dataclass(frozen=True)
class StepResult:
    """One step on one batch. ``outputs`` are detached: they are for metrics, not gradients."""

    loss: Tensor
    outputs: Tensor
    targets: Tensor


class ParameterCounts(NamedTuple):
    total: int
    trainable: int


class BaseModel(nn.Module, ABC):
    """Base of every mlp model; subclasses build layers and describe their inputs."""

    task: Task
    supports_gradient_checkpointing: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.gradient_checkpointing = False

    # -- what a subclass provides -----------------------------------------------------------

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The registered name that rebuilds this model (``create_model(model_name, ...)``)."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this model's architecture; plain JSON values only."""

    @abstractmethod
    def signature(self) -> ModelSignature:
        """Inputs in ``forward`` order, named after batch keys, and outputs; datatypes are
        :mod:`mlp_core.tensors`' (``"FP32"``, ``"INT64"``), ``-1`` marks the batch axis."""

    @abstractmethod
    # Each model names its own inputs (``forward(self, numeric, categorical=None)``); ``Any``
    # here lets those signatures override this one.
    def forward(self, *inputs: Any, **options: Any) -> Tensor: ...

    # -- batches ----------------------------------------------------------------------------

    def inputs_from_batch(self, batch: Batch) -> tuple[Tensor, ...]:
        """The tensors ``forward`` takes, read from a batch dict by their input names."""
        return tuple(self._batch_input(batch, spec) for spec in self.signature().inputs)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return task_loss(self.task, outputs, targets)

    def training_step(self, batch: Batch) -> StepResult:
        return self._step(batch)

    def validation_step(self, batch: Batch) -> StepResult:
        with torch.no_grad():
            return self._step(batch)

    def test_step(self, batch: Batch) -> StepResult:
        with torch.no_grad():
            return self._step(batch)

    def predict(self, batch: Batch) -> Tensor:
        """Probabilities [B, classes] or regression values, computed in eval mode.

        Inputs are moved to the model's device; the model's train/eval mode is restored after.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                device = self._device()
                inputs = tuple(t.to(device) for t in self.inputs_from_batch(batch))
                return task_predictions(self.task, self(*inputs))
        finally:
            self.train(was_training)

    def _step(self, batch: Batch) -> StepResult:
        if TARGET not in batch:
            raise ModelError(
                f"the batch has no {TARGET!r}: training, validation and test steps need targets",
                hint="predict(batch) works without targets.",
            )
        targets = batch[TARGET]
        outputs = self(*self.inputs_from_batch(batch))
        return StepResult(self.loss(outputs, targets), outputs.detach(), targets)

    def _batch_input(self, batch: Batch, spec: TensorSpec) -> Tensor:
        if spec.name not in batch:
            raise ModelError(
                f"model {self.model_name!r} reads {spec.name!r} from the batch "
                f"({spec.describe()}), but the batch has only {sorted(batch)}"
            )
        tensor = batch[spec.name]
        if not isinstance(tensor, Tensor):
            raise ModelError(
                f"batch[{spec.name!r}] must be a tensor for model {self.model_name!r}, "
                f"got {type(tensor).__name__}"
            )
        dtype = torch_dtype(spec)
        wants_float = dtype.is_floating_point
        is_integer = not tensor.is_floating_point() and tensor.dtype != torch.bool
        if (wants_float and not tensor.is_floating_point()) or (not wants_float and not is_integer):
            raise ModelError(
                f"batch[{spec.name!r}] must be {str(dtype).removeprefix('torch.')} for model "
                f"{self.model_name!r}, "
                f"got {tensor.dtype}"
            )
        # Only the feature / channel axis is checked: it is what the first layer was built for,
        # while image height and width may vary (the CNNs pool globally).
        if tensor.dim() != len(spec.shape) or tensor.shape[1] != spec.shape[1]:
            raise ModelError(
                f"batch[{spec.name!r}] must have shape {list(spec.shape)} (-1: any batch size) "
                f"for model {self.model_name!r}, got {list(tensor.shape)}"
            )
        return tensor

    # -- export -----------------------------------------------------------------------------

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, ...]:
        """Tensors shaped as :meth:`signature` says, on the model's device, for tracing.

        Floats are seeded normal noise; integers are zeros, a valid index for any embedding.
        """
        generator = torch.Generator().manual_seed(_EXAMPLE_SEED)
        device = self._device()
        tensors = []
        for spec in self.signature().inputs:
            shape = spec.concrete_shape(batch_size)
            dtype = torch_dtype(spec)
            if dtype.is_floating_point:
                tensor = torch.randn(shape, generator=generator, dtype=dtype)
            else:
                tensor = torch.zeros(shape, dtype=dtype)
            tensors.append(tensor.to(device))
        return tuple(tensors)

    # -- parameters and memory --------------------------------------------------------------

    def parameter_counts(self) -> ParameterCounts:
        total = trainable = 0
        for parameter in self.parameters():
            total += parameter.numel()
            if parameter.requires_grad:
                trainable += parameter.numel()
        return ParameterCounts(total, trainable)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Trade compute for memory: recompute activations in backward instead of keeping them."""
        if enabled and not self.supports_gradient_checkpointing:
            raise ModelError(
                f"model {self.model_name!r} does not support gradient checkpointing",
                hint="Check supports_gradient_checkpointing before enabling it.",
            )
        self.gradient_checkpointing = enabled

    def _device(self) -> torch.device:
        parameter = next(self.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    # -- files ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write weights and config to one file; :func:`mlp_models.load_model` rebuilds it."""
        return write_model_file(path, self.model_name, self.get_config(), self)

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Load the weights of a file saved from a model of the same name and shapes."""
        saved = read_model_file(path)
        if saved.name != self.model_name:
            raise ModelError(
                f"{saved.path} holds a {saved.name!r} model; expected a {self.model_name!r} one",
                hint="Use load_model(path) to rebuild whatever model the file holds.",
            )
        load_state_dict_checked(
            self, saved.state_dict, source=str(saved.path), target=f"model {self.model_name!r}"
        )
