"""The exporter of mlp-serve (``pip install 'mlp-serve[export]'``): training run -> model bundle.

``export_run(run_folder, repo)`` writes ``repo/<name>/<version>/model.onnx`` and its manifest;
see :mod:`mlp_serve.export.exporter`. This package imports torch and mlp-models; the rest of
mlp-serve never imports it, so serving needs neither.
"""

from mlp_serve.export.exporter import QUANTIZE_CHOICES, ExportResult, export_run
from mlp_serve.export.parity import TOLERANCES

__all__ = ["QUANTIZE_CHOICES", "TOLERANCES", "ExportResult", "export_run"]
