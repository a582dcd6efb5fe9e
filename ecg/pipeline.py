"""The stage graph of a pipeline: which functions run, in which order, reading what.

Every pipeline (mitdb, ptbdb, smoke) has the same stages; what differs is its config.
"""

from __future__ import annotations

from ecg.config import PipelineConfig
from ecg.databases.download import download_stage
from ecg.engine import Engine, Stage

STAGES: tuple[Stage, ...] = (
    Stage(
        name="download",
        run=download_stage,
        # Where the files come from (source, mirror, timeouts) is not a param: verified files
        # are the same files whichever way they arrived.
        params=("download.database", "download.version", "download.records"),
        code=("ecg.databases.catalog", "ecg.databases.wfdb_io"),
        help="fetch a database's records into the local cache and verify every file",
    ),
)

STAGE_NAMES = tuple(stage.name for stage in STAGES)


def engine_for(config: PipelineConfig) -> Engine:
    return Engine(config, STAGES)
