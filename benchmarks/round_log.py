"""A nested round's printout, kept in MLflow as well as on the screen.

A round runs for half an hour or more on two CPU cores, and its result used to live only in the
terminal and in ``quality.md``. Here it is one MLflow run in the experiment ``<pipeline's
experiment>-levers`` of the pipeline's own store, beside the pipeline's runs (``ecg ui mitdb``):
each arm's overrides as params, each outer split's scores as metrics the moment the split is
done (its number as the step), the summary at the end, and every printed line as ``round.txt``.
A round stopped by an error or by Ctrl-C keeps what it had logged and is marked FAILED or KILLED,
so that a half-finished round is never mistaken for a finished one.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from ecg.config import PipelineConfig
from ecg.provenance import git_commit
from ecg.tracking import Tracker

EXPERIMENT_SUFFIX = "-levers"


class RoundLog:
    """Prints a round's lines and, unless ``tracker`` is None, logs them to one MLflow run."""

    def __init__(self, tracker: Tracker | None, name: str, params: Mapping[str, Any], tags):
        self.tracker = tracker
        self.lines: list[str] = []
        self.run_id = None
        if tracker is not None:
            self.run_id = tracker.start(name, dict(tags))
            tracker.log_params(self.run_id, params)

    @classmethod
    def for_pipeline(cls, config: PipelineConfig, name: str, params, tags, enabled: bool = True):
        if not enabled:  # print only: no store, and no commit to look up for a tag
            return cls(None, name, params, tags)
        tracker = Tracker(config.tracking_uri, config.experiment + EXPERIMENT_SUFFIX)
        return cls(tracker, name, params, {"git_commit": git_commit(config.root), **tags})

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(self.run_id, values, step)

    def __enter__(self) -> RoundLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.tracker is None:
            return
        with tempfile.TemporaryDirectory() as folder:
            text = Path(folder) / "round.txt"
            text.write_text("".join(f"{line}\n" for line in self.lines))
            self.tracker.log_artifact(self.run_id, text)
        if error is None:
            self.tracker.finish(self.run_id)
        else:
            self.tracker.fail(self.run_id, error)
        print(
            f"(MLflow run {self.run_id}, experiment {self.tracker.experiment}, {self.tracker.uri})",
            file=sys.stderr,
        )


def metric_name(arm: str) -> str:
    """An arm's name as a metric key's first part: ``lever 1`` -> ``lever_1``."""
    return arm.replace(" ", "_")
