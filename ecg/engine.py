"""Stages, fingerprints, stamps, locks and atomic outputs. Knows nothing about ECGs.

A stage declares the config params it reads, the upstream stages whose outputs it reads, and the
modules that are its code. Its fingerprint is those three, hashed. After a stage's outputs are
complete, the engine writes a stamp holding the fingerprint and the digests of its outputs. A stage
is fresh when its stamp matches what it would be now and its outputs are still the ones it wrote;
otherwise it runs. Staleness follows content (as in DVC): a downstream stage reruns when an input it
reads actually changed, so re-verifying a download that comes out identical retrains nothing.

Each stage writes into a temporary folder that is renamed into place only when the stage returns,
so a killed stage never leaves an output that looks complete.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ecg.atomic import write_text_atomic
from ecg.config import PipelineConfig, flatten, to_dict
from ecg.digests import DigestCache
from ecg.errors import EcgError
from ecg.locks import file_lock

log = logging.getLogger("ecg")

STAMP_VERSION = 1


@dataclass
class StageContext:
    """What a stage function gets: its config, its inputs, and a folder to write its outputs."""

    config: PipelineConfig
    out: Path
    """Temporary folder; renamed to the stage's output folder when the stage returns."""
    inputs: Mapping[str, Path]
    """Output folders of upstream stages, by stage name."""
    external: list[Path] = field(default_factory=list)
    """Files outside ``out`` that the stage vouches for (a shared download cache): they are
    recorded in the stamp, and the stage is stale if one of them goes missing or changes."""
    scratch: Path | None = None
    """A folder that survives a failed or killed run of this same fingerprint (checkpoints to
    resume from); emptied when the fingerprint changes and removed when the stage completes."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Run-time choices that do not change what a stage computes (resume, device, tracking)."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: str
    """``module:function`` of the stage function, imported only when the stage runs, so that
    ``ecg status`` does not pay for importing torch or mlflow."""
    params: tuple[str, ...]
    """Dotted config paths: a whole section (``download``) or one key (``download.version``)."""
    upstream: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    """Module names whose source is part of the fingerprint."""
    help: str = ""

    @property
    def module(self) -> str:
        return self.run.partition(":")[0]

    def function(self) -> Callable[[StageContext], None]:
        return getattr(importlib.import_module(self.module), self.run.partition(":")[2])


@dataclass(frozen=True)
class StageStatus:
    name: str
    fresh: bool
    reasons: tuple[str, ...]
    finished: str | None = None
    """When the stage last completed, from its stamp."""


@dataclass(frozen=True)
class StageOutcome:
    name: str
    ran: bool
    seconds: float
    reasons: tuple[str, ...]


class Engine:
    """Runs a pipeline's stages in order, skipping the fresh ones."""

    def __init__(self, config: PipelineConfig, stages: Sequence[Stage]):
        names = [s.name for s in stages]
        for stage in stages:
            for up in stage.upstream:
                if up not in names[: names.index(stage.name)]:
                    raise ValueError(f"stage {stage.name}: upstream {up} must come before it")
        self.config = config
        self.stages = list(stages)
        self.work_dir = config.data_path / "processed" / config.name
        self._digests = DigestCache(self.work_dir / ".stamps" / "digests.json")
        self._params = flatten(to_dict(config))

    # ----------------------------------------------------------------- paths

    def out_dir(self, stage: str) -> Path:
        return self.work_dir / stage

    def stamp_path(self, stage: str) -> Path:
        return self.work_dir / ".stamps" / f"{stage}.json"

    def _abs(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.config.root / p

    # ----------------------------------------------------------------- fingerprints

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise EcgError(
            f"pipeline {self.config.name} has no stage '{name}' "
            f"(stages: {', '.join(s.name for s in self.stages)})"
        )

    def params(self, name: str) -> dict[str, Any]:
        """The values of a stage's params as its stamp records them: two configurations whose
        values here agree make the same outputs from the same inputs and code."""
        return self._param_values(self.stage(name))

    def _param_values(self, stage: Stage) -> dict[str, Any]:
        values = {}
        for param in stage.params:
            matched = {
                k: v for k, v in self._params.items() if k == param or k.startswith(param + ".")
            }
            if not matched:
                raise ValueError(f"stage {stage.name} declares unknown param {param}")
            values.update(matched)
        return values

    def _code_digests(self, stage: Stage) -> dict[str, str]:
        digests = {}
        for module in (stage.module, *stage.code):
            spec = importlib.util.find_spec(module)
            if spec is None or spec.origin is None:
                raise ValueError(f"stage {stage.name}: cannot find the source of {module}")
            digests[module] = self._digests.file(Path(spec.origin))
        return digests

    def _current(self, stage: Stage) -> dict[str, Any]:
        return {
            "params": self._param_values(stage),
            "inputs": {up: self._digests.path_digest(self.out_dir(up)) for up in stage.upstream},
            "code": self._code_digests(stage),
        }

    def _read_stamp(self, stage: Stage) -> dict[str, Any] | None:
        try:
            stamp = json.loads(self.stamp_path(stage.name).read_text())
        except (OSError, ValueError):
            return None
        return stamp if stamp.get("version") == STAMP_VERSION else None

    def _stale_reasons(self, stage: Stage) -> list[str]:
        stamp = self._read_stamp(stage)
        if stamp is None:
            return ["never completed"]
        now = self._current(stage)
        reasons = []
        old_params, new_params = stamp["params"], now["params"]
        for key in sorted(set(old_params) | set(new_params)):
            if key not in old_params:
                reasons.append(f"param {key} added: {new_params[key]!r}")
            elif key not in new_params:
                reasons.append(f"param {key} removed (was {old_params[key]!r})")
            elif old_params[key] != new_params[key]:
                reasons.append(f"param {key} changed: {old_params[key]!r} -> {new_params[key]!r}")
        for up, digest in now["inputs"].items():
            if digest is None:
                reasons.append(f"input from stage '{up}' is missing")
            elif stamp["inputs"].get(up) != digest:
                reasons.append(f"input from stage '{up}' changed")
        for module, digest in now["code"].items():
            if stamp["code"].get(module) != digest:
                reasons.append(f"code changed: {module}")
        out_digest = self._digests.path_digest(self.out_dir(stage.name))
        if out_digest is None:
            reasons.append(f"output {self.config.relative(self.out_dir(stage.name))} is missing")
        elif out_digest != stamp["out"]:
            reasons.append(f"output {self.config.relative(self.out_dir(stage.name))} was modified")
        gone, changed = [], []
        for rel, digest in stamp["external"].items():
            current = self._digests.file(self._abs(rel))
            if current is None:
                gone.append(rel)
            elif current != digest:
                changed.append(rel)
        reasons += _summarise("is missing", "are missing", gone)
        reasons += _summarise("was modified", "were modified", changed)
        return reasons

    # ----------------------------------------------------------------- public API

    def status(self) -> list[StageStatus]:
        """Each stage, fresh or stale, and why; downstream of a stale stage waits on it."""
        result = []
        stale: set[str] = set()
        for stage in self.stages:
            reasons = self._stale_reasons(stage)
            waiting = [up for up in stage.upstream if up in stale]
            if waiting and not reasons:
                reasons = [f"waits on stale upstream '{up}'" for up in waiting]
            if reasons:
                stale.add(stage.name)
            stamp = self._read_stamp(stage)
            finished = stamp.get("finished") if stamp else None
            result.append(StageStatus(stage.name, not reasons, tuple(reasons), finished))
        self._digests.save()
        return result

    def run(
        self,
        until: str | None = None,
        force: Sequence[str] = (),
        on_stage: Callable[[Stage, tuple[str, ...]], None] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> list[StageOutcome]:
        """Run stale stages in order, up to and including ``until``."""
        for name in force:
            self.stage(name)
        last = self.stages.index(self.stage(until)) if until else len(self.stages) - 1
        outcomes = []
        with file_lock(self.work_dir / ".lock", f"pipeline {self.config.name}", wait=False):
            self._remove_leftovers()
            for stage in self.stages[: last + 1]:
                reasons = tuple(self._stale_reasons(stage))
                if stage.name in force:
                    reasons = ("forced with --force", *reasons)
                if not reasons:
                    outcomes.append(StageOutcome(stage.name, False, 0.0, ()))
                    continue
                if on_stage:
                    on_stage(stage, reasons)
                started = time.perf_counter()
                self._execute(stage, options or {})
                outcomes.append(
                    StageOutcome(stage.name, True, time.perf_counter() - started, reasons)
                )
        return outcomes

    # ----------------------------------------------------------------- execution

    def is_fresh(self, name: str) -> bool:
        return not self._stale_reasons(self.stage(name))

    def run_detached(self, name: str, options: Mapping[str, Any]) -> None:
        """Run a stage's function without the lock, its outputs or its stamp: for the extra
        processes of a distributed training, which compute alongside rank 0 but keep nothing."""
        stage = self.stage(name)
        # Rank 0's scratch folder, which rank 0 alone resets and writes (its checkpoints): a
        # detached rank that reset it too raced rank 0 for the same folder (FileExistsError).
        scratch = self._scratch_dir(stage)
        scratch.mkdir(parents=True, exist_ok=True)
        tmp = self.work_dir / f".{stage.name}.detached-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(
            config=self.config,
            out=tmp,
            inputs={up: self.out_dir(up) for up in stage.upstream},
            scratch=scratch,
            options=options,
        )
        try:
            stage.function()(ctx)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _execute(self, stage: Stage, options: Mapping[str, Any]) -> None:
        final = self.out_dir(stage.name)
        tmp = self.work_dir / f".{stage.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        fingerprint = self._current(stage)
        ctx = StageContext(
            config=self.config,
            out=tmp,
            inputs={up: self.out_dir(up) for up in stage.upstream},
            scratch=self._scratch(stage, fingerprint),
            options=options,
        )
        started = time.perf_counter()
        try:
            stage.function()(ctx)
            self.stamp_path(stage.name).unlink(missing_ok=True)
            old = self.work_dir / f".{stage.name}.old-{os.getpid()}"
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        stamp = {
            "version": STAMP_VERSION,
            "stage": stage.name,
            **fingerprint,
            "out": self._digests.path_digest(final),
            "external": {
                self.config.relative(p): self._digests.file(p) for p in sorted(set(ctx.external))
            },
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 3),
        }
        write_text_atomic(self.stamp_path(stage.name), json.dumps(stamp, indent=1))
        self._digests.save()
        shutil.rmtree(ctx.scratch, ignore_errors=True)

    def _scratch_dir(self, stage: Stage) -> Path:
        return self.work_dir / ".scratch" / stage.name

    def _scratch(self, stage: Stage, fingerprint: dict[str, Any]) -> Path:
        folder = self._scratch_dir(stage)
        key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
        marker = folder / "fingerprint"
        if not marker.is_file() or marker.read_text() != key:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)  # a detached rank may have made it since
            marker.write_text(key)
        return folder

    def _remove_leftovers(self) -> None:
        """Temporary folders of runs that were killed: never trusted, always removed."""
        if self.work_dir.is_dir():
            for leftover in self.work_dir.glob(".*.tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            for leftover in self.work_dir.glob(".*.old-*"):
                shutil.rmtree(leftover, ignore_errors=True)


def _summarise(one: str, many: str, paths: list[str]) -> list[str]:
    if not paths:
        return []
    if len(paths) == 1:
        return [f"{paths[0]} {one}"]
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return [f"{len(paths)} files {many}: {shown}"]
