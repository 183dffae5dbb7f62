"""Int8 quantization stages: dynamic, post-training static (PTQ) and quantization-aware training (QAT).

Two toolchains, picked by the backend:

* ``x86`` / ``fbgemm`` / ``qnnpack``: FX graph mode (``torch.ao.quantization.quantize_fx``). The
  result holds quantized kernels for that engine and is lowered to TorchScript.
* ``xnnpack``: PT2E (``torch.export`` + torchao's ``prepare_pt2e``/``convert_pt2e`` with the
  XNNPACKQuantizer). The result is a graph of quantize/dequantize ops around float ops that only
  becomes int8 once lowered to ExecuTorch's XNNPACK delegate; run eagerly it simulates int8.

Every stage works on a deep copy; the input model is never touched.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, get_args

import torch
from torch import nn
from torch.fx import GraphModule, Node

from udacisense.common.errors import UserError
from udacisense.common.schema import bounded
from udacisense.compression.finetune import finetune as run_finetune
from udacisense.compression.sensitivity import QuantizeLeaving, feature_blocks, int8_sensitivity, quantization_units
from udacisense.compression.stage import (
    CompressedModel,
    ModelForm,
    Signature,
    StageConfig,
    StageContext,
    check_runs_on,
    register_stage,
    require_form,
)
from udacisense.datasources.loaders import stratified_sample
from udacisense.runtime import Backend, quantized_engine, quiet_legacy_apis, runtime_for
from udacisense.training import EpochStartHook, TrainConfig

if TYPE_CHECKING:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torch.ao.quantization import QConfigMapping

# torchao, executorch and torch.ao.quantization are imported inside the functions that use them:
# they take seconds to import, and most commands never quantize.

StaticBackend = Literal["x86", "fbgemm", "qnnpack", "xnnpack"]
# Bits of the Linear layers' weights. 4 takes torchao's int4 weights (activations int8, quantized on
# the fly), which only ExecuTorch's XNNPACK delegate runs, for every Linear whose input features are
# a multiple of 32; the convolutions and other Linear layers keep their int8 path.
LinearWeightBits = Literal[8, 4]


# --------------------------------------------------------------------------- engines and checks


def _check_choice(config: StageConfig, field: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise UserError(
            f"`{config.kind}.{field}` is {value!r}, which is not supported.",
            f"set `{field}` to one of: {', '.join(repr(a) for a in allowed)}.",
        )


def _check_linear_weight_bits(config: DynamicQuantConfig | StaticQuantConfig | QATConfig) -> None:
    _check_choice(config, "linear_weight_bits", config.linear_weight_bits, get_args(LinearWeightBits))
    if config.linear_weight_bits == 4 and config.backend != "xnnpack":
        raise UserError(
            f"`{config.kind}.linear_weight_bits` is 4 with backend {config.backend!r}: int4 weights run only in "
            "ExecuTorch's XNNPACK delegate.",
            "set `backend = \"xnnpack\"`, or `linear_weight_bits = 8`.",
        )


def _linear_suffix(bits: LinearWeightBits) -> str:
    return ", int4 linear" if bits == 4 else ""


def _check_at_least(config: StageConfig, field: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UserError(f"`{config.kind}.{field}` is {value!r}.", f"set `{field}` to an integer of at least {low}.")


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class DynamicQuantConfig:
    """Int8 weights, activations quantized on the fly, for linear layers; it needs no calibration data.

    ``xnnpack`` goes through PT2E (``is_dynamic=True``) and ships in an ExecuTorch ``.pte`` (the phone
    path); the FX backends give TorchScript (the legacy path). On MobileNet it shrinks mostly the classifier.
    """

    kind: ClassVar[str] = "dynamic"
    backend: StaticBackend = "x86"
    linear_weight_bits: LinearWeightBits = 8

    def __post_init__(self) -> None:
        _check_choice(self, "backend", self.backend, get_args(StaticBackend))
        _check_linear_weight_bits(self)

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT)
        return Signature(ModelForm.QUANTIZED, self.backend)

    def describe(self) -> str:
        return f"dynamic(int8, {self.backend}{_linear_suffix(self.linear_weight_bits)})"


@dataclass(frozen=True)
class StaticQuantConfig:
    """Post-training static int8: observe activation ranges on training batches, then convert."""

    kind: ClassVar[str] = "ptq"
    backend: StaticBackend = "x86"
    calibration_samples: int = bounded(1024, min=1, max=1_000_000,
                                       doc="un-augmented train images, drawn evenly from every class, that observe ranges")
    float_prefix_blocks: int = bounded(0, min=0, max=64,
                                       doc="first blocks of `features` kept float (they are the most sensitive)")
    linear_weight_bits: LinearWeightBits = 8
    # Mixed precision by measurement: the units (feature blocks, classifier) that change the logits
    # most when quantized alone, measured on this model on a probe of val images, stay float.
    float_sensitive_units: int = bounded(0, min=0, max=64, doc="most int8-sensitive units kept float, measured")
    sensitivity_probe: int = bounded(256, min=1, max=100_000, doc="val images the sensitivity is measured on")

    def __post_init__(self) -> None:
        _check_choice(self, "backend", self.backend, get_args(StaticBackend))
        _check_linear_weight_bits(self)
        _check_at_least(self, "calibration_samples", self.calibration_samples, 1)
        _check_at_least(self, "float_prefix_blocks", self.float_prefix_blocks, 0)
        _check_at_least(self, "float_sensitive_units", self.float_sensitive_units, 0)

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT)
        return Signature(ModelForm.QUANTIZED, self.backend)

    def describe(self) -> str:
        prefix = f", float_prefix={self.float_prefix_blocks}" if self.float_prefix_blocks else ""
        sensitive = f", {self.float_sensitive_units} most sensitive float" if self.float_sensitive_units else ""
        return f"ptq({self.backend}{prefix}{sensitive}{_linear_suffix(self.linear_weight_bits)})"


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware fine-tuning with fake quantization, then conversion to int8.

    Observers run from the first epoch; fake quantization switches on at ``start_epoch`` (so the
    first epochs only calibrate ranges) and BatchNorm statistics are frozen from ``freeze_bn_epoch``
    (late in training, batch statistics of a fake-quantized net are too noisy to keep updating).
    With ``linear_weight_bits = 4`` the Linear layers are quantized to int4 before training and their
    weights stay fixed: the layers around them learn to compensate.
    """

    kind: ClassVar[str] = "qat"
    backend: StaticBackend = "x86"
    start_epoch: int = bounded(0, min=0, max=1000, doc="epoch from which fake quantization is on")
    freeze_bn_epoch: int = bounded(2, min=0, max=1000, doc="epoch from which BatchNorm statistics are frozen")
    finetune: TrainConfig = TrainConfig(epochs=3, lr=0.01, schedule="cosine")
    linear_weight_bits: LinearWeightBits = 8

    def __post_init__(self) -> None:
        _check_choice(self, "backend", self.backend, get_args(StaticBackend))
        _check_linear_weight_bits(self)
        _check_at_least(self, "start_epoch", self.start_epoch, 0)
        _check_at_least(self, "freeze_bn_epoch", self.freeze_bn_epoch, 0)
        if self.finetune.epochs < 1 or self.start_epoch >= self.finetune.epochs:
            raise UserError(
                f"`qat.start_epoch` is {self.start_epoch} but `qat.finetune.epochs` is {self.finetune.epochs}: "
                "fake quantization would never be trained.",
                "set `start_epoch` below `finetune.epochs` (or use `ptq` for no training at all).",
            )

    def transition(self, signature: Signature) -> Signature:
        require_form(self, signature, ModelForm.FLOAT)
        return Signature(ModelForm.QUANTIZED, self.backend)

    def describe(self) -> str:
        return (f"qat({self.backend}, {self.finetune.epochs} ep, fq@{self.start_epoch}, "
                f"bn_freeze@{self.freeze_bn_epoch}{_linear_suffix(self.linear_weight_bits)})")


# --------------------------------------------------------------------------- which blocks stay float


def _float_prefix(module: nn.Module, count: int) -> list[str]:
    if count == 0:
        return []
    blocks = feature_blocks(module)
    if not blocks:
        raise UserError(
            "`float_prefix_blocks` needs a model with a `features` container of blocks (like MobileNet), "
            "and this model has none.",
            "set `float_prefix_blocks = 0`.",
        )
    if count > len(blocks):
        raise UserError(
            f"`float_prefix_blocks` is {count} but the model has only {len(blocks)} feature blocks.",
            f"set `float_prefix_blocks` to at most {len(blocks) - 1}, so something is left to quantize.",
        )
    return blocks[:count]


def _outside_of(blocks: Sequence[str]) -> Callable[[Node], bool]:
    """A node filter for the XNNPACKQuantizer: true for nodes that belong to none of ``blocks``."""

    def outside(node: Node) -> bool:
        stack = node.meta.get("nn_module_stack", {})
        return not any(path == block or path.startswith(block + ".")
                       for path, _ in stack.values() for block in blocks)

    return outside


# --------------------------------------------------------------------------- data


def _calibration_batches(context: StageContext, samples: int) -> list[torch.Tensor]:
    """Un-augmented train images (calibration must see the data, not crops), every class in a seeded
    shuffled sample: the split is sorted by class, so its first batches would show only a few."""
    data = context.data
    sample = stratified_sample(data.train, samples, context.seed)
    if not len(sample):
        raise UserError("The train split is empty, so there is nothing to calibrate quantization on.",
                        "check the data source of the study.")
    loader = data.loader("train")
    images = loader.normalise(sample.images)
    return [batch.contiguous() for batch in images.split(loader.batch_size)]


def _observe(module: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for images in batches:
            module(images)


# --------------------------------------------------------------------------- FX graph mode (x86, fbgemm, qnnpack)


def _fx_qconfig_mapping(backend: str, float_blocks: Sequence[str], *, qat: bool) -> QConfigMapping:
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping

    mapping = get_default_qat_qconfig_mapping(backend) if qat else get_default_qconfig_mapping(backend)
    for name in float_blocks:
        mapping.set_module_name(name, None)
    return mapping


def _ptq_fx(module: nn.Module, backend: str, batches: Sequence[torch.Tensor],
            float_blocks: Sequence[str]) -> GraphModule:
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with quiet_legacy_apis(), quantized_engine(backend):
        prepared = prepare_fx(module.eval(), _fx_qconfig_mapping(backend, float_blocks, qat=False), (batches[0],))
        _observe(prepared, batches)
        return convert_fx(prepared)


# --------------------------------------------------------------------------- PT2E (xnnpack)


def export_graph(module: nn.Module, example: torch.Tensor) -> GraphModule:
    """``torch.export`` with a dynamic batch dimension, so calibration and training run whole batches."""
    if example.shape[0] < 2:
        # A batch of one would be specialised as a constant; two keeps the dimension symbolic.
        example = torch.cat([example, example])
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(module, (example,), dynamic_shapes=({0: batch},)).module()


_INT4_GROUP = 32  # input features that share one int4 scale; XNNPACK takes multiples of 32 only


def int4_linear_layers(module: nn.Module) -> list[str]:
    """The Linear layers ``linear_weight_bits = 4`` stores in int4: those whose input features split into groups
    of 32, XNNPACK's int4 kernel."""
    return [name for name, layer in module.named_modules()
            if isinstance(layer, nn.Linear) and layer.in_features % _INT4_GROUP == 0]


def _int4_linear(module: nn.Module) -> list[str]:
    """Quantize the weights of every Linear whose input features split into groups of 32 to int4 in
    place (torchao; activations int8 on the fly); returns their names. Other widths (channel pruning
    leaves any) have no XNNPACK int4 kernel and stay for the int8 path."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup, quantize_

    names = int4_linear_layers(module)
    # torch's type stubs lack the sub-byte dtypes.
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,  # type: ignore[attr-defined]
                                                   weight_granularity=PerGroup(_INT4_GROUP))
    quantize_(module, config, filter_fn=lambda _, name: name in names)
    return names


def _with_linear_weights(module: nn.Module, bits: LinearWeightBits) -> list[str]:
    """Apply ``bits`` to the Linear layers; the names of those torchao quantized, for PT2E to leave alone."""
    return _int4_linear(module) if bits == 4 else []


def _xnnpack_quantizer(*, qat: bool, left_alone: Sequence[str], dynamic: bool = False) -> XNNPACKQuantizer:
    """The XNNPACKQuantizer for every module but those in ``left_alone`` (kept float, or quantized by torchao)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat,
                                                                                  is_dynamic=dynamic))
    if left_alone:
        quantizer.set_filter_function(_outside_of(left_alone))
    return quantizer


def _converted_pt2e(prepared: GraphModule) -> GraphModule:
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared)
    # convert_pt2e forbids .eval()/.train(); evaluators call .eval() on every module they run.
    allow_exported_model_train_eval(converted)
    converted.eval()
    return converted


def _ptq_pt2e(module: nn.Module, batches: Sequence[torch.Tensor], float_blocks: Sequence[str],
              linear_weight_bits: LinearWeightBits) -> GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    int4_layers = _with_linear_weights(module.eval(), linear_weight_bits)
    quantizer = _xnnpack_quantizer(qat=False, left_alone=[*float_blocks, *int4_layers])
    prepared = prepare_pt2e(export_graph(module, batches[0]), quantizer)
    _observe(prepared, batches)
    return _converted_pt2e(prepared)


def _dynamic_pt2e(module: nn.Module, example: torch.Tensor, linear_weight_bits: LinearWeightBits) -> GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    int4_layers = _with_linear_weights(module.eval(), linear_weight_bits)
    quantizer = _xnnpack_quantizer(qat=False, left_alone=int4_layers, dynamic=True)
    prepared = prepare_pt2e(export_graph(module, example), quantizer)
    _observe(prepared, [example])  # only shapes: dynamic activations carry no observed ranges
    return _converted_pt2e(prepared)


_BATCH_NORM_TARGETS = (torch.ops.aten.batch_norm.default, torch.ops.aten._native_batch_norm_legit.default)


def _set_exported_bn_training(graph_module: GraphModule, training: bool) -> None:
    # Both ops take `training` as their sixth argument; False makes them use (and keep) running stats.
    for node in graph_module.graph.nodes:
        if node.target in _BATCH_NORM_TARGETS:
            args = list(node.args)
            args[5] = training
            node.args = tuple(args)
    graph_module.recompile()


def _train_keeping_bn_frozen(self: GraphModule, mode: bool = True) -> GraphModule:
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    if mode:
        move_exported_model_to_train(self)
        # torchao's train switch rewrites every BatchNorm back to batch statistics; re-freeze them.
        _set_exported_bn_training(self, False)
    else:
        move_exported_model_to_eval(self)
    return self


def freeze_exported_bn(model: nn.Module) -> None:
    """PT2E has no freeze_bn_stats: set the BatchNorm ops to eval behaviour, and keep them so across .train()."""
    if not isinstance(model, GraphModule):
        raise TypeError(f"expected an exported GraphModule, got {type(model).__name__}")
    # A plain function bound as a method (no closure), so a deep copy rebinds it to the copy.
    model.train = types.MethodType(_train_keeping_bn_frozen, model)  # type: ignore[method-assign]  # the override is the point
    _set_exported_bn_training(model, False)


# --------------------------------------------------------------------------- QAT


@dataclass(frozen=True)
class QatSwitches:
    """The toolchain's functions that turn fake quantization and observers on or off, and freeze BN."""

    enable_fake_quant: Callable[[nn.Module], None]
    disable_fake_quant: Callable[[nn.Module], None]
    enable_observer: Callable[[nn.Module], None]
    freeze_bn: Callable[[nn.Module], None]


def qat_switches(backend: StaticBackend) -> QatSwitches:
    """The switches of the toolchain that quantizes for ``backend`` (PT2E for xnnpack, else FX)."""
    if backend == "xnnpack":
        from torchao.quantization.pt2e import disable_fake_quant, enable_fake_quant, enable_observer

        return QatSwitches(enable_fake_quant, disable_fake_quant, enable_observer, freeze_exported_bn)
    import torch.ao.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import disable_fake_quant as fx_disable
    from torch.ao.quantization import enable_fake_quant as fx_enable
    from torch.ao.quantization import enable_observer as fx_observe

    def freeze_bn(model: nn.Module) -> None:
        model.apply(nniqat.freeze_bn_stats)

    return QatSwitches(fx_enable, fx_disable, fx_observe, freeze_bn)


def qat_schedule(config: QATConfig, switches: QatSwitches) -> EpochStartHook:
    """The epoch-start hook: observers always on, fake quantization from ``start_epoch``, BatchNorm
    statistics frozen from ``freeze_bn_epoch``."""

    def schedule(model: nn.Module, epoch: int) -> None:
        model.apply(switches.enable_observer)
        model.apply(switches.enable_fake_quant if epoch >= config.start_epoch else switches.disable_fake_quant)
        if epoch >= config.freeze_bn_epoch:
            switches.freeze_bn(model)

    return schedule


def _qat_fx(module: nn.Module, config: QATConfig, context: StageContext, example: torch.Tensor) -> GraphModule:
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    with quiet_legacy_apis():
        with quantized_engine(config.backend):
            prepared = prepare_qat_fx(module.train(), _fx_qconfig_mapping(config.backend, (), qat=True), (example,))
        run_finetune(prepared, config.finetune, context, description=config.describe(),
                     on_epoch_start=[qat_schedule(config, qat_switches(config.backend))])
        prepared.eval()
        with quantized_engine(config.backend):
            return convert_fx(prepared)


def _qat_pt2e(module: nn.Module, config: QATConfig, context: StageContext, example: torch.Tensor) -> GraphModule:
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    quantizer = _xnnpack_quantizer(qat=True, left_alone=_with_linear_weights(module, config.linear_weight_bits))
    prepared = prepare_qat_pt2e(export_graph(module.train(), example), quantizer)
    # The training loop calls .train()/.eval(); torchao maps them onto dropout and BatchNorm ops.
    allow_exported_model_train_eval(prepared)
    run_finetune(prepared, config.finetune, context, description=config.describe(),
                 on_epoch_start=[qat_schedule(config, qat_switches(config.backend))])
    prepared.eval()
    return _converted_pt2e(prepared)


# --------------------------------------------------------------------------- stages


def _as_quantized(model: CompressedModel, module: nn.Module, backend: Backend) -> CompressedModel:
    return model.evolve(module=module, form=ModelForm.QUANTIZED, backend=backend,
                        runtime=runtime_for(backend), artifact=None)


@register_stage(DynamicQuantConfig)
def dynamic_quantize(model: CompressedModel, config: DynamicQuantConfig, context: StageContext) -> CompressedModel:
    from torch.ao.quantization import quantize_dynamic

    check_runs_on(config, model)
    module = copy.deepcopy(model.module).eval()
    if config.backend == "xnnpack":
        example = _calibration_batches(context, context.data.config.batch_size)[0]
        return _as_quantized(model, _dynamic_pt2e(module, example, config.linear_weight_bits), config.backend)
    with quiet_legacy_apis(), quantized_engine(config.backend):
        quantized = quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return _as_quantized(model, quantized, config.backend)


@register_stage(StaticQuantConfig)
def static_quantize(model: CompressedModel, config: StaticQuantConfig, context: StageContext) -> CompressedModel:
    check_runs_on(config, model)
    module = copy.deepcopy(model.module).eval()
    float_blocks = _float_prefix(module, config.float_prefix_blocks)
    batches = _calibration_batches(context, config.calibration_samples)

    def quantize(target: nn.Module, left_float: Sequence[str], bits: LinearWeightBits) -> nn.Module:
        if config.backend == "xnnpack":
            return _ptq_pt2e(target, batches, left_float, bits)
        return _ptq_fx(target, config.backend, batches, left_float)

    if config.float_sensitive_units:
        float_blocks += _most_sensitive(module, config, context, lambda m, left: quantize(m, left, 8), float_blocks)
    return _as_quantized(model, quantize(module, float_blocks, config.linear_weight_bits), config.backend)


def _most_sensitive(module: nn.Module, config: StaticQuantConfig, context: StageContext,
                    quantize_leaving: QuantizeLeaving, already_float: Sequence[str]) -> list[str]:
    """The ``config.float_sensitive_units`` units not already float that int8 changes most, measured on ``module``."""
    units = quantization_units(module)
    if config.float_sensitive_units >= len(units):
        raise UserError(f"`ptq.float_sensitive_units` is {config.float_sensitive_units} but the model has only "
                        f"{len(units)} units ({', '.join(units)}).",
                        f"set `float_sensitive_units` to at most {len(units) - 1}, so something is left to quantize.")
    loader = context.data.loader("val")
    probe = loader.normalise(stratified_sample(context.data.val, config.sensitivity_probe, context.seed).images).contiguous()
    ranking = int8_sensitivity(module, quantize_leaving, probe)
    return [s.unit for s in ranking if s.unit not in already_float][:config.float_sensitive_units]


@register_stage(QATConfig)
def quantization_aware_training(model: CompressedModel, config: QATConfig, context: StageContext) -> CompressedModel:
    check_runs_on(config, model)
    module = copy.deepcopy(model.module)
    example = _calibration_batches(context, context.data.config.batch_size)[0]
    if config.backend == "xnnpack":
        quantized = _qat_pt2e(module, config, context, example)
    else:
        quantized = _qat_fx(module, config, context, example)
    return _as_quantized(model, quantized, config.backend)
