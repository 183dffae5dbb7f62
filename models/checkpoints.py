"""A user's trained checkpoint: which MobileNetV3 it holds, for how many classes, and their names.

Notebooks save checkpoints in a few shapes: a plain ``state_dict``, one wrapped in a dict
(``{"state_dict": ..., "classes": [...]}``, ``{"model_state_dict": ...}``), and keys behind a wrapper's
prefix (``module.`` from DataParallel, ``model.`` from Lightning, ``_orig_mod.`` from torch.compile).
All of them are read here into the plain keys of torchvision's network. The architecture and width
are told from the tensor shapes alone, by comparing them with the networks torchvision builds.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
import torchvision
from torch import nn
from torchvision.models.mobilenetv3 import _mobilenet_v3_conf

from udacisense.common.errors import UserError
from udacisense.common.files import sha256_of
from udacisense.models.config import Arch
from udacisense.models.mobilenet import ARCH_NAMES, BUILDERS

# Where notebooks put the weights and the class names inside a wrapping dict, most common first.
_WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_CLASS_KEYS = ("classes", "class_names", "labels")
# Any MobileNetV3 starts with this tensor (the stem convolution); what precedes it in a key is a wrapper's prefix.
_STEM = "features.0.0.weight"
_HEAD = "classifier.3.weight"
# Common torchvision classifiers, to name what a checkpoint of another architecture holds.
_OTHER_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x1_0",
                "squeezenet1_1", "mnasnet1_0", "densenet121", "vgg11", "convnext_tiny")
_SAVE_ADVICE = 'torch.save({"state_dict": model.state_dict(), "classes": train_set.classes}, "model.pth")'


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds: enough to rebuild the network (``ModelConfig(arch, width_mult)``) and load it."""

    path: Path
    sha256: str
    arch: Arch
    width_mult: float
    num_classes: int
    classes: tuple[str, ...]  # empty when the checkpoint stores no names
    # The input normalisation it was trained with, when stored (``mean`` and ``std``, 3 each): the study must use it.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    state_dict: dict[str, torch.Tensor]  # the keys of torchvision's network: wrapper prefixes removed

    @property
    def name(self) -> str:
        """E.g. ``MobileNetV3-Large (width 0.75)``."""
        return f"{ARCH_NAMES[self.arch]} (width {self.width_mult:g})"


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """Read ``path`` and tell which MobileNetV3 it holds; UserError when it is unreadable or of another architecture."""
    state, wrapper = _read(path)
    classes = _class_names(wrapper, path)
    mean, std = (_triple(wrapper.get(key)) for key in ("mean", "std"))
    state = strip_wrapper_prefix(state)
    num_classes = int(state[_HEAD].shape[0]) if _HEAD in state and state[_HEAD].ndim == 2 else 0
    arch, width = identify(state, num_classes, path)
    if classes and len(classes) != num_classes:
        raise UserError(f"{path} lists {len(classes)} class names, but its classifier has {num_classes} outputs.",
                        f"save the names of the classes the model was trained on, in label order: {_SAVE_ADVICE}.")
    return CheckpointInfo(path, sha256_of(path), arch, width, num_classes, classes, mean, std, state)


def _triple(value: Any) -> tuple[float, ...]:
    """Three per-channel numbers, or () for anything else (absent, or not a normalisation)."""
    numbers = value.tolist() if isinstance(value, torch.Tensor) else value
    if isinstance(numbers, (list, tuple)) and len(numbers) == 3 and all(isinstance(n, (int, float)) for n in numbers):
        return tuple(float(n) for n in numbers)
    return ()


def _read(path: Path) -> tuple[dict[str, torch.Tensor], Mapping[str, Any]]:
    """The tensors of the checkpoint's network (unwrapped, keys still prefixed) and the dict that wrapped them
    (empty for a plain state_dict)."""
    if not path.is_file():
        raise UserError(f"The checkpoint {path} does not exist.", "pass the path of the model.pth your notebook saved.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses Python objects; a zip archive that holds some is a whole pickled model.
        if zipfile.is_zipfile(path) and "global" in str(error).lower():
            raise UserError(f"{path} holds a whole pickled model object, which is not loaded (unpickling it could run "
                            "any code).", f"save the weights and class names instead: {_SAVE_ADVICE}.") from None
        raise UserError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?).",
                        f"save it again from the notebook: {_SAVE_ADVICE}.") from None
    except Exception as error:  # torch.load fails in many ways on damaged files
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error}).",
                        f"save it again from the notebook: {_SAVE_ADVICE}.") from None
    if not isinstance(loaded, Mapping):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a state_dict.", f"save it with {_SAVE_ADVICE}.")
    if _tensors_only(loaded):
        return dict(loaded), {}
    wrapped = next((loaded[key] for key in _WEIGHT_KEYS if isinstance(loaded.get(key), Mapping) and _tensors_only(loaded[key])), None)
    if wrapped is None:
        raise UserError(f"{path} is a dict with the keys {sorted(map(str, loaded))[:8]}, none of which holds the weights "
                        f"(looked for a state_dict, or one of {', '.join(repr(k) for k in _WEIGHT_KEYS)}).",
                        f"save it with {_SAVE_ADVICE}.")
    return dict(wrapped), loaded


def _tensors_only(mapping: Mapping[Any, Any]) -> bool:
    return bool(mapping) and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in mapping.items())


def _class_names(wrapper: Mapping[str, Any], path: Path) -> tuple[str, ...]:
    """Class names in label order: a list under one of ``_CLASS_KEYS``, or torchvision ImageFolder's ``class_to_idx``."""
    to_index = wrapper.get("class_to_idx")
    if isinstance(to_index, Mapping):
        return tuple(str(name) for name, _ in sorted(to_index.items(), key=lambda item: item[1]))
    names = next((wrapper[key] for key in _CLASS_KEYS if key in wrapper), ())
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise UserError(f"{path} stores its class names as {type(names).__name__}, not a list of strings.",
                        f"save them as a list of names in label order: {_SAVE_ADVICE}.")
    return tuple(names)


def strip_wrapper_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the prefix a wrapper put before torchvision's keys (``module.``, ``model.``...) removed.

    The prefix is what precedes the stem's key; keys without it are kept as they are (and then do not match).
    """
    stems = sorted((key for key in state if key.endswith(_STEM)), key=len)
    prefix = stems[0][:-len(_STEM)] if stems else ""
    return {key.removeprefix(prefix): value for key, value in state.items()}


def identify(state: Mapping[str, torch.Tensor], num_classes: int, path: Path) -> tuple[Arch, float]:
    """The architecture and width whose torchvision network has exactly ``state``'s tensor shapes.

    UserError naming the closest network and what differs when none has; ``path`` names the file in it.
    """
    closest: tuple[int, Arch, float, list[str]] | None = None
    for arch in get_args(Arch):
        for width in _candidate_widths(arch, state):
            differences = _differences(state, _shapes(BUILDERS[arch], num_classes or 1000, width_mult=width))
            if not differences:
                return arch, width
            if closest is None or len(differences) < closest[0]:
                closest = (len(differences), arch, width, differences)
    assert closest is not None  # every architecture has a candidate width
    count, arch, width, differences = closest
    supported = "torchvision's " + " or ".join(get_args(Arch))
    more = f" and {count - 4} more" if count > 4 else ""
    if _STEM not in state:
        other, share = _closest_other(state)
        raise UserError(
            f"{path} holds a {other} ({share:.0%} of its layer names match torchvision's {other}), not a MobileNetV3. "
            f"The closest architecture this tool compresses, {ARCH_NAMES[arch]}, differs in {count} tensors: "
            f"{'; '.join(differences[:3])}.",
            f"train {supported} (any width_mult and class count; scripts/train_user_model.py shows how) and save it "
            f"with {_SAVE_ADVICE}.")
    raise UserError(
        f"{path} is not an unmodified torchvision MobileNetV3: the closest is {ARCH_NAMES[arch]} at width {width:g}, "
        f"which differs in {count} tensors: {'; '.join(differences[:4])}{more}.",
        f"save the state_dict of {supported} as torchvision builds it (any width_mult and class count), without "
        "added, removed or resized layers.")


def _candidate_widths(arch: Arch, state: Mapping[str, torch.Tensor]) -> list[float]:
    """Widths (0.1 to 2 in steps of 0.01) whose stem and head have ``state``'s channel counts, roundest first.

    Neighbouring widths can round to the same channel counts (multiples of 8); the roundest is the one a user wrote.
    With neither tensor to compare, the roundest widths are tried.
    """
    widths = sorted((hundredths / 100 for hundredths in range(10, 201)),
                    key=lambda w: (round(w * 100) % 25 != 0, round(w * 100) % 5 != 0, abs(w - 1.0)))
    stem, hidden = state.get(_STEM), state.get("classifier.0.weight")

    def fits(width: float) -> bool:
        blocks, last_channel = _mobilenet_v3_conf(arch, width_mult=width)
        return ((stem is None or stem.shape[0] == blocks[0].input_channels)
                and (hidden is None or hidden.shape[0] == last_channel))

    # With no width fitting both, the closest by layers is still worth naming (five tries bound the meta builds).
    return [w for w in widths if fits(w)][:5] or widths[:5]


def _shapes(builder: Any, num_classes: int, **kwargs: Any) -> dict[str, torch.Size]:
    """Tensor shapes of a torchvision network, built without memory or initialisation (on the meta device)."""
    with torch.device("meta"):
        network: nn.Module = builder(num_classes=num_classes, **kwargs)
    return {key: value.shape for key, value in network.state_dict().items()}


def _differences(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> list[str]:
    """What keeps ``state`` from loading into a network with the ``expected`` shapes, one line per tensor."""
    missing = [f"no {key}" for key in expected if key not in state]
    unexpected = [f"an extra {key}" for key in state if key not in expected]
    reshaped = [f"{key} is {_size(state[key].shape)} here but {_size(expected[key])} there"
                for key in expected if key in state and state[key].shape != expected[key]]
    return reshaped + missing + unexpected


def _size(shape: torch.Size) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def _closest_other(state: Mapping[str, torch.Tensor]) -> tuple[str, float]:
    """The common torchvision classifier whose layer names overlap ``state``'s most, and the share that does."""
    def overlap(name: str) -> float:
        keys = set(_shapes(lambda **kw: torchvision.models.get_model(name, **kw), 1000))
        return len(keys & set(state)) / len(keys | set(state))

    shares = {name: overlap(name) for name in _OTHER_ARCHS}
    best = max(shares, key=shares.__getitem__)
    return (best, shares[best]) if shares[best] > 0 else ("network of unknown architecture", 0.0)


def check_classes(info: CheckpointInfo, classes: Sequence[str], data_root: str) -> None:
    """Raise unless the checkpoint was trained on ``classes`` (the data's, in label order): their count, and their
    names and order when the checkpoint stores names."""
    if info.num_classes != len(classes):
        raise UserError(f"{info.path} classifies {info.num_classes} classes, but the images in {data_root} have "
                        f"{len(classes)} ({', '.join(classes[:6])}{' ...' if len(classes) > 6 else ''}).",
                        "pass the image folder the model was trained on, or the model trained on these images.")
    if not info.classes or tuple(info.classes) == tuple(classes):
        return
    if sorted(info.classes) == sorted(classes):
        raise UserError(f"{info.path} orders its classes {list(info.classes)}, but the tool labels the images in "
                        f"{data_root} in name order, {list(classes)}: every prediction would be read as another class.",
                        "train with torchvision's ImageFolder (which labels classes in name order), or rename the "
                        "class folders so that their name order is the model's label order.")
    unknown = [name for name in info.classes if name not in classes]
    raise UserError(f"{info.path} was trained on classes that {data_root} lacks ({unknown[:6]}); the folder has "
                    f"{list(classes)[:6]}{' ...' if len(classes) > 6 else ''}.",
                    "pass the image folder the model was trained on, or rename its class folders to the model's class names.")
