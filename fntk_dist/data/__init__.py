"""Data: synthetic sphere points, sklearn's digits, or a user's Parquet file, as float64 arrays."""

from .config import DataConfig, DataError
from .digits import digits_dataset
from .load import Dataset, load_dataset
from .parquet_io import read_dataset, write_dataset
from .synthetic import sign_labels, sphere_points, teacher_labels

__all__ = [
    "DataConfig", "DataError", "Dataset", "digits_dataset", "load_dataset", "read_dataset",
    "sign_labels", "sphere_points", "teacher_labels", "write_dataset",
]
