"""The network being compressed: its architecture, and the trained baseline every trial starts from."""

from udacisense.models.config import ModelConfig
from udacisense.models.mobilenet import ResizeInput, build_model

__all__ = ["ModelConfig", "ResizeInput", "build_model"]
