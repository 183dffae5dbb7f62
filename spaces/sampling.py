"""Turn an Optuna trial into a compression pipeline (define-by-run: parameters exist only if their stage does)."""

from __future__ import annotations

import itertools

import optuna

from udacisense.compression.pipeline import Pipeline
from udacisense.spaces.families import FAMILIES, STUDENT_WIDTH
from udacisense.spaces.space import FamilyName, SpaceConfig
from udacisense.training import TrainConfig

# The parameter that orders the permuted families.
ORDER = "order"


def orders(space: SpaceConfig) -> list[str]:
    """Every order of the space's permuted families, as ``a>b>c`` strings (the choices of ``order``).

    Only these families are permuted and the others follow in ``FAMILIES`` order, so every
    sampled pipeline passes ``Pipeline.check``.
    """
    return [">".join(p) for p in itertools.permutations(_permuted(space))]


def _permuted(space: SpaceConfig) -> list[FamilyName]:
    return [f for f in space.stages if FAMILIES[f].place == "permuted"]


def _order(trial: optuna.Trial, space: SpaceConfig) -> list[FamilyName]:
    # One categorical over the permutations of every permuted family of the space, not only of the
    # present ones: its choices never change, so all trials share one distribution (Optuna refuses
    # a parameter whose choices vary, and per-subset parameters would split the history), and TPE
    # learns a weight per whole order, which per-family keys sorted by value cannot express (an order
    # is a relation between keys). NSGA-II's crossover keeps or swaps whole orders, never a broken
    # one. Absent families drop out and the present ones keep their relative order.
    choices = orders(space)
    # With fewer than two permuted families there is no order to search.
    permuted = trial.suggest_categorical(ORDER, choices).split(">") if len(choices) > 1 else _permuted(space)
    return [*permuted, *(f for f, family in FAMILIES.items() if family.place == "last" and f in space.stages)]


def _finetune(trial: optuna.Trial, space: SpaceConfig) -> TrainConfig:
    # One fine-tune budget per trial, shared by its stages, keeps the space small.
    return TrainConfig(
        epochs=space.finetune_epochs.suggest(trial, "finetune_epochs"),
        lr=space.finetune_lr.suggest(trial, "finetune_lr"),
        schedule="cosine", label_smoothing=0.1,
    )


def _present(trial: optuna.Trial, space: SpaceConfig, family: FamilyName) -> bool:
    return (family in space.required or not FAMILIES[family].optional
            or trial.suggest_categorical(f"use_{family}", [True, False]))


def _first_live(trial: optuna.Trial, space: SpaceConfig, order: list[FamilyName]) -> int:
    """Where the work that reaches the artifact starts in ``order``: at a distillation into a narrower student, else 0.

    The student is a new network (``compression.distillation``) that keeps nothing the stages before
    it did, so those would cost a trial their fine-tuning and teach the search noise. Decided before
    any other family is switched on, so those are not even asked (``_distill`` asks the width again:
    Optuna gives the same value).
    """
    if "distill" not in order or not _present(trial, space, "distill"):
        return 0
    return order.index("distill") if space.student_widths.suggest(trial, STUDENT_WIDTH) else 0


def sample_pipeline(trial: optuna.Trial, space: SpaceConfig) -> Pipeline:
    """Sample which stage families appear, their order, and each present stage's hyperparameters.

    The permuted families come first, the others follow them (see ``_order``), so the pipeline
    always passes ``Pipeline.check``; none comes before a distillation into a narrower student
    (see ``_first_live``) unless the space requires it.
    """
    order = _order(trial, space)
    live = _first_live(trial, space, order)
    # A required family stays even where a student discards its work: the study file insists on it,
    # and the rule stays simple.
    present = [f for i, f in enumerate(order) if (i >= live or f in space.required) and _present(trial, space, f)]
    # Every present family is asked, none skipped once one trains, so a trial suggests its
    # parameters in one order whatever they turn out to be.
    trains = [FAMILIES[f].trains(trial, space) for f in present]
    finetune = _finetune(trial, space) if any(trains) else None
    stages = [FAMILIES[f].sample(trial, space, finetune) for f in present]
    return Pipeline(tuple(s for s in stages if s is not None))
