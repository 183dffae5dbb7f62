"""Where images come from: CIFAR-100 household classes, or any ImageFolder tree."""

from datasources.config import DataConfig
from datasources.loaders import BatchLoader, DataBundle, load_data

__all__ = ["BatchLoader", "DataBundle", "DataConfig", "load_data"]
