"""Operator-lean MobileNetV3: fewer delegated operators, not only fewer weights.

At phone-app input sizes a MobileNetV3-Small ``.pte`` spends its time running a few hundred small
XNNPACK operators, not multiplying: each squeeze-excite block adds a pool, two 1x1 convolutions, two
activations and a product, and a hardswish is operators of its own where a ReLU fuses into the
convolution before it. Removing squeeze-excite blocks, swapping the hard activations and dropping
whole blocks cuts the operator count, and the latency with it (issue 22's table).

Squeeze-excite blocks are numbered in forward order among the blocks that still have one (0 is the
first); ``squeeze_excite_blocks`` lists them, and ``squeeze_excite_costs`` measures them in that order.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Literal, get_args

import torch
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual
from torchvision.ops import SqueezeExcitation

from udacisense.common.errors import UserError
from udacisense.evaluators.accuracy import evaluate_accuracy

Activation = Literal["hard", "relu"]
# XNNPACK fuses ReLU into the convolution before it; hardswish and hardsigmoid are operators of their own.
_SWAPS: dict[type[nn.Module], type[nn.Module]] = {nn.Hardswish: nn.ReLU, nn.Hardsigmoid: nn.Sigmoid}


def squeeze_excite_blocks(module: nn.Module) -> list[str]:
    """Qualified names of ``module``'s squeeze-excite blocks in forward order: index ``i`` is block ``i``."""
    return [name for name, layer in module.named_modules() if isinstance(layer, SqueezeExcitation)]


def shape_keeping_blocks(module: nn.Module) -> list[str]:
    """Qualified names of the inverted-residual blocks whose removal keeps every shape, in forward order.

    They are the blocks with a residual connection: stride 1 and as many output channels as input.
    """
    return [name for name, layer in module.named_modules() if isinstance(layer, InvertedResidual) and layer.use_res_connect]


def lean_network(module: nn.Module, *, squeeze_excite: bool | Sequence[int] = True, activation: Activation = "hard",
                 drop_blocks: int = 0) -> nn.Module:
    """A modified copy of a MobileNetV3 (bare, or behind an in-model resize) with the same output shape.

    ``squeeze_excite``: True keeps every squeeze-excite block, False removes every one, a sequence of
    indices (see ``squeeze_excite_blocks``) removes only those. ``activation="relu"`` replaces every
    hardswish by a ReLU and every hardsigmoid by a sigmoid. ``drop_blocks`` removes that many of the
    last blocks whose removal keeps every shape (``shape_keeping_blocks``). ``module`` is not changed.
    """
    blocks = squeeze_excite_blocks(module)
    removed = _removed_squeeze_excite(squeeze_excite, len(blocks))
    droppable = shape_keeping_blocks(module)
    if activation not in get_args(Activation):
        raise UserError(f"`activation` is {activation!r}, which is not a known choice.",
                        f"set `activation` to one of: {', '.join(repr(a) for a in get_args(Activation))}.")
    if not 0 <= drop_blocks <= len(droppable):
        raise UserError(f"`drop_blocks` is {drop_blocks}, but the network has {len(droppable)} blocks whose removal keeps "
                        "every shape (stride 1, as many output channels as input).",
                        f"set `drop_blocks` between 0 and {len(droppable)}.")
    network = copy.deepcopy(module)
    for index in removed:
        _replace(network, blocks[index], nn.Identity())
    if activation == "relu":
        for name, layer in list(network.named_modules()):
            if type(layer) in _SWAPS:
                _replace(network, name, _SWAPS[type(layer)]())
        # ReLU's backward reads its output, which the classifier's in-place dropout would overwrite
        # (hardswish's reads its input, so torchvision's in-place dropout was safe after it).
        for layer in network.modules():
            if isinstance(layer, nn.Dropout):
                layer.inplace = False
    _remove_children(network, droppable[len(droppable) - drop_blocks:] if drop_blocks else [])
    return network


def _removed_squeeze_excite(squeeze_excite: bool | Sequence[int], count: int) -> list[int]:
    if isinstance(squeeze_excite, bool):
        return [] if squeeze_excite else list(range(count))
    indices = list(squeeze_excite)
    wrong = [i for i in indices if not 0 <= i < count]
    if wrong:
        raise UserError(f"`squeeze_excite` lists blocks {wrong}, but the network has {count} squeeze-excite blocks, "
                        "numbered from 0 in forward order.",
                        f"list only blocks between 0 and {count - 1}." if count else "pass `squeeze_excite=True`: there is none to remove.")
    if len(set(indices)) != len(indices):
        raise UserError(f"`squeeze_excite` lists a block twice: {indices}.", "list each block to remove once.")
    return indices


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent), child, new)


def _remove_children(root: nn.Module, names: Sequence[str]) -> None:
    """Rebuild the containers of the named blocks without them, so block positions (``features.i``) stay consecutive.

    Positions are what mixed precision and the size estimate count blocks by ("the first two blocks").
    """
    by_parent: dict[str, set[str]] = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        by_parent.setdefault(parent, set()).add(child)
    for parent, children in by_parent.items():
        kept = [block for child, block in root.get_submodule(parent).named_children() if child not in children]
        _replace(root, parent, nn.Sequential(*kept))


def describe_lean(*, squeeze_excite: bool | Sequence[int] = True, activation: Activation = "hard", drop_blocks: int = 0) -> str:
    """What ``lean_network`` with these arguments changes, e.g. ``no SE, ReLU, -2 blocks``; empty when nothing."""
    parts = []
    if squeeze_excite is False:
        parts.append("no SE")
    elif not isinstance(squeeze_excite, bool) and len(squeeze_excite):
        parts.append(f"no SE in blocks {sorted(squeeze_excite)}")
    if activation == "relu":
        parts.append("ReLU")
    if drop_blocks:
        parts.append(f"-{drop_blocks} block{'s' if drop_blocks > 1 else ''}")
    return ", ".join(parts)


def squeeze_excite_costs(module: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> list[float]:
    """Top-1 accuracy on ``batches`` lost when each squeeze-excite block alone is removed, without fine-tuning.

    Indexed like ``squeeze_excite_blocks``; ``batches`` is read once per block and once more for the whole network.
    """
    reference = copy.deepcopy(module)  # evaluating switches a module to eval mode; the caller's keeps its own
    full = evaluate_accuracy(reference, batches, num_classes).top1
    return [full - evaluate_accuracy(lean_network(reference, squeeze_excite=[index]), batches, num_classes).top1
            for index in range(len(squeeze_excite_blocks(reference)))]
