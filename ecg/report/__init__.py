"""Evaluation reports: read a run back from MLflow, render Markdown and self-contained HTML."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ecg.atomic import write_text_atomic
from ecg.errors import EcgError
from ecg.report.collect import RunData, collect
from ecg.report.document import build
from ecg.report.render import html_page, markdown
from ecg.tracking import Tracker

log = logging.getLogger("ecg")

FORMATS = ("html", "md")


def write_report(
    tracker: Tracker,
    run_id: str,
    out: Path,
    formats: Sequence[str] = FORMATS,
    compare: Sequence[str] = (),
    log_to_run: bool = True,
) -> list[Path]:
    """Render the report of ``run_id`` into ``out`` and log it back to the run."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise EcgError(f"--format {','.join(unknown)}: expected html and/or md")
    run = collect(tracker, run_id)
    others = [collect(tracker, other) for other in compare]
    out.mkdir(parents=True, exist_ok=True)
    document = build(run, out, others)
    written = [image.path for image in document.blocks if hasattr(image, "path")]
    if "md" in formats:
        write_text_atomic(out / "report.md", markdown(document))
        written.append(out / "report.md")
    if "html" in formats:
        write_text_atomic(out / "report.html", html_page(document))
        written.append(out / "report.html")
    if log_to_run:
        for path in written:
            tracker.log_artifact(run_id, path, "report")
    return written


__all__ = ["RunData", "collect", "write_report"]
