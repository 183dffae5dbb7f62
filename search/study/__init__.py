"""The study: its file (``config``), its storage and the records that cross it (``records`` writes,
``trial_record`` reads), the baseline's stored measurements, the workspace a process works in, and the
trial budget shared by every worker."""

from udacisense.search.study.baseline_profile import BaselineProfile
from udacisense.search.study.config import StudyConfig, load_study
from udacisense.search.study.records import Attr, StopReason, StudyAttr, StudyRecord, store, store_study
from udacisense.search.study.storage import open_storage, open_study
from udacisense.search.study.trial_record import TrialRecord
from udacisense.search.study.workspace import Workspace, open_workspace

__all__ = ["Attr", "BaselineProfile", "StopReason", "StudyAttr", "StudyConfig", "StudyRecord", "TrialRecord", "Workspace",
           "load_study", "open_storage", "open_study", "open_workspace", "store", "store_study"]
