"""Tabular data: one CSV or Parquet file to preprocessed batches.

- :mod:`~mlp_data.tabular.adapter`: ``data.adapter: csv`` (:class:`CSVAdapter`, its options);
- :mod:`~mlp_data.tabular.files`: reading a whole table, with errors naming file, row, column;
- :mod:`~mlp_data.tabular.schema`: JSON Schema validation of the rows;
- :mod:`~mlp_data.tabular.preprocessor`: imputation, scaling and encoding, saved as the
  :mod:`mlp_core.tabular_spec` document;
- :mod:`~mlp_data.tabular.dataset`: the in-memory dataset of preprocessed arrays;
- :mod:`~mlp_data.tabular.pieces` and :mod:`~mlp_data.tabular.streaming`: a table bigger than
  memory, read piece by piece across workers and ranks.
"""

from mlp_data.tabular.adapter import CSVAdapter, CSVConfig
from mlp_data.tabular.dataset import TabularDataset
from mlp_data.tabular.preprocessor import TabularPreprocessor
from mlp_data.tabular.schema import SchemaValidator
from mlp_data.tabular.streaming import LargeScaleLoader, StreamingTabularDataset, TableStream

__all__ = [
    "CSVAdapter",
    "CSVConfig",
    "LargeScaleLoader",
    "SchemaValidator",
    "StreamingTabularDataset",
    "TableStream",
    "TabularDataset",
    "TabularPreprocessor",
]
