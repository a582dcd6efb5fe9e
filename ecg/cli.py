"""The ``ecg`` command: parse, call, print. Nothing here knows how a stage works."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ecg import __version__
from ecg.config import DETECTORS, PREDICT_DETECTOR, PipelineConfig, find_pipeline, load_config
from ecg.engine import Stage
from ecg.errors import EcgError
from ecg.interrupts import interrupts_end_the_run
from ecg.pipeline import STAGES, engine_for

log = logging.getLogger("ecg")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        # SIGTERM (a scheduler, `kill`) ends the run like Ctrl-C: cleanup code runs, temporary
        # outputs are removed and the MLflow run is marked, instead of dying mid-write.
        with interrupts_end_the_run():
            return args.handler(args) or 0
    except EcgError as exc:
        if args.debug:
            raise
        print(f"ecg: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            "ecg: interrupted; finished stages are kept, the interrupted one left nothing "
            "behind and runs again next time",
            file=sys.stderr,
        )
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecg",
        description="Staged, reproducible ECG classification on PhysioNet databases.",
    )
    parser.add_argument("--version", action="version", version=f"ecg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="print warnings only")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("run", help="run the pipeline's stale stages in order")
    _pipeline_args(run)
    run.add_argument("--until", metavar="STAGE", help="stop after this stage")
    run.add_argument(
        "--force",
        metavar="STAGE",
        action="append",
        default=[],
        help="run this stage even if it is fresh (repeatable)",
    )
    run.set_defaults(handler=cmd_run)

    status = commands.add_parser("status", help="say which stages are fresh, which stale and why")
    _pipeline_args(status)
    status.set_defaults(handler=cmd_status)

    ui = commands.add_parser("ui", help="open the MLflow UI on the pipeline's tracking store")
    _pipeline_args(ui)
    ui.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    ui.set_defaults(handler=cmd_ui)

    predict = commands.add_parser(
        "predict", help="classify the beats of a recording (WFDB, EDF, CSV) or of a folder"
    )
    predict.add_argument("record", type=Path, help="a WFDB record, .edf or .csv file, or a folder")
    predict.add_argument(
        "--model", required=True, help="model.pt, a training output folder, or models:/NAME/VERSION"
    )
    predict.add_argument("--fs", type=float, help="sampling rate in Hz (CSV input)")
    predict.add_argument(
        "--annotations",
        metavar="EXT",
        help="use the record's reference beats (e.g. atr) instead of detecting",
    )
    predict.add_argument(
        "--detector",
        choices=DETECTORS,
        default=PREDICT_DETECTOR,
        help=f"R-peak detector when there are no annotations (default {PREDICT_DETECTOR}, the "
        "one that misses and adds the fewest beats on MIT-BIH: benchmarks/detectors.py)",
    )
    predict.add_argument("--out", type=Path, help="per-beat CSV (a folder in batch mode)")
    predict.add_argument("--plot", type=Path, help="PNG strip of the first 20 s, beats coloured")
    predict.add_argument("--tracking-uri", metavar="URI", help="MLflow store for models:/ URIs")
    predict.set_defaults(handler=cmd_predict)

    export = commands.add_parser(
        "export", help="a trained model as a torch.export program (or TorchScript, ONNX)"
    )
    export.add_argument(
        "--model", required=True, help="model.pt, a training output folder, or models:/NAME/VERSION"
    )
    export.add_argument("--out", type=Path, required=True, help="folder to write into")
    export.add_argument(
        "--format",
        default="exported",
        help="exported (model.pt2, torch.export), torchscript (deprecated by torch 2.13), onnx; "
        "comma-separated",
    )
    export.add_argument("--tracking-uri", metavar="URI", help="MLflow store for models:/ URIs")
    export.set_defaults(handler=cmd_export)

    runs = commands.add_parser("runs", help="past runs of a pipeline as a table")
    _pipeline_args(runs)
    runs.add_argument("--sort", metavar="METRIC", help="e.g. test_macro_f1 (highest first)")
    runs.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    runs.set_defaults(handler=cmd_runs)

    for stage in STAGES:
        if stage.name == "report":
            continue
        sub = commands.add_parser(
            stage.name, help=f"{stage.help} (runs stale upstream stages first)"
        )
        _pipeline_args(sub)
        sub.add_argument("--force", action="store_true", help="run it even if it is fresh")
        sub.set_defaults(handler=cmd_stage, stage=stage.name)

    report = commands.add_parser(
        "report", help="render a run's report: the pipeline's latest model, or any past run"
    )
    _pipeline_args(report)
    which = report.add_mutually_exclusive_group()
    which.add_argument("--run", metavar="RUN_ID", help="a past run of the pipeline")
    which.add_argument(
        "--latest", action="store_true", help="the newest finished run in the pipeline's experiment"
    )
    report.add_argument(
        "--compare",
        metavar="RUN_ID",
        nargs="+",
        default=[],
        help="runs to set beside it: config and metric differences",
    )
    report.add_argument("--format", default="html,md", help="html, md or html,md (default)")
    report.add_argument("--force", action="store_true", help="run the report stage even if fresh")
    report.set_defaults(handler=cmd_report, stage="report")
    return parser


def _pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pipeline",
        nargs="?",
        metavar="PIPELINE",
        help="a pipeline name (pipelines/NAME.yaml) or a YAML file",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="pipeline YAML to use instead of pipelines/PIPELINE.yaml",
    )
    parser.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override one config value (repeatable)",
    )
    parser.add_argument(
        "--source",
        metavar="DIR",
        help="take the raw records from this local folder instead of PhysioNet",
    )
    parser.add_argument(
        "--mirror",
        metavar="URL",
        help="fetch from this server with PhysioNet's layout instead of PhysioNet",
    )
    parser.add_argument(
        "--records", metavar="LIST", help="only these records, comma-separated (e.g. 100,101)"
    )
    parser.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="k-fold cross-validation with K folds (sets split.folds)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted training from its last checkpoint",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="where to train and evaluate (default: train.device, auto)",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
        "SQLite store in the data folder)",
    )


def load(args: argparse.Namespace) -> PipelineConfig:
    if args.config is not None:
        path = find_pipeline(str(args.config))
    elif args.pipeline:
        path = find_pipeline(args.pipeline)
    else:
        raise EcgError("name a pipeline (e.g. ecg run mitdb) or give --config FILE")
    overrides = list(args.overrides)
    if args.source:
        overrides.append(f"download.source={Path(args.source).resolve()}")
    if args.mirror:
        overrides.append(f"download.mirror={args.mirror}")
    if args.records:
        overrides.append(f"download.records={args.records}")
    if args.folds is not None:
        overrides.append(f"split.folds={args.folds}")
    return load_config(path, overrides)


def cmd_run(args: argparse.Namespace, until: str | None = None) -> int:
    config = load(args)
    engine = engine_for(config)
    options = {
        "resume": args.resume,
        "device": args.device if args.device != "auto" else None,
        "tracking_uri": args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
    }
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        from ecg.distributed import run_distributed

        run_distributed(engine, options, args.force, on_stage=_announce)
        return 0
    outcomes = engine.run(
        until=until or args.until, force=args.force, on_stage=_announce, options=options
    )
    ran = [o for o in outcomes if o.ran]
    for outcome in outcomes:
        if outcome.ran:
            log.info("%s: done in %.1f s", outcome.name, outcome.seconds)
        else:
            log.info("%s: fresh, nothing to do", outcome.name)
    if not ran:
        log.info("%s: every stage is fresh; nothing was run", config.name)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    args.until = args.stage
    args.force = [args.stage] if args.force else []
    return cmd_run(args)


def cmd_status(args: argparse.Namespace) -> int:
    config = load(args)
    engine = engine_for(config)
    print(f"pipeline {config.name}: outputs in {config.relative(engine.work_dir)}")
    width = max(len(s.name) for s in engine.stages)
    for status in engine.status():
        state = "fresh" if status.fresh else "stale"
        detail = f"  (finished {status.finished})" if status.fresh and status.finished else ""
        print(f"  {status.name:<{width}}  {state}{detail}")
        for reason in status.reasons:
            print(f"  {'':<{width}}    - {reason}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if not (args.run or args.latest or args.compare):
        return cmd_stage(args)
    from ecg.report import write_report
    from ecg.tracking import Tracker

    config = load(args)
    tracker = Tracker(_tracking_uri(args, config), config.experiment)
    run_id = args.run or _latest_run(tracker, config.name)
    out = config.resolve("reports") / config.name / run_id
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    written = write_report(tracker, run_id, out, formats, args.compare)
    for path in written:
        if path.name.startswith("report."):
            print(config.relative(path))
    return 0


def _latest_run(tracker, pipeline: str) -> str:
    runs = tracker.search(max_results=50)
    if not runs.empty and "tags.mlflow.parentRunId" in runs.columns:
        runs = runs[runs["tags.mlflow.parentRunId"].isna()]
    if not runs.empty:
        runs = runs[runs["status"] == "FINISHED"]
    if not runs.empty and "metrics.test_accuracy" in runs.columns:
        runs = runs[runs["metrics.test_accuracy"].notna()]
    if runs.empty:
        raise EcgError(f"no finished, evaluated run of {pipeline} in {tracker.uri}")
    return str(runs.iloc[0]["run_id"])


def cmd_runs(args: argparse.Namespace) -> int:
    from ecg.report.runs import runs_table
    from ecg.tracking import Tracker

    config = load(args)
    tracker = Tracker(_tracking_uri(args, config), config.experiment)
    table = runs_table(tracker, args.sort, args.limit)
    if table.empty:
        print(f"no runs of {config.name} in {tracker.uri}")
    else:
        print(table.to_string(index=False))
    return 0


def _tracking_uri(args: argparse.Namespace, config: PipelineConfig) -> str:
    return args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri


def _model_store(args: argparse.Namespace) -> str | None:
    """Where models:/ URIs are looked up: --tracking-uri, $MLFLOW_TRACKING_URI, or the store of
    the project the command is started in."""
    if args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "pipelines").is_dir():
            return f"sqlite:///{folder / 'data' / 'mlflow.db'}"
    return None


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from ecg.predict import load_model, predict, read_recording

    model = load_model(args.model, _model_store(args))
    leads = list(model.signal.leads)
    if args.record.is_dir():
        return _predict_folder(args, model)
    recording = read_recording(args.record, leads, args.fs)
    table, summary = predict(model, recording, args.annotations, args.detector)
    out = args.out or Path(f"{recording.name}.predictions.csv")
    _write_csv(table, out)
    if args.plot:
        from ecg.plots import strip_png

        strip_png(
            recording.signal[:, 0],
            recording.fs,
            table["sample"].to_numpy(),
            list(table["class"]),
            args.plot,
            title=f"{recording.name}: predicted classes",
        )
    print(json.dumps({**summary, "predictions": str(out)}, indent=1))
    return 0


def _predict_folder(args: argparse.Namespace, model) -> int:
    import json

    from tqdm import tqdm

    from ecg.predict import predict, read_recording

    folder = args.record
    inputs = sorted({*folder.glob("*.hea"), *folder.glob("*.csv"), *folder.glob("*.edf")})
    if not inputs:
        raise EcgError(f"{folder}: no .hea, .csv or .edf files")
    out = args.out or folder / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    summaries, failures = [], []
    for path in tqdm(inputs, unit="rec", desc="predict", disable=None):
        try:
            recording = read_recording(path, list(model.signal.leads), args.fs)
            table, summary = predict(model, recording, args.annotations, args.detector)
        except EcgError as exc:
            failures.append({"input": str(path), "error": str(exc)})
            log.warning("%s", exc)
            continue
        _write_csv(table, out / f"{recording.name}.csv")
        summaries.append(summary)
    (out / "summary.json").write_text(
        json.dumps({"records": summaries, "failed": failures}, indent=1)
    )
    print(f"{len(summaries)} records classified, {len(failures)} failed: {out / 'summary.json'}")
    return 1 if failures and not summaries else 0


def _write_csv(table, path: Path) -> None:
    from ecg.atomic import atomic_path

    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5f")


def cmd_export(args: argparse.Namespace) -> int:
    from ecg.export import export
    from ecg.predict import load_model

    model = load_model(args.model, _model_store(args))
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    for path in export(model, args.out, formats):
        print(path)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from ecg.tracking import ui_command

    config = load(args)
    uri = _tracking_uri(args, config)
    print(f"MLflow UI for {uri}: http://127.0.0.1:{args.port}  (Ctrl-C to stop)", flush=True)
    return subprocess.call(ui_command(uri, args.port))


def _announce(stage: Stage, reasons: tuple[str, ...]) -> None:
    log.info(
        "%s: running (%s)",
        stage.name,
        "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""),
    )


def _configure_logging(quiet: bool) -> None:
    logger = logging.getLogger("ecg")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message is logged, not when it was set up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass
