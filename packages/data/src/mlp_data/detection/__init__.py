"""Object detection data.

- :mod:`~mlp_data.detection.adapter`: ``data.adapter: yolo`` (:class:`YOLOAdapter`), its dataset
  and the collate function for images with different numbers of boxes;
- :mod:`~mlp_data.detection.yolo_format`: ``data.yaml``, image lists and label files.
"""

from mlp_data.detection.adapter import YOLOAdapter, YOLOConfig, detection_collate

__all__ = ["YOLOAdapter", "YOLOConfig", "detection_collate"]
