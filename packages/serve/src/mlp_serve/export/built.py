"""One serving model of an export, with what the checks found (shared by every kind)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from mlp_serve.bundle import Parity


@dataclass
class Built:
    model: onnx.ModelProto
    outputs: np.ndarray  # the network's outputs on the parity samples
    parity: Parity
