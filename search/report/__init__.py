"""The technical report: Markdown and HTML with figures, written only from stored measurements.

Inputs are what the other commands already stored: the Optuna study (objective values and user
attributes of every trial; the baseline's measurements, the latest export's model card and the
optional techniques benchmark of ``scripts/techniques.py`` as study attributes). Only a study
stored before the baseline's measurements or the card were falls back to
``runs/<study>/baseline/metrics.json`` and ``runs/<study>/export/model_card.json``; so a report
made from a copy of a current study's database says what the original says. It opens the storage
read-only and writes only into its output folder. No number in the report is typed in: every
figure is read from those or computed from them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from udacisense.common.files import write_text
from udacisense.search.report.facts import load_inputs, stage_steps
from udacisense.search.report.figures import (
    FIGURES,
    plot_hypervolume,
    plot_operators,
    plot_pareto,
    plot_per_class,
    plot_phases,
    plot_waterfall,
)
from udacisense.search.report.html import markdown_to_html
from udacisense.search.report.learned import section_learned
from udacisense.search.report.search_sections import recommendations, section_search
from udacisense.search.report.sections import section_baseline, section_chosen, section_deployment, section_summary, section_techniques
from udacisense.search.report.trial_facts import early_stopping_savings, hypervolume_history, phase_totals
from udacisense.search.results.convergence import convergence
from udacisense.search.study.config import StudyConfig
from udacisense.search.study.records import StudyRecord

__all__ = ["FIGURES", "ReportResult", "write_report"]


@dataclass(frozen=True)
class ReportResult:
    markdown: Path
    html: Path
    images: dict[str, Path]
    trial: int


def write_report(study: StudyConfig, out_dir: Path, *, storage: str | None = None, trial: int | None = None) -> ReportResult:
    """Write ``report.md``, ``report.html`` and the figures into ``out_dir``."""
    inputs = load_inputs(study, storage, trial)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history = hypervolume_history(inputs.trials)
    savings = early_stopping_savings(inputs.trials, StudyRecord.of(inputs.optuna_study).false_stops)
    steps = stage_steps(inputs)
    phases = phase_totals(inputs.trials)
    images = {
        "pareto": plot_pareto(inputs, out_dir / FIGURES["pareto"]),
        "hypervolume": plot_hypervolume(history, inputs.trials, out_dir / FIGURES["hypervolume"]),
        "waterfall": plot_waterfall(inputs, steps, out_dir / FIGURES["waterfall"]),
        "per_class": plot_per_class(inputs, out_dir / FIGURES["per_class"]),
        "phases": plot_phases(phases, out_dir / FIGURES["phases"]),
        "operators": plot_operators(inputs, out_dir / FIGURES["operators"]),
    }
    title = f"UdaciSense compression report: study {study.name}"
    technique_lines, rows = section_techniques(inputs)
    lines = [f"# {title}", "",
             f"Generated {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} by `udacisense report` from the "
             f"study storage `{inputs.storage_label}` (trials, baseline measurements, model card, techniques benchmark). Every number "
             "below is a stored measurement or is computed from them.", ""]
    lines += section_summary(inputs)
    lines += section_baseline(inputs)
    lines += technique_lines
    lines += section_search(inputs, history, savings, phases)
    lines += section_learned(inputs)
    lines += section_chosen(inputs, steps)
    lines += section_deployment(inputs)
    lines += recommendations(inputs, rows, convergence([t.trial for t in inputs.trials]), savings)
    markdown = "\n".join(lines)
    md_path = write_text(out_dir / "report.md", markdown)
    html_path = write_text(out_dir / "report.html", markdown_to_html(markdown, out_dir, title))
    return ReportResult(md_path, html_path, images, inputs.chosen.number)

