"""The stage engine: fingerprints, stamps, freshness explained, atomic outputs, the lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecg.config import load_config
from ecg.engine import Engine, Stage
from ecg.errors import LockedError
from ecg.locks import file_lock

from conftest import write_pipeline

PIPELINE = "download:\n  database: mitdb\n  version: '{version}'\n  retries: {retries}\n"
CALLS: list[str] = []


def first(ctx):
    CALLS.append("first")
    (ctx.out / "value.txt").write_text(ctx.config.download.version)


def second(ctx):
    CALLS.append("second")
    text = (ctx.inputs["first"] / "value.txt").read_text()
    (ctx.out / "twice.txt").write_text(text * 2)


def third(ctx):
    CALLS.append("third")
    (ctx.out / "retries.txt").write_text(str(ctx.config.download.retries))


def broken(ctx):
    (ctx.out / "half.txt").write_text("half")
    raise RuntimeError("stage crashed")


STAGES = (
    Stage("first", f"{__name__}:first", params=("download.version",)),
    Stage("second", f"{__name__}:second", params=(), upstream=("first",)),
    Stage("third", f"{__name__}:third", params=("download.retries",), upstream=("second",)),
)


def _engine(tmp_path, version="1.0", retries=3, stages=STAGES):
    path = write_pipeline(tmp_path, "toy", PIPELINE.format(version=version, retries=retries))
    return Engine(load_config(path), stages)


def _ran(outcomes):
    return [o.name for o in outcomes if o.ran]


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()


def test_first_run_runs_everything_and_second_run_skips_everything(tmp_path):
    assert _ran(_engine(tmp_path).run()) == ["first", "second", "third"]
    assert _ran(_engine(tmp_path).run()) == []
    assert CALLS == ["first", "second", "third"]
    assert all(s.fresh for s in _engine(tmp_path).status())


def test_changed_param_reruns_its_stage_and_those_after_it(tmp_path):
    _engine(tmp_path).run()
    statuses = {s.name: s for s in _engine(tmp_path, version="2.0").status()}
    assert statuses["first"].reasons == ("param download.version changed: '1.0' -> '2.0'",)
    assert statuses["second"].reasons == ("waits on stale upstream 'first'",)
    assert _ran(_engine(tmp_path, version="2.0").run()) == ["first", "second", "third"]
    engine = _engine(tmp_path, version="2.0")
    assert (engine.out_dir("second") / "twice.txt").read_text() == "2.02.0"


def test_a_stages_params_are_those_its_stamp_records(tmp_path):
    base, later = _engine(tmp_path), _engine(tmp_path, retries=5)
    assert base.params("first") == later.params("first") == {"download.version": "1.0"}
    assert base.params("third") != later.params("third")
    assert base.params("second") == {}


def test_param_of_a_later_stage_reruns_only_that_stage(tmp_path):
    _engine(tmp_path).run()
    assert _ran(_engine(tmp_path, retries=5).run()) == ["third"]


def test_deleted_output_reruns_its_stage(tmp_path):
    engine = _engine(tmp_path)
    engine.run()
    (engine.out_dir("second") / "twice.txt").unlink()
    status = {s.name: s for s in _engine(tmp_path).status()}
    assert status["second"].reasons == ("output data/processed/toy/second was modified",)
    # second's output comes back identical, so third, which reads it, stays fresh
    assert _ran(_engine(tmp_path).run()) == ["second"]


def test_edited_output_is_detected(tmp_path):
    engine = _engine(tmp_path)
    engine.run()
    (engine.out_dir("first") / "value.txt").write_text("tampered")
    assert _ran(_engine(tmp_path).run()) == ["first"]


def test_until_stops_after_the_stage(tmp_path):
    assert _ran(_engine(tmp_path).run(until="second")) == ["first", "second"]
    assert not _engine(tmp_path).out_dir("third").exists()


def test_force_reruns_a_fresh_stage(tmp_path):
    _engine(tmp_path).run()
    outcomes = _engine(tmp_path).run(force=["second"])
    assert _ran(outcomes) == ["second"]
    assert outcomes[1].reasons[0] == "forced with --force"


def test_code_change_makes_a_stage_stale(tmp_path):
    engine = _engine(tmp_path)
    engine.run()
    stamp = json.loads(engine.stamp_path("first").read_text())
    stamp["code"][__name__] = "0" * 64
    engine.stamp_path("first").write_text(json.dumps(stamp))
    status = {s.name: s for s in _engine(tmp_path).status()}
    assert status["first"].reasons == (f"code changed: {__name__}",)


def test_a_crashing_stage_leaves_no_output_and_no_stamp(tmp_path):
    stages = (
        Stage("first", f"{__name__}:first", params=("download.version",)),
        Stage("broken", f"{__name__}:broken", params=(), upstream=("first",)),
    )
    engine = _engine(tmp_path, stages=stages)
    with pytest.raises(RuntimeError, match="stage crashed"):
        engine.run()
    assert not engine.out_dir("broken").exists()
    assert not engine.stamp_path("broken").exists()
    assert not list(engine.work_dir.glob(".broken.*"))
    assert engine.stamp_path("first").exists()


def test_a_crash_keeps_the_previous_complete_output(tmp_path):
    engine = _engine(tmp_path)
    engine.run()
    before = (engine.out_dir("first") / "value.txt").read_text()
    stages = (Stage("first", f"{__name__}:broken", params=("download.version",)),)
    with pytest.raises(RuntimeError):
        _engine(tmp_path, version="9", stages=stages).run(force=["first"])
    assert (engine.out_dir("first") / "value.txt").read_text() == before
    assert not (engine.out_dir("first") / "half.txt").exists()


def test_a_second_run_of_the_same_pipeline_is_refused(tmp_path):
    engine = _engine(tmp_path)
    refused = pytest.raises(LockedError, match=r"pipeline toy is already running \(pid \d+")
    with file_lock(engine.work_dir / ".lock", "pipeline toy", wait=False), refused:
        _engine(tmp_path).run()
    assert _ran(_engine(tmp_path).run()) == ["first", "second", "third"]


def test_unknown_stage_names_the_stages(tmp_path):
    from ecg.errors import EcgError

    with pytest.raises(EcgError, match="no stage 'fourth' .stages: first, second, third"):
        _engine(tmp_path).run(until="fourth")


# Modules that move data about or describe it, not what a stage computes (a download's files
# are verified by their hashes, whatever fetched them).
INFRASTRUCTURE = {
    "ecg",
    "ecg.atomic",
    "ecg.locks",
    "ecg.databases.network",
    "ecg.databases.sources",
    "ecg.config",
    "ecg.engine",
    "ecg.errors",
    "ecg.tracking",
    "ecg.provenance",
    "ecg.digests",
    "ecg.progress",
    "ecg.logs",
}


def _ecg_imports(module: str) -> set[str]:
    import ast
    import importlib.util

    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ecg":
            package = importlib.util.find_spec(node.module).submodule_search_locations
            for alias in node.names:  # ``from ecg.databases import wfdb_io`` names a module
                name = f"{node.module}.{alias.name}"
                found.add(name if package and importlib.util.find_spec(name) else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "ecg")
    return found


def test_every_module_a_stage_computes_with_is_part_of_its_fingerprint():
    """A stage whose code imports a module left out of ``code`` stays fresh when that module's
    computation changes, and serves stale results."""
    from ecg.pipeline import STAGES

    by_name = {s.name: s for s in STAGES}

    def covered(stage) -> set[str]:
        own = {stage.module, *stage.code}
        return own.union(*(covered(by_name[u]) for u in stage.upstream))

    for stage in STAGES:
        missing = _ecg_imports(stage.module) - covered(stage) - INFRASTRUCTURE
        assert not missing, f"stage {stage.name}: {sorted(missing)} not in its code"
