"""Image classification data: a class-per-folder tree or a CSV manifest to image tensors.

- :mod:`~mlp_data.image.adapter`: ``data.adapter: image_folder`` (:class:`ImageFolderAdapter`);
- :mod:`~mlp_data.image.transforms`: the training and evaluation transforms
  (:class:`ImagePreprocessor`), whose evaluation half is an :mod:`mlp_core.image_spec` spec;
- :mod:`~mlp_data.image.files`: finding image files and checking that Pillow reads them.
"""

from mlp_data.image.adapter import ImageFolderAdapter, ImageFolderConfig
from mlp_data.image.transforms import AugmentConfig, ImagePreprocessor, ImageTransformConfig

__all__ = [
    "AugmentConfig",
    "ImageFolderAdapter",
    "ImageFolderConfig",
    "ImagePreprocessor",
    "ImageTransformConfig",
]
