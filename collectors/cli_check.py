"""The `check`, `dump` and `measure` subcommands of qcow2-analyze.

`check` prints what `qemu-img check` prints (human summary, or its JSON keys with qemu's
presence rules) plus located findings, and exits like it: 0 clean, 1 could not check,
2 corruptions, 3 leaks only. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, TextIO

from . import layout as L
from .errors import EXIT_CORRUPTIONS, EXIT_FAILED, EXIT_LEAKS, EXIT_OK, Qcow2Error
from .image import Qcow2Image
from .model import CheckResult, Finding

DEFAULT_MAX_FINDINGS = 100
MAX_CHAIN_DEPTH = 32


def register(subparsers: Any) -> None:
    """Add check, dump and measure to the lead CLI's subparsers."""
    check = subparsers.add_parser(
        "check", help="full consistency check, equal to `qemu-img check` (read-only)")
    check.add_argument("--output", choices=["human", "json"], default="human")
    check.add_argument("--chain", action="store_true",
                       help="also check every qcow2 layer of the backing chain")
    check.add_argument("--max-findings", type=int, default=DEFAULT_MAX_FINDINGS, metavar="N",
                       help="keep at most N located findings (counters stay complete)")
    check.add_argument("file")
    check.set_defaults(handler=run_check)

    dump = subparsers.add_parser("dump", help="dump L1/L2/refcount/snapshot/bitmap tables")
    dump.add_argument("--what", choices=["l1", "l2", "refcount", "snapshots", "bitmaps"],
                      required=True)
    dump.add_argument("--output", choices=["human", "json"], default="human")
    dump.add_argument("--limit", type=int, default=1000, metavar="N",
                      help="at most N entries per list (default 1000)")
    dump.add_argument("file")
    dump.set_defaults(handler=run_dump)

    measure = subparsers.add_parser(
        "measure", help="what `qemu-img measure -O qcow2` reports (required, fully allocated)")
    measure.add_argument("--output", choices=["human", "json"], default="human")
    measure.add_argument("file")
    measure.set_defaults(handler=run_measure)


# -- check -----------------------------------------------------------------------------------
def finding_dict(finding: Finding) -> dict[str, Any]:
    return {key: value for key, value in (
        ("kind", finding.kind), ("severity", finding.severity),
        ("message", finding.message), ("location", finding.location),
        ("host-offset", finding.host_offset), ("cluster-index", finding.cluster_index),
        ("expected", finding.expected), ("found", finding.found),
        ("advice", finding.advice)) if value is not None and value != ""}


def check_json(result: CheckResult, filename: str) -> dict[str, Any]:
    """qemu-img check --output=json: filename, format, check-errors always; the other figures
    only when nonzero (qemu's has_* rules); then our findings."""
    data: dict[str, Any] = {"filename": filename, "format": "qcow2",
                            "check-errors": result.check_errors}
    for key, value in (("image-end-offset", result.image_end_offset),
                       ("corruptions", result.corruptions), ("leaks", result.leaks),
                       ("total-clusters", result.total_clusters),
                       ("allocated-clusters", result.allocated_clusters),
                       ("fragmented-clusters", result.fragmented_clusters),
                       ("compressed-clusters", result.compressed_clusters)):
        if value:
            data[key] = value
    data["findings-total"] = result.findings_total
    data["findings"] = [finding_dict(f) for f in result.findings]
    if result.notes:
        data["notes"] = list(result.notes)
    return data


def check_human(result: CheckResult) -> str:
    """dump_human_image_check() in qemu-img.c, then the findings with advice."""
    out = []
    if not (result.corruptions or result.leaks or result.check_errors):
        out.append("No errors were found on the image.\n")
    else:
        if result.corruptions:
            out.append(f"\n{result.corruptions} errors were found on the image.\n"
                       "Data may be corrupted, or further writes to the image may corrupt it.\n")
        if result.leaks:
            out.append(f"\n{result.leaks} leaked clusters were found on the image.\n"
                       "This means waste of disk space, but no harm to data.\n")
        if result.check_errors:
            out.append(f"\n{result.check_errors} internal errors have occurred during the "
                       "check.\n")
    if result.total_clusters and result.allocated_clusters:
        a, t = result.allocated_clusters, result.total_clusters
        out.append(f"{a}/{t} = {a * 100.0 / t:0.2f}% allocated, "
                   f"{result.fragmented_clusters * 100.0 / a:0.2f}% fragmented, "
                   f"{result.compressed_clusters * 100.0 / a:0.2f}% compressed clusters\n")
    if result.image_end_offset:
        out.append(f"Image end offset: {result.image_end_offset}\n")
    for note in result.notes:
        out.append(f"Note: {note}\n")
    if result.findings_total:
        out.append(f"\nFindings ({result.findings_total}"
                   + (f", first {len(result.findings)} shown" if len(result.findings)
                      < result.findings_total else "") + "):\n")
        advice_seen: list[str] = []
        for f in result.findings:
            out.append(f"  [{f.severity}] {f.location}: {f.message}\n")
            if f.advice and f.advice not in advice_seen:
                advice_seen.append(f.advice)
        if advice_seen:
            out.append("\nAdvice:\n" + "".join(f"  - {a}\n" for a in advice_seen))
    return "".join(out)


def _error_line(exc: Qcow2Error, err: TextIO) -> None:
    print(f"qcow2-analyze: {exc}", file=err)


def _chain_paths(path: str) -> list[tuple[str, Optional[str], Optional[Qcow2Error]]]:
    """(path, format, error) of the image and each backing layer, top first."""
    from .names import path_problem, shown
    from .usage import backing_path, has_protocol

    layers: list[tuple[str, Optional[str], Optional[Qcow2Error]]] = [(path, "qcow2", None)]
    seen = {os.path.realpath(path)}
    current = path
    for _ in range(MAX_CHAIN_DEPTH):
        try:
            with Qcow2Image.open(current) as image:
                name, fmt = image.backing_filename, image.backing_format
        except Qcow2Error:
            break  # reported when the layer itself is checked
        if name is None:
            break
        problem = path_problem(name)
        if problem is not None:
            layers.append((shown(name), fmt, Qcow2Error(
                f"backing file name {problem}", structure="backing file name",
                value=shown(name), filename=current)))
            break
        if has_protocol(name):
            layers.append((name, fmt, Qcow2Error(
                "backing file name uses a protocol; not opened", structure="backing file",
                value=name, filename=current)))
            break
        resolved = backing_path(current, name)
        if os.path.realpath(resolved) in seen:
            layers.append((resolved, fmt, Qcow2Error(
                "backing chain loops", structure="backing file", value=name,
                filename=current)))
            break
        seen.add(os.path.realpath(resolved))
        if not os.path.exists(resolved):
            layers.append((resolved, fmt, Qcow2Error(
                "backing file not found", structure="backing file", value=name,
                filename=current)))
            break
        if fmt not in (None, "qcow2") or not _is_qcow2(resolved):
            layers.append((resolved, fmt or "raw", None))
            break
        layers.append((resolved, "qcow2", None))
        current = resolved
    return layers


def _is_qcow2(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == L.QCOW_MAGIC
    except OSError:
        return False


def _worst(codes: list[int]) -> int:
    for code in (EXIT_FAILED, EXIT_CORRUPTIONS, EXIT_LEAKS):
        if code in codes:
            return code
    return EXIT_OK


def run_check(args: argparse.Namespace, out: Optional[TextIO] = None,
              err: Optional[TextIO] = None) -> int:
    from .check import check_image  # numpy only for this command

    out = out or sys.stdout
    err = err or sys.stderr
    layers = _chain_paths(args.file) if args.chain else [(args.file, "qcow2", None)]
    reports: list[dict[str, Any]] = []
    codes = []
    for depth, (path, fmt, error) in enumerate(layers):
        result = None
        if error is None and fmt == "qcow2":
            try:
                result = check_image(path, max_findings=args.max_findings)
            except Qcow2Error as exc:
                error = exc.with_filename(path)
        if error is not None:
            _error_line(error, err)
            codes.append(EXIT_FAILED)
            reports.append({"filename": path, "depth": depth, "error": str(error)})
            if args.output == "human" and args.chain:
                out.write(f"{'' if depth == 0 else chr(10)}== {path}: could not check\n")
            continue
        if result is None:
            codes.append(EXIT_OK)
            reports.append({"filename": path, "depth": depth, "format": fmt,
                            "skipped": "not a qcow2 image: nothing to check"})
            if args.output == "human":
                out.write(f"\n== {path} ({fmt}): not qcow2, nothing to check\n")
            continue
        codes.append(result.exit_code)
        data = check_json(result, path)
        if args.chain:
            data["depth"] = depth
        reports.append(data)
        if args.output == "human":
            if args.chain:
                out.write(f"{'' if depth == 0 else chr(10)}== {path}\n")
            out.write(check_human(result))
    if args.output == "json":
        if args.chain:
            out.write(json.dumps(reports, indent=4) + "\n")
        elif "error" not in reports[0]:
            out.write(json.dumps(reports[0], indent=4) + "\n")
    return _worst(codes)


# -- dump / measure --------------------------------------------------------------------------
def run_dump(args: argparse.Namespace, out: Optional[TextIO] = None,
             err: Optional[TextIO] = None) -> int:
    from .dump import dump, render_human

    out = out or sys.stdout
    try:
        with Qcow2Image.open(args.file) as image:
            data = dump(image, args.what, limit=max(0, args.limit))
    except Qcow2Error as exc:
        _error_line(exc.with_filename(args.file), err or sys.stderr)
        return EXIT_FAILED
    if args.output == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(render_human(data))
    return EXIT_OK


def run_measure(args: argparse.Namespace, out: Optional[TextIO] = None,
                err: Optional[TextIO] = None) -> int:
    from .measure import measure_image

    out = out or sys.stdout
    try:
        with Qcow2Image.open(args.file) as image:
            data = measure_image(image, path=args.file)
    except Qcow2Error as exc:
        _error_line(exc.with_filename(args.file), err or sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        _error_line(Qcow2Error(exc.strerror or str(exc), structure="backing file",
                               filename=args.file), err or sys.stderr)
        return EXIT_FAILED
    if args.output == "json":
        out.write(json.dumps(data, indent=4) + "\n")
    else:
        out.write(f"required size: {data['required']}\n"
                  f"fully allocated size: {data['fully-allocated']}\n")
        if "bitmaps" in data:
            out.write(f"bitmaps size: {data['bitmaps']}\n")
    return EXIT_OK
