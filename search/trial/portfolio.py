"""Known-good pipelines a study starts with (``search.portfolio``), and screened trials queued again to be measured."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution

from udacisense.common.errors import UserError
from udacisense.compression.pipeline import Pipeline
from udacisense.search.study.records import Attr, StudyRecord, queued_attrs
from udacisense.search.study.trial_record import records
from udacisense.search.trial.screening import ScreeningRule, promotions
from udacisense.spaces.families import STUDENT_WIDTH
from udacisense.spaces.sampling import ORDER, orders, sample_pipeline
from udacisense.spaces.space import SpaceConfig

Entry = Mapping[str, str | int | float | bool]


def _sampled(space: SpaceConfig, params: Entry) -> optuna.Trial:
    """A trial of a scratch study that samples ``space`` with ``params`` fixed (seeded, for the parameters it
    leaves open); raises ValueError when Optuna refuses a fixed categorical outside its choices."""
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    scratch.enqueue_trial(dict(params))
    trial = scratch.ask()
    sample_pipeline(trial, space)
    return trial


def check_portfolio(space: SpaceConfig, entries: Sequence[Entry]) -> None:
    """Refuse an entry that sets a parameter the space would not sample with the entry's other choices,
    or a value outside its range: the queued trial would silently run something else."""
    for index, params in enumerate(entries):
        try:
            trial = _sampled(space, params)
        except ValueError as error:
            raise UserError(f"`search.portfolio[{index}]`: {error}", "give values the study's [space] allows.") from None
        for name, value in params.items():
            where = f"`search.portfolio[{index}].{name}`"
            if name not in trial.params:
                raise UserError(f"{where} is set, but the space samples no parameter {name!r} in that pipeline "
                                f"(it samples: {', '.join(sorted(trial.params))}).",
                                "remove it, or set the parameters that make the space sample it.")
            distribution = trial.distributions[name]
            if trial.params[name] != value or not distribution._contains(distribution.to_internal_repr(value)):
                raise UserError(f"{where} is {value!r}, which the space cannot sample ({distribution}).",
                                "give a value the study's [space] allows.")


def fit_to_space(space: SpaceConfig, params: Entry) -> Entry | None:
    """``params`` without the parameters ``space`` does not sample with them (a setting with a single choice is not
    sampled); None when the space cannot take one of its values."""
    sampled = sampled_as(space, params)
    if sampled is None:
        return None
    fitted = {name: value for name, value in params.items() if name in sampled.params}
    return fitted if all(sampled.params[name] == value for name, value in fitted.items()) else None


@dataclass(frozen=True)
class Sampled:
    """A pipeline as a space samples it: the parameters the trial asks (with their distributions) and the pipeline."""

    params: dict[str, Any]
    distributions: dict[str, BaseDistribution]
    pipeline: Pipeline


def sampled_as(space: SpaceConfig, params: Entry) -> Sampled | None:
    """How ``space`` samples the pipeline that ``params`` choose (seeded, for the parameters they leave open): None
    when Optuna refuses one of their values (a choice the space lacks). Parameters it does not ask with the others
    are left out; a number outside its range is sampled anew (``fit_to_space`` refuses it)."""
    try:
        trial = _sampled(space, params)
    except ValueError:
        return None
    return Sampled(trial.params, trial.distributions, sample_pipeline(trial, space))


def only_quantize(space: SpaceConfig) -> dict[str, bool]:
    """Parameters that switch off every family of ``space`` but quantization."""
    return {f"use_{family}": False for family in space.stages if family != "quantize"}


def distilled_first(space: SpaceConfig, width: float, architecture: str) -> dict[str, Any]:
    """Parameters that distil into the student of ``width`` and ``architecture`` before any other family, every
    family but quantization off (asked, since distillation comes first in the order)."""
    first = next((o for o in orders(space) if o.startswith("distill")), None)
    return {**only_quantize(space), **({ORDER: first} if first and len(orders(space)) > 1 else {}), "use_distill": True,
            "student_width": width, "student_architecture": architecture}


def enqueue_portfolio(study: optuna.Study, entries: Sequence[Entry], ready: Callable[[Entry], bool]) -> list[int]:
    """Queue every entry not queued in this study yet whose ``ready`` holds (a student it needs is trained);
    returns the indices queued now."""
    queued = {r.portfolio_entry for r in records(study.get_trials(deepcopy=False))}
    now = [index for index, params in enumerate(entries) if index not in queued and ready(params)]
    for index in now:
        study.enqueue_trial(dict(entries[index]), user_attrs=queued_attrs({Attr.PORTFOLIO_ENTRY: index}))
    return now


def needs_no_student(params: Entry) -> bool:
    return not params.get(STUDENT_WIDTH)


def enqueue_promotions(study: optuna.Study, rule: ScreeningRule) -> list[int]:
    """Queue again, with its parameters and seed, every screened trial the measured front and cost model no
    longer rule out (queued or run promotions count as done); the rerun is lowered and measured. Returns the
    promoted trials' numbers."""
    due = promotions(records(study.get_trials(deepcopy=False)), rule, StudyRecord.of(study).probed)
    for record in due:
        study.enqueue_trial(dict(record.trial.params), user_attrs=queued_attrs(
            {Attr.SEED: record.seed, Attr.PROMOTED_FROM: record.number}), skip_if_exists=False)
    return [r.number for r in due]
