"""The report stage: the last step of `ecg run`, rendering the run its model was trained in."""

from __future__ import annotations

import json
import logging
import shutil

from ecg.engine import StageContext
from ecg.report import write_report
from ecg.tracking import Tracker

log = logging.getLogger("ecg")


def report_stage(ctx: StageContext) -> None:
    config = ctx.config
    run = json.loads((ctx.inputs["train"] / "run.json").read_text())
    tracker = Tracker(run["tracking_uri"], run["experiment"])
    written = write_report(tracker, run["run_id"], ctx.out, config.report.formats)
    target = config.resolve("reports") / config.name / run["run_id"]
    target.mkdir(parents=True, exist_ok=True)
    for path in written:
        shutil.copyfile(path, target / path.name)
    log.info(
        "report: %s",
        ", ".join(
            config.relative(target / p.name) for p in written if p.name.startswith("report.")
        ),
    )
