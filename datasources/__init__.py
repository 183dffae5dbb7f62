"""Where images come from: CIFAR-100 household classes, or any ImageFolder tree."""

from udacisense.datasources.config import DataConfig
from udacisense.datasources.loaders import BatchLoader, DataBundle, load_data

__all__ = ["BatchLoader", "DataBundle", "DataConfig", "load_data"]
