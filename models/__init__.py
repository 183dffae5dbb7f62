"""The network being compressed: its architecture, and the trained baseline every trial starts from."""

from models.config import ModelConfig, TrainConfig
from models.mobilenet import ResizeInput, build_model

__all__ = ["ModelConfig", "ResizeInput", "TrainConfig", "build_model"]
