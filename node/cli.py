"""The ``lungnode`` command line. Command names and flags are a contract (issue 2).

lungnode run [--config FILE] [--ae-title T] [--port N] [--storage DIR] [--destination AE@host:port ...]
lungnode analyze <dicom-dir> --out <dir> [--config FILE] [--engine unet|threshold]
                 [--lung-engine net|classical]
lungnode phantom --out <dir> [--seed N] [--lesion-scale F] [--patient-id ID] [--study-date YYYYMMDD]
lungnode send <path> --to AE@host:port
lungnode echo AE@host:port
lungnode status
lungnode check-config
lungnode evaluate medseg <dir> [--json FILE] [--split all|val|train] [--engine unet|threshold]
lungnode evaluate slices <series-dir> --labels FILE.csv --subject NAME [--json FILE]
lungnode export-training <ct-dir> <seg.dcm> --out <site-data-dir> [--name N] [--ggo-segment N ...]
lungnode train [--epochs N] [--out DIR] [--seed S] [--device auto|cpu|cuda] [--site-data DIR]
lungnode cohort analyze --in FILE.csv --out DIR
lungnode cohort export --out FILE.csv [--clinical FILE.csv] [--config FILE]

Exit codes: 0 success, 1 failure (network, delivery, internal), 2 usage or configuration
error, 3 bad input (the series cannot be analysed; the message says why).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from node import __version__
from node.config import ConfigError, Destination, Settings, load_settings, settings_as_yaml

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3

log = logging.getLogger("lungnode")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="config file (default: the embedded config.yaml)")
    parser.add_argument("--ae-title", help="override network.ae_title")
    parser.add_argument("--port", type=int, help="override network.port")
    parser.add_argument("--storage", type=Path, help="override storage.root")
    parser.add_argument(
        "--destination",
        action="append",
        metavar="AE@host:port",
        help="override destinations (repeat for several)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lungnode",
        description="DICOM node that quantifies viral pneumonia (COVID-19) on chest CT.",
    )
    parser.add_argument("--version", action="version", version=f"lungnode {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the node (C-STORE SCP, analysis, sending)")
    _add_config_flags(run)

    analyze = commands.add_parser("analyze", help="analyse a DICOM series offline (no network)")
    analyze.add_argument("dicom_dir", type=Path, help="folder with the CT series (searched recursively)")
    analyze.add_argument("--out", type=Path, required=True, help="folder for seg.dcm (lesions), seg_lungs.dcm, seg_lobes.dcm, sr.dcm, report.dcm/.pdf, summary.dcm, overlay_*.dcm, measurements.json")
    analyze.add_argument("--config", type=Path, help="config file (analysis settings)")
    analyze.add_argument(
        "--engine", choices=("unet", "threshold"), help="override analysis.engine for this run"
    )
    analyze.add_argument(
        "--lung-engine", choices=("net", "classical"), help="override analysis.lung_engine for this run"
    )

    phantom = commands.add_parser("phantom", help="write a synthetic chest CT series with truth.json")
    phantom.add_argument("--out", type=Path, required=True)
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--slices", type=int, default=120, help="number of slices (default 120)")
    phantom.add_argument("--size", type=int, default=256, help="rows and columns (default 256)")
    phantom.add_argument("--lesion-scale", type=float, default=1.0,
                         help="scale of the lesions' radii (serial scans of one patient; default 1)")
    phantom.add_argument("--patient-id", help="Patient ID (default PHANTOM-<seed>)")
    phantom.add_argument("--study-date", default="20200401", help="YYYYMMDD (default 20200401)")

    send = commands.add_parser("send", help="send DICOM files (a file or a folder) with C-STORE")
    send.add_argument("path", type=Path)
    send.add_argument("--to", required=True, metavar="AE@host:port")
    send.add_argument("--config", type=Path, help="config file (calling AE title, timeouts)")

    echo = commands.add_parser("echo", help="C-ECHO a DICOM peer")
    echo.add_argument("peer", metavar="AE@host:port")
    echo.add_argument("--config", type=Path, help="config file (calling AE title, timeouts)")

    status = commands.add_parser("status", help="series, jobs, deliveries and last errors")
    _add_config_flags(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of text")

    evaluate = commands.add_parser(
        "evaluate", help="measure the lesion engine against labelled data (see: evaluate medseg -h)"
    )
    evaluate.add_argument("dataset", choices=("medseg", "slices"),
                          help="medseg: labelled slices folder; slices: a series + labels.csv")
    evaluate.add_argument("rest", nargs=argparse.REMAINDER, help="<dir> [--json FILE] [--split ...]")

    train = commands.add_parser("train", help="train COVID-Lesion Net (python -m segmentation.train)")
    train.add_argument("rest", nargs=argparse.REMAINDER, help="[--epochs N] [--out DIR] [--seed S] ...")

    export = commands.add_parser(
        "export-training",
        help="make a training pair for `lungnode train --site-data` from a CT series + DICOM-SEG",
    )
    export.add_argument("ct_dir", type=Path, help="folder with the CT series")
    export.add_argument("seg", type=Path, help="the DICOM-SEG that labels it")
    export.add_argument("--out", type=Path, required=True, help="site-data folder (images/, labels/)")
    export.add_argument("--name", help="case name (default: the CT series UID)")
    export.add_argument("--ggo-segment", type=int, action="append", help="segment number(s) of GGO")
    export.add_argument(
        "--consolidation-segment", type=int, action="append", help="segment number(s) of consolidation"
    )
    export.add_argument(
        "--lesion-segment", type=int, action="append", help="segment number(s) of a binary lesion label"
    )

    cohort = commands.add_parser("cohort", help="cohort statistics of serial scans (analyze, export)")
    cohort_commands = cohort.add_subparsers(dest="cohort_command", required=True, metavar="ACTION")
    cohort_analyze = cohort_commands.add_parser(
        "analyze", help="the study's tables, curves and plots from a cohort CSV")
    cohort_analyze.add_argument("--in", dest="input", type=Path, required=True, metavar="FILE.csv",
                                help="columns patient_id, group, days_from_onset, ct_score, "
                                     "lesion_pct, ggo_pct, consolidation_pct")
    cohort_analyze.add_argument("--out", type=Path, required=True, metavar="DIR")
    cohort_export = cohort_commands.add_parser(
        "export", help="every analysed scan from the state store as a CSV")
    cohort_export.add_argument("--out", type=Path, required=True, metavar="FILE.csv")
    cohort_export.add_argument(
        "--clinical", type=Path, metavar="FILE.csv",
        help="columns patient_id, onset_date (YYYY-MM-DD), group: adds days_from_onset and group")
    _add_config_flags(cohort_export)

    check = commands.add_parser("check-config", help="validate the config and print what is in effect")
    _add_config_flags(check)
    return parser


def _settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict = {}
    if getattr(args, "ae_title", None):
        overrides.setdefault("network", {})["ae_title"] = args.ae_title
    if getattr(args, "port", None) is not None:
        overrides.setdefault("network", {})["port"] = args.port
    if getattr(args, "storage", None):
        overrides.setdefault("storage", {})["root"] = str(args.storage.resolve())
    if getattr(args, "destination", None):
        try:
            parsed = [Destination.parse(text) for text in args.destination]
        except ValueError as exc:
            raise ConfigError(f"--destination: {exc}") from exc
        overrides["destinations"] = [d.model_dump() for d in parsed]
    return load_settings(getattr(args, "config", None), overrides)


THIRD_PARTY_LOGGERS = ("highdicom", "pynetdicom", "pydicom", "apscheduler")


def _configure_logging(level: str, verbose: bool) -> None:
    """The entry point's log handler: UTC timestamps (``...Z``), the node's own loggers at
    ``logging.level``, third-party libraries at WARNING (DEBUG with ``-v``)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    formatter.converter = time.gmtime  # UTC whatever the host's time zone
    handler.setFormatter(formatter)
    logging.basicConfig(level=logging.DEBUG if verbose else getattr(logging, level),
                        handlers=[handler])
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _progress(message: str) -> None:
    print(f"[lungnode] {message}", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings_from_args(args)
    _configure_logging(settings.logging.level, args.verbose)
    from node.app import Node
    from segmentation.engine import EngineUnavailable, check_engine

    try:
        check_engine(settings.analysis.engine, settings.analysis.device, settings.analysis.lung_engine)
    except EngineUnavailable as exc:
        print(f"lungnode run: {exc}", file=sys.stderr)
        return EXIT_USAGE

    node = Node(settings)
    stopping = []

    def _stop(signum, _frame):
        if not stopping:
            stopping.append(signum)
            log.info("signal %d received: stopping", signum)
            node.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.start()
    net = settings.network
    log.info(
        "lungnode %s listening as %s on %s:%d, storage %s, %d destination(s)",
        __version__,
        net.ae_title,
        net.bind_address,
        node.port,
        settings.storage_root,
        len(settings.destinations),
    )
    node.run_forever()
    return EXIT_OK


def _dicom_files(folder: Path) -> tuple[list[Path], int]:
    """Files under ``folder`` that carry the DICOM Part 10 preamble, and how many did not."""
    found: list[Path] = []
    skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            head = handle.read(132)
        if len(head) == 132 and head[128:132] == b"DICM":
            found.append(path)
        else:
            skipped += 1
    return found, skipped


def cmd_analyze(args: argparse.Namespace) -> int:
    from node.analysis import analyze_series
    from node.volume import VolumeError
    from node.worker import OutputError
    from segmentation.engine import EngineUnavailable

    analysis_overrides = {key: value for key, value in
                          (("engine", args.engine), ("lung_engine", args.lung_engine)) if value}
    overrides = {"analysis": analysis_overrides} if analysis_overrides else None
    settings = load_settings(args.config, overrides)
    _configure_logging("WARNING", args.verbose)
    if not args.dicom_dir.is_dir():
        print(f"lungnode analyze: {args.dicom_dir} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    files, skipped = _dicom_files(args.dicom_dir)
    if skipped:
        _progress(f"skipping {skipped} file(s) that are not DICOM Part 10 files")
    if not files:
        print(f"lungnode analyze: no DICOM files in {args.dicom_dir}", file=sys.stderr)
        return EXIT_BAD_INPUT
    started = time.perf_counter()
    try:
        result = analyze_series(files, args.out, settings, progress=_progress)
    except VolumeError as exc:
        print(f"lungnode analyze: cannot analyse this series: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OutputError as exc:
        print(f"lungnode analyze: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except EngineUnavailable as exc:
        print(f"lungnode analyze: {exc}", file=sys.stderr)
        return EXIT_USAGE
    m = result.measurements
    files = [p for p in result.output_files if not p.name.startswith("overlay_")]
    overlays = len(result.output_files) - len(files)
    listed = ", ".join(str(p) for p in [*files, result.measurements_json])
    _progress(f"done in {time.perf_counter() - started:.1f} s: {listed}"
              + (f" and {overlays} overlay images (overlay_*.dcm)" if overlays else ""))
    summary = {
        "lung_volume_ml": m.lung_volume_ml,
        "lesion_pct": m.lesion_pct,
        "ggo_volume_ml": m.ggo_volume_ml,
        "consolidation_volume_ml": m.consolidation_volume_ml,
        "ct_score_equivalent": m.ct_score_equivalent,
    }
    print(json.dumps(summary))
    return EXIT_OK


def cmd_phantom(args: argparse.Namespace) -> int:
    from node.phantom import write_phantom

    _configure_logging("WARNING", args.verbose)
    _progress(f"writing a {args.slices}-slice {args.size}x{args.size} phantom (seed {args.seed}) to {args.out}")
    truth = write_phantom(args.out, seed=args.seed, slices=args.slices, size=args.size,
                          lesion_scale=args.lesion_scale, patient_id=args.patient_id,
                          study_date=args.study_date)
    print(json.dumps({k: truth[k] for k in ("lung_volume_ml", "ggo_volume_ml", "consolidation_volume_ml")}))
    return EXIT_OK


def _configured(destination: Destination, settings) -> Destination:
    """``AE@host:port`` given on the command line, with the settings (``tls``) of the
    configured destination of that name, if there is one."""
    return next((d for d in settings.destinations if str(d) == str(destination)), destination)


def cmd_send(args: argparse.Namespace) -> int:
    from node.sender import send_files

    settings = load_settings(args.config)
    _configure_logging(settings.logging.level, args.verbose)
    destination = _configured(Destination.parse(args.to), settings)
    if args.path.is_dir():
        files, skipped = _dicom_files(args.path)
        if skipped:
            _progress(f"skipping {skipped} file(s) that are not DICOM Part 10 files")
    elif args.path.is_file():
        files = [args.path]
    else:
        print(f"lungnode send: {args.path} does not exist", file=sys.stderr)
        return EXIT_USAGE
    if not files:
        print(f"lungnode send: no DICOM files in {args.path}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _progress(f"sending {len(files)} file(s) to {destination}")
    report = send_files(files, destination, settings)
    if report.association_error:
        print(f"lungnode send: no association with {destination}: {report.association_error}", file=sys.stderr)
    for path, reason in report.errors.items():
        print(f"lungnode send: {path}: {reason}", file=sys.stderr)
    print(f"{len(report.delivered)} of {len(files)} file(s) delivered to {destination}")
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_echo(args: argparse.Namespace) -> int:
    from node.sender import echo

    settings = load_settings(args.config)
    _configure_logging(settings.logging.level, args.verbose)
    destination = _configured(Destination.parse(args.peer), settings)
    status = echo(destination, settings)
    if status is None:
        print(f"C-ECHO {destination}: no association (peer down, refused, or wrong AE title)")
        return EXIT_FAILURE
    print(f"C-ECHO {destination}: status 0x{status:04X}" + (" (success)" if status == 0 else ""))
    return EXIT_OK if status == 0 else EXIT_FAILURE


def cmd_status(args: argparse.Namespace) -> int:
    from node.status import collect_status, format_status

    settings = _settings_from_args(args)
    report = collect_status(settings)
    print(json.dumps(report, indent=2, default=str) if args.json else format_status(report))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings_from_args(args)
    from segmentation.engine import EngineUnavailable, check_engine

    try:
        check_engine(settings.analysis.engine, settings.analysis.device, settings.analysis.lung_engine)
    except EngineUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    print(settings_as_yaml(settings), end="")
    print("# configuration is valid", file=sys.stderr)
    return EXIT_OK


def cmd_export_training(args: argparse.Namespace) -> int:
    from node.training_export import TrainingExportError, export_training_pair

    _configure_logging("WARNING", args.verbose)
    files, _ = _dicom_files(args.ct_dir) if args.ct_dir.is_dir() else ([], 0)
    seg_path = args.seg.resolve()
    files = [f for f in files if f.resolve() != seg_path]
    if not files:
        print(f"lungnode export-training: no DICOM files in {args.ct_dir}", file=sys.stderr)
        return EXIT_USAGE
    try:
        pair = export_training_pair(
            files,
            args.seg,
            args.out,
            args.name or _series_uid_of(files[0]),
            ggo_segments=args.ggo_segment,
            consolidation_segments=args.consolidation_segment,
            lesion_segments=args.lesion_segment,
        )
    except TrainingExportError as exc:
        print(f"lungnode export-training: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps({"image": str(pair.image_path), "label": str(pair.label_path),
                      "labels": pair.label_kind, "voxels_per_label": pair.voxels_per_label}))
    return EXIT_OK


def _series_uid_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.dataset == "slices":
        from node.evaluate_slices import main as evaluate_slices

        return evaluate_slices(args.rest)
    from segmentation.evaluate_medseg import main as evaluate_medseg

    return evaluate_medseg(args.rest)


def cmd_train(args: argparse.Namespace) -> int:
    from segmentation.train import main as train

    return train(args.rest)


def cmd_cohort(args: argparse.Namespace) -> int:
    from quant.cohort import CohortError

    _configure_logging("WARNING", args.verbose)
    try:
        if args.cohort_command == "analyze":
            from quant.cohort import read_cohort_csv
            from quant.cohort_report import analyze_cohort

            frame = read_cohort_csv(args.input)
            written = analyze_cohort(frame, args.out)
            _progress(f"{frame['patient_id'].nunique()} patients, {len(frame)} scans: "
                      f"{len(written)} files in {args.out}")
            print(json.dumps({name: str(path) for name, path in written.items()}))
            return EXIT_OK
        from node.course_export import export_cohort

        settings = _settings_from_args(args)
        count = export_cohort(settings, args.out, clinical_csv=args.clinical)
        _progress(f"{count} analysed scan(s) written to {args.out}")
        return EXIT_OK
    except CohortError as exc:
        print(f"lungnode cohort {args.cohort_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


COMMANDS = {
    "cohort": cmd_cohort,
    "export-training": cmd_export_training,
    "evaluate": cmd_evaluate,
    "train": cmd_train,
    "run": cmd_run,
    "analyze": cmd_analyze,
    "phantom": cmd_phantom,
    "send": cmd_send,
    "echo": cmd_echo,
    "status": cmd_status,
    "check-config": cmd_check_config,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # train and evaluate own their flags (and their --help): hand them over untouched
    if argv[:1] == ["train"]:
        return cmd_train(argparse.Namespace(rest=argv[1:]))
    if argv[:2] == ["evaluate", "medseg"]:
        return cmd_evaluate(argparse.Namespace(dataset="medseg", rest=argv[2:]))
    if argv[:2] == ["evaluate", "slices"]:
        from node.evaluate_slices import main as evaluate_slices

        return evaluate_slices(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"lungnode {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
