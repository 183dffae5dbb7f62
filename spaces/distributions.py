"""Typed values of the search space, like Optuna's distributions: a float or integer range, or a list of choices.

Each knows its study-file form (``[low, high]`` for a range, a list for choices), checks itself,
also against the declared limits of the stage config fields its samples go to, and asks a trial
for a sample with Optuna's own ``suggest_*`` call, so a stored parameter's distribution is exactly
what ``[space]`` says.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import GenericAlias
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import optuna

from udacisense.common.errors import UserError
from udacisense.common.schema import coerce, limits, outside_limits, span

N = TypeVar("N", int, float)
T = TypeVar("T")


def _list_of(item: Any) -> Any:
    # The schema type of a study-file list of ``item``s, so items are checked and named one by one.
    return GenericAlias(tuple, (item, ...))


@dataclass(frozen=True)
class StageField:
    """A stage config field that samples of a space value are passed to: its ``bounded`` limits bound the value."""

    config: type
    name: str

    def __post_init__(self) -> None:
        # Raised on import, so a renamed config field cannot leave a space value silently unbounded.
        if self.name not in {f.name for f in dataclasses.fields(self.config)}:
            raise TypeError(f"{self.config.__name__} has no field {self.name!r}")

    @property
    def field(self) -> dataclasses.Field[Any]:
        return {f.name: f for f in dataclasses.fields(self.config)}[self.name]

    def check(self, numbers: Iterable[object], key: str, written: object, fix: str) -> None:
        """Raise UserError naming ``key`` if a number lies outside the field's limits; ``fix`` may use ``{span}``."""
        field = self.field
        low, high = limits(field)
        for number in numbers:
            if outside_limits(field, number):
                doc = field.metadata.get("doc")
                raise UserError(
                    f"`{key}` is {written}, but {number} is out of range for `{self.config.__name__}.{self.name}`, "
                    f"which its samples go to ({span(low, high)}{f'; {doc}' if doc else ''}).",
                    fix.format(span=span(low, high)))


@dataclass(frozen=True)
class _Range(Generic[N]):
    """``[low, high]``, both ends included."""

    low: N
    high: N
    _number: ClassVar[type]

    def parse(self, value: Any, hint: Any, key: str) -> Self:
        """A range of this kind (e.g. on a log scale) from a study file's ``[low, high]`` list."""
        pair = coerce(value, _list_of(self._number), key)
        if len(pair) != 2:
            raise UserError(f"`{key}` is {list(pair)}, not a [low, high] range.",
                            f"write it as [low, high] with low <= high, e.g. {self.written()}.")
        return dataclasses.replace(self, low=pair[0], high=pair[1])

    def check(self, key: str, feeds: Sequence[StageField] = ()) -> None:
        """Raise UserError naming ``key`` unless the range is sound and lies within every fed field's limits."""
        self._check_itself(key)
        for target in feeds:
            target.check((self.low, self.high), key, self.written(), f"narrow `{key}` to lie {{span}}.")

    def _check_itself(self, key: str) -> None:
        if self.low > self.high:
            raise UserError(f"`{key}` is {self.written()}, not a [low, high] range: low is above high.",
                            f"write it as [low, high] with low <= high: {[self.high, self.low]}.")

    def written(self) -> list[N]:
        return [self.low, self.high]


@dataclass(frozen=True)
class FloatRange(_Range[float]):
    log: bool = False
    _number: ClassVar[type] = float

    def _check_itself(self, key: str) -> None:
        super()._check_itself(key)
        if self.log and self.low <= 0:
            raise UserError(f"`{key}` is {self.written()}, but it is sampled on a log scale, which needs low > 0.",
                            f"raise the low end of `{key}` above 0.")

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class IntRange(_Range[int]):
    _number: ClassVar[type] = int

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high)


@dataclass(frozen=True)
class Choice(Generic[T]):
    """One of ``options``, in that order (Optuna's categorical: the order is part of a stored distribution)."""

    options: tuple[T, ...]

    def parse(self, value: Any, hint: Any, key: str) -> Choice[T]:
        """Choices from a study file's list, each checked against the item type of ``hint`` (``Choice[item]``)."""
        (item,) = typing.get_args(hint)
        return Choice(coerce(value, _list_of(item), key))

    def check(self, key: str, feeds: Sequence[StageField] = ()) -> None:
        """Raise UserError naming ``key`` if there is no choice or a number lies outside a fed field's limits."""
        if not self.options:
            raise UserError(f"`{key}` is empty.", "give at least one choice.")
        for target in feeds:
            target.check(self.options, key, self.written(), f"drop the choices of `{key}` that are not {{span}}.")

    def suggest(self, trial: optuna.Trial, name: str) -> T:
        # Optuna types every choice as a plain scalar; the options' own type is kept.
        return cast(T, trial.suggest_categorical(name, list(self.options)))  # type: ignore[arg-type]  # T is a scalar

    def written(self) -> list[T]:
        return list(self.options)
