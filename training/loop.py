"""The one training loop: baseline training and every fine-tuning stage (with optional distillation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from udacisense.datasources.loaders import BatchLoader
from udacisense.evaluators.accuracy import evaluate_accuracy
from udacisense.training.config import TrainConfig

# Called before each epoch with (model, epoch); used by gradual pruning and QAT schedules.
EpochStartHook = Callable[[nn.Module, int], None]
# Called after each epoch with (epoch, validation top-1); may raise to stop a hopeless run.
EpochEndHook = Callable[[int, float], None]


@dataclass(frozen=True)
class Distillation:
    """``alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * CE``, optionally on mixed batches."""

    teacher: nn.Module
    alpha: float
    temperature: float
    # Each batch blended with a shuffled copy of itself (weight ~ Beta(mixup, mixup)), seen alike by teacher and
    # student: the teacher labels images the training set lacks, so a student can match it beyond those images
    # (Beyer et al. 2022, "consistent" distillation). 0: off.
    mixup: float = 0.0


@dataclass
class TrainHistory:
    train_loss: list[float] = field(default_factory=list)
    val_top1: list[float] = field(default_factory=list)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      alpha: float, temperature: float, label_smoothing: float = 0.0,
                      mixed_with: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """``mixed_with``: the labels of the images blended in and the share of the original ones."""
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if mixed_with is not None:
        other, share = mixed_with
        hard = share * hard + (1 - share) * F.cross_entropy(student_logits, other, label_smoothing=label_smoothing)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean", log_target=True,
    )
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


def to_memory_format(network: nn.Module, memory_format: torch.memory_format) -> None:
    """Lay out the 4-D weights (convolutions) of ``network`` in ``memory_format``, in place.

    ``nn.Module.to(memory_format=...)`` swaps every parameter, and torchao's int4 Linear weights (a
    tensor subclass) refuse the swap; only 4-D plain tensors have a layout to change.
    """
    for tensor in [*network.parameters(), *network.buffers()]:
        if tensor.dim() == 4 and type(tensor.data) is torch.Tensor:
            tensor.data = tensor.data.contiguous(memory_format=memory_format)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    total = max(1, config.epochs * steps_per_epoch)
    # OneCycleLR's warm-up ends at step pct_start * total - 1: with 4 steps or fewer (a smoke run's epoch of full
    # batches) it has no step and divides by zero, so such a run anneals from the top instead.
    if config.schedule == "onecycle" and total > 4:
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=0.25)
    if config.schedule in ("cosine", "onecycle"):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def fit(model: nn.Module, train: BatchLoader, config: TrainConfig, *, val: BatchLoader | None = None,
        num_classes: int = 10, distillation: Distillation | None = None,
        on_epoch_start: Sequence[EpochStartHook] = (), on_epoch_end: Sequence[EpochEndHook] = (),
        seed: int = 0, progress: bool = True, description: str = "train", weight_average: float = 0.0) -> TrainHistory:
    """Train ``model`` in place with SGD (Nesterov) and the configured schedule; returns the history.

    ``weight_average``: the decay per step of an exponential moving average of the weights and BatchNorm
    statistics, which ``model`` ends with (and is validated with) instead of its last weights; 0: off.
    """
    torch.manual_seed(seed)
    steps = len(train) if not config.max_batches_per_epoch else min(len(train), config.max_batches_per_epoch)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in model.parameters():
        if parameter.requires_grad:
            # Weight decay on BatchNorm and biases only hurts small networks.
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
    )
    scheduler = _scheduler(optimizer, config, steps)
    if distillation is not None:
        distillation.teacher.eval()
    history = TrainHistory()
    # NHWC convolutions train 1.3x (1 thread) to 1.7x (2 threads) faster than NCHW on x86 CPUs
    # (scripts/train_benchmark.py). The teacher too: an NCHW teacher fed NHWC batches converts at
    # every layer, which made distillation 1.5x slower. Both go back to the default layout
    # afterwards, as exporters and checkpoints expect.
    networks = [model] if distillation is None else [model, distillation.teacher]
    for network in networks:
        to_memory_format(network, torch.channels_last)
    averaged = None if not weight_average else AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(weight_average), use_buffers=True)
    try:
        _train_epochs(model, train, val, config, steps, optimizer, scheduler, history, num_classes=num_classes,
                      distillation=distillation, on_epoch_start=on_epoch_start, on_epoch_end=on_epoch_end,
                      progress=progress, description=description, averaged=averaged)
        if averaged is not None:
            model.load_state_dict(averaged.module.state_dict())
    finally:
        for network in networks:
            to_memory_format(network, torch.contiguous_format)
    model.eval()
    return history


def _train_epochs(model: nn.Module, train: BatchLoader, val: BatchLoader | None, config: TrainConfig, steps: int,
                  optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                  history: TrainHistory, *, num_classes: int, distillation: Distillation | None,
                  on_epoch_start: Sequence[EpochStartHook], on_epoch_end: Sequence[EpochEndHook],
                  progress: bool, description: str, averaged: AveragedModel | None) -> None:
    bar = tqdm(total=config.epochs * steps, desc=description, disable=not progress, leave=False, unit="batch")
    for epoch in range(config.epochs):
        if on_epoch_start:
            # Hooks (pruning masks, QAT switches) flatten parameters with view(), which NHWC strides refuse.
            to_memory_format(model, torch.contiguous_format)
            for hook in on_epoch_start:
                hook(model, epoch)
            to_memory_format(model, torch.channels_last)
        model.train()
        running, seen = 0.0, 0
        for step, (images, labels) in enumerate(train):
            if step >= steps:
                break
            mixed_with = None
            if distillation is not None and distillation.mixup:
                share = float(torch.distributions.Beta(distillation.mixup, distillation.mixup).sample())
                order = torch.randperm(len(labels))
                images, mixed_with = share * images + (1 - share) * images[order], (labels[order], share)
            images = images.contiguous(memory_format=torch.channels_last)
            logits = model(images)
            if distillation is None:
                loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            else:
                with torch.no_grad():
                    teacher_logits = distillation.teacher(images)
                loss = distillation_loss(logits, teacher_logits, labels, distillation.alpha,
                                         distillation.temperature, config.label_smoothing, mixed_with)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(model)
            running += float(loss.detach()) * len(labels)
            seen += len(labels)
            bar.update(1)
        history.train_loss.append(running / max(1, seen))
        if val is not None:
            top1 = evaluate_accuracy(model if averaged is None else averaged.module, val, num_classes).top1
            history.val_top1.append(top1)
            bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", val_top1=f"{top1:.3f}")
            for end_hook in on_epoch_end:
                end_hook(epoch, top1)
    bar.close()
