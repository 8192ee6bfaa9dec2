"""mlp-data: adapters (CSV/Parquet, image folders, YOLO), validation, preprocessing, loaders.

Layout: what every adapter shares sits at the top (:mod:`~mlp_data.base` the adapter
interface, :mod:`~mlp_data.registry`, :mod:`~mlp_data.splits`, :mod:`~mlp_data.sampler`,
:mod:`~mlp_data.loaders`, :mod:`~mlp_data.distributed`, :mod:`~mlp_data.synthetic`); each kind
of data has its subpackage: :mod:`mlp_data.tabular`, :mod:`mlp_data.image`,
:mod:`mlp_data.detection`.

The adapters load on first use (``from mlp_data import CSVAdapter`` imports pandas, not the
vision stack); the registry finds them by name through the ``mlp.adapters`` entry points.
"""

from importlib import import_module
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

from mlp_data.base import AdapterConfig, DataAdapter, DatasetInfo, SplitConfig
from mlp_data.registry import adapters, create_adapter, list_adapters, register_adapter

if TYPE_CHECKING:
    from mlp_data.detection.adapter import YOLOAdapter, YOLOConfig
    from mlp_data.image.adapter import ImageFolderAdapter, ImageFolderConfig
    from mlp_data.image.transforms import ImagePreprocessor, ImageTransformConfig
    from mlp_data.loaders import UnifiedLoader
    from mlp_data.sampler import EpochSampler
    from mlp_data.tabular.adapter import CSVAdapter, CSVConfig
    from mlp_data.tabular.preprocessor import TabularPreprocessor
    from mlp_data.tabular.schema import SchemaValidator
    from mlp_data.tabular.streaming import LargeScaleLoader

__version__ = _version("mlp-data")

_LAZY = {
    "CSVAdapter": "mlp_data.tabular.adapter",
    "CSVConfig": "mlp_data.tabular.adapter",
    "SchemaValidator": "mlp_data.tabular.schema",
    "TabularPreprocessor": "mlp_data.tabular.preprocessor",
    "LargeScaleLoader": "mlp_data.tabular.streaming",
    "ImageFolderAdapter": "mlp_data.image.adapter",
    "ImageFolderConfig": "mlp_data.image.adapter",
    "ImagePreprocessor": "mlp_data.image.transforms",
    "ImageTransformConfig": "mlp_data.image.transforms",
    "YOLOAdapter": "mlp_data.detection.adapter",
    "YOLOConfig": "mlp_data.detection.adapter",
    "UnifiedLoader": "mlp_data.loaders",
    "EpochSampler": "mlp_data.sampler",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlp_data' has no attribute {name!r}")


__all__ = [
    "AdapterConfig",
    "CSVAdapter",
    "CSVConfig",
    "DataAdapter",
    "DatasetInfo",
    "EpochSampler",
    "ImageFolderAdapter",
    "ImageFolderConfig",
    "ImagePreprocessor",
    "ImageTransformConfig",
    "LargeScaleLoader",
    "SchemaValidator",
    "SplitConfig",
    "TabularPreprocessor",
    "UnifiedLoader",
    "YOLOAdapter",
    "YOLOConfig",
    "adapters",
    "create_adapter",
    "list_adapters",
    "register_adapter",
]
