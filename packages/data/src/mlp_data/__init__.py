"""mlp-data: adapters (CSV/Parquet, image folders, YOLO), validation, preprocessing, loaders.

The adapters load on first use (``from mlp_data import CSVAdapter`` imports pandas, not the
vision stack); the registry finds them by name through the ``mlp.adapters`` entry points.
"""

from importlib import import_module
from importlib.metadata import version as _version
from typing import Any

from mlp_data.base import AdapterConfig, DataAdapter, DatasetInfo, SplitConfig
from mlp_data.registry import adapters, create_adapter, list_adapters, register_adapter

__version__ = _version("mlp-data")

_LAZY = {
    "CSVAdapter": "mlp_data.csv_adapter",
    "CSVConfig": "mlp_data.csv_adapter",
    "ImageFolderAdapter": "mlp_data.image_folder",
    "YOLOAdapter": "mlp_data.yolo",
    "SchemaValidator": "mlp_data.schema",
    "TabularPreprocessor": "mlp_data.tabular",
    "ImagePreprocessor": "mlp_data.image_transforms",
    "UnifiedLoader": "mlp_data.loaders",
    "LargeScaleLoader": "mlp_data.streaming",
    "EpochSampler": "mlp_data.sampler",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlp_data' has no attribute {name!r}")


__all__ = [
    "AdapterConfig",
    "DataAdapter",
    "DatasetInfo",
    "SplitConfig",
    "adapters",
    "create_adapter",
    "list_adapters",
    "register_adapter",
    *_LAZY,
]
