"""The ``ecg`` command: parse, call, print. Nothing here knows how a stage works."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ecg import __version__
from ecg.config import PipelineConfig, find_pipeline, load_config
from ecg.engine import Stage
from ecg.errors import EcgError
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

    for stage in STAGES:
        sub = commands.add_parser(
            stage.name, help=f"{stage.help} (runs stale upstream stages first)"
        )
        _pipeline_args(sub)
        sub.add_argument("--force", action="store_true", help="run it even if it is fresh")
        sub.set_defaults(handler=cmd_stage, stage=stage.name)
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
    return load_config(path, overrides)


def cmd_run(args: argparse.Namespace, until: str | None = None) -> int:
    config = load(args)
    engine = engine_for(config)
    options = {
        "resume": args.resume,
        "device": args.device if args.device != "auto" else None,
        "tracking_uri": args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
    }
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


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from ecg.tracking import ui_command

    config = load(args)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri
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
