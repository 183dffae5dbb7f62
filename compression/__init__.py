"""Compression techniques as composable pipeline stages.

Importing this package registers every stage. Each stage is a frozen config plus a function
``(CompressedModel, config, StageContext) -> CompressedModel`` that never mutates its input.
"""
from udacisense.compression import architecture, distillation, graph, pruning, quantization  # noqa: F401  registers the stages  # noqa: F401  registers the stages
