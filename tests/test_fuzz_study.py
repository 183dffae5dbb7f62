"""Fuzzing the study loader: whatever a user writes, the answer is a valid study or one clear error."""

from __future__ import annotations

import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from udacisense.common.errors import UserError
from udacisense.search.study.config import load_study, parse_study

BASE = tomllib.loads((Path(__file__).resolve().parents[1] / "studies" / "smoke.toml").read_text())
TABLES = ["data", "model", "baseline", "evaluation", "targets", "search", "space"]
KNOWN_KEYS = sorted({key for table in TABLES for key in BASE.get(table, {})} | {
    "epochs", "lr", "n_trials", "sampler", "stages", "quant_types", "prune_amount", "resolutions", "width_mult",
    "input_resolution", "pretrained", "weights_file", "threads", "runtimes", "mean", "std", "source", "root",
})

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["nsga2", "x86", "xnnpack", "static", "gradual", "imagefolder", "224"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def _assert_clear(error: UserError) -> None:
    text = str(error)
    assert error.problem and error.fix and "\n  fix: " in text
    assert "Traceback" not in text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(TABLES + [""]), st.sampled_from(KNOWN_KEYS + ["typo", "colour"]), values),
                      min_size=1, max_size=4))
def test_any_edit_gives_a_study_or_a_clear_error(edits) -> None:
    mapping = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for table, key, value in edits:
        target = mapping.setdefault(table, {}) if table else mapping
        if isinstance(target, dict):
            target[key] = None if value is None else value
    mapping = {k: v for k, v in mapping.items() if v is not None}
    for table in TABLES:
        if isinstance(mapping.get(table), dict):
            mapping[table] = {k: v for k, v in mapping[table].items() if v is not None}
    try:
        parse_study(mapping)
    except UserError as error:
        _assert_clear(error)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=200))
def test_any_file_text_gives_a_study_or_a_clear_error(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "s.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_study(path)
    except UserError as error:
        _assert_clear(error)
