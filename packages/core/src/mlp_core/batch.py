"""The keys of a training batch: the contract between data loaders and models.

mlp-data and mlp-models never import each other; a loader yields dicts with these keys and a
model reads the ones it needs. Tensors are batch-first.
"""

NUMERIC = "numeric"  # float32 [B, n_numeric]: scaled numbers (and one-hot columns)
CATEGORICAL = "categorical"  # int64 [B, n_categorical]: category indices for embeddings
IMAGE = "image"  # float32 [B, C, H, W]: normalised pixels
TARGET = "target"  # int64 [B] class index, or float32 [B] / [B, k] regression values
BOXES = "boxes"  # detection: float32 [N, 6] rows (image index in batch, class, cx, cy, w, h)
PATHS = "paths"  # list[str]: where each sample came from, for reports
