"""Opening trials: the trained model in each post-training form of the runtime its artifact ships on, and in its
cheapest operator cut, run before the probes, while nothing else is known; and the cheapest student, distilled beside
the probes.

The trained model's post-training forms train nothing (a calibration at most, then a lowering), so a search has judged
candidates, often shippable ones, in its first minute rather than after the probes (5-8 min of a 2-core machine). At
32x32 a program pays per operator, so int8 alone may miss a latency target that a cut network meets (on an AVX-512
EPYC the trained model in static int8 ran at x0.76 of the float `.pte`, without squeeze-excite and with ReLU at
x0.43, validation 0.544 against 0.563 after 4 epochs). Of the cuts the architecture family makes, the one without
every operator it can remove and without a block dropped is the cheapest at the least depth risk, whatever the
probes find, so it is one more opening trial, fine-tuned for the most epochs the space allows, and run first, while
the other processes run the post-training forms. Where only a student can meet the targets, waiting for the
probes to rank the students would put the first shippable candidate after them and a distillation; but one student
needs no ranking: the one every other student of the space contains (the narrowest, lean where the space has lean
students) costs no more than any of them, so it is distilled in a process of its own while the probes run, and
tried in the safest int8 form. All run in studies of their own and enter the search's study once the probes have
decided its space: Optuna refuses a categorical parameter whose choices change within a study, and only the
narrowed space says which parameters, with which choices, sample their pipeline there. An opening trial whose
pipeline the narrowed space cannot sample stays out of the study (its log line and its files remain).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Sequence
from functools import partial
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from udacisense.common.forked import map_forked
from udacisense.compression.architecture import ArchitectureConfig
from udacisense.compression.distillation import DistillationConfig
from udacisense.compression.quantization import DynamicQuantConfig, StaticQuantConfig
from udacisense.models.students import StudentArchitecture
from udacisense.runtime import warm_executorch_lowering
from udacisense.search.study.config import StudyConfig
from udacisense.search.study.records import DIRECTIONS, Attr, queued_attrs
from udacisense.search.study.storage import artifact_store
from udacisense.search.study.trial_record import TrialRecord, describe_trial
from udacisense.search.study.workspace import Workspace, open_workspace
from udacisense.search.trial.objective import TrialRunner
from udacisense.search.trial.portfolio import Entry, distilled_first, only_quantize, sampled_as
from udacisense.spaces.sampling import ORDER
from udacisense.spaces.space import SpaceConfig

Student = tuple[float, StudentArchitecture]

# The runtime a phone runs the artifact on; the legacy TorchScript backends only where a space has no other.
SHIPPING_BACKEND = "xnnpack"


def _plain_int8(space: SpaceConfig) -> dict[str, Any]:
    """Quantization parameters of the least risky int8 form on the shipping backend: 8-bit Linear weights, nothing
    kept in float."""
    options = space.quant_backends.options
    backend = SHIPPING_BACKEND if SHIPPING_BACKEND in options else options[0]
    return {"dynamic_backend": backend, "quant_backend": backend, "linear_weight_bits": 8,
            "float_prefix_blocks": space.float_prefix_blocks.low, "float_sensitive_units": space.float_sensitive_units.low}


def opening_entries(space: SpaceConfig) -> list[Entry]:
    """The baseline's operator cut (``operator_cut``) in static int8 first, then the baseline in each post-training
    quantization type ``space`` allows (dynamic, then static), on the shipping backend, with 8-bit Linear weights
    and nothing kept in float; none where the space would add another training stage."""
    cut = operator_cut(space)
    # Each opening's parameters beyond the plain int8 ones, and the stages it must run (no other training stage).
    openings: list[tuple[Entry, list[type]]] = [] if cut is None else [
        ({**cut, "quant_type": "static"}, [ArchitectureConfig, StaticQuantConfig])]
    openings += [({"quant_type": "dynamic"}, [DynamicQuantConfig]), ({"quant_type": "static"}, [StaticQuantConfig])]
    entries: list[Entry] = []
    for params, stages in openings:
        if params["quant_type"] not in space.quant_types.options:
            continue
        sampled = sampled_as(space, {**only_quantize(space), **_plain_int8(space), **params})
        if sampled is not None and [type(s) for s in sampled.pipeline.stages] == stages:
            entries.append(sampled.params)
    return entries


def operator_cut(space: SpaceConfig) -> Entry | None:
    """Parameters of the architecture family's cut of the trained model that removes every operator ``space`` lets it
    remove (squeeze-excite blocks, hard activations) and drops the fewest blocks it allows, fine-tuned for the most
    epochs it allows (its cost is what it is tried for; its accuracy is the question); None where the space has no
    architecture family or its cuts remove no operator."""
    squeeze_excite, activation = space.architecture_squeeze_excite.options, space.architecture_activation.options
    if "architecture" not in space.stages or ("remove" not in squeeze_excite and "relu" not in activation):
        return None
    return {"use_architecture": True,
            "architecture_squeeze_excite": "remove" if "remove" in squeeze_excite else squeeze_excite[0],
            "architecture_activation": "relu" if "relu" in activation else activation[0],
            "architecture_drop_blocks": space.architecture_drop_blocks.low, "finetune_epochs": space.finetune_epochs.high}


def opening_student(space: SpaceConfig) -> tuple[Student, Entry] | None:
    """The student every other student of ``space`` contains (its narrowest width, lean where it has lean students),
    and its opening trial: distilled first, then static int8 on the shipping backend (with the sampled distillation
    settings of a seeded draw); None when the space distils no student or cannot run that pipeline."""
    widths = [w for w in space.student_widths.options if w]
    if "distill" not in space.stages or not widths or "static" not in space.quant_types.options:
        return None
    architectures = space.student_architectures.options
    student: Student = (min(widths), "lean" if "lean" in architectures else architectures[0])
    sampled = sampled_as(space, {**distilled_first(space, *student), **_plain_int8(space), "quant_type": "static"})
    if sampled is None or [type(s) for s in sampled.pipeline.stages] != [DistillationConfig, StaticQuantConfig]:
        return None
    return student, sampled.params


def run_opening(workspace: Workspace, *, processes: int = 1, progress: bool = True) -> list[optuna.trial.FrozenTrial]:
    """Run the opening trials, one per process (forked, sharing the trained baseline), each in an in-memory study of
    its own; their artifacts go under the study's ``opening`` folder, apart from every other process's."""
    entries = opening_entries(workspace.study.space)
    if not entries:
        return []
    if progress:
        tqdm.write(f"opening: {len(entries)} trial(s) of the trained model, before the probes")
    folder = _opening_folder(workspace)
    to_pte = any("xnnpack" in (entry.get("quant_backend"), entry.get("dynamic_backend")) for entry in entries)
    trials = map_forked([partial(_run_one, workspace, folder / str(index), entry)
                         for index, entry in enumerate(entries)], processes,
                        before_fork=warm_executorch_lowering if to_pte else None)
    if progress:
        for trial in trials:
            tqdm.write(f"[opening] {describe_trial(trial, numbered=False)}")  # numbered in the study later
    return trials


def distil_and_open(study: StudyConfig, student: Student, entry: Entry, probing: Event, *,
                    progress: bool = True) -> list[optuna.trial.FrozenTrial]:
    """Distil ``student`` onto the shelf of ``study`` (its workspace opened anew: this runs in a process of its own
    beside the probes, ``opening_student`` says why), then, if ``probing`` is still set (the probes have not ended),
    run its opening trial ``entry``, whose artifact goes under the study's ``opening`` folder. Once the probes end,
    the student's first trials are the search's."""
    workspace = open_workspace(study, progress=False)
    name = workspace.students.name(*student)
    if progress:
        tqdm.write(f"[students] distilling {name} beside the opening trials and the probes: every other student of the "
                   "space contains it, so none costs less whatever the probes find")
    # No progress bar from this process: it would interleave with the probes'.
    dataclasses.replace(workspace.students, progress=False).student(*student)
    if not probing.is_set():
        return []
    trial = _run_one(workspace, _opening_folder(workspace) / name, entry)
    if progress:
        tqdm.write(f"[opening] {describe_trial(trial, numbered=False)}")
    return [trial]


def _opening_folder(workspace: Workspace) -> Path:
    return workspace.study.run_dir / "opening" / f"{socket.gethostname()}-{os.getpid()}"


def _run_one(workspace: Workspace, trials_dir: Path, entry: Entry) -> optuna.trial.FrozenTrial:
    scratch = optuna.create_study(directions=list(DIRECTIONS), sampler=optuna.samplers.RandomSampler(workspace.study.seed))
    scratch.enqueue_trial(dict(entry), user_attrs=queued_attrs({Attr.OPENING: True}))
    runner = TrialRunner(workspace, artifact_store(workspace.study), trials_dir=trials_dir)
    scratch.optimize(runner, n_trials=1, catch=(Exception,))
    return scratch.get_trials()[0]


def record_opening(study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial], space: SpaceConfig) -> list[int]:
    """Add the opening ``trials`` to ``study`` as ``space`` (the narrowed one) samples their pipelines, with their
    outcomes, attributes and times; returns the numbers they got."""
    numbers = []
    for trial in trials:
        # The order of families none of which it has: the narrowed space may not offer it, and it changes nothing.
        sampled = sampled_as(space, {name: value for name, value in trial.params.items() if name != ORDER})
        if sampled is None or sampled.pipeline.key() != TrialRecord.of(trial).pipeline_key:
            continue
        recorded = optuna.trial.create_trial(state=trial.state, values=trial.values, params=sampled.params,
                                             distributions=sampled.distributions, user_attrs=trial.user_attrs,
                                             system_attrs=trial.system_attrs)
        recorded.datetime_start, recorded.datetime_complete = trial.datetime_start, trial.datetime_complete
        study.add_trial(recorded)
        numbers.append(study.get_trials(deepcopy=False)[-1].number)
    return numbers
