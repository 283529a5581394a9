"""`qcow2-analyze check`.

`check` prints what `qemu-img check` prints (human summary, or its JSON keys with qemu's
presence rules) plus located findings, and exits like it: 0 clean, 1 could not check,
2 corruptions, 3 leaks only. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
from contextlib import closing
from typing import Any, Optional, TextIO

from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_OK
from qcow2_monitor.cli.text import finding_text, json_text
from qcow2_monitor.collectors.common.errors import Qcow2Error
from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.qcow2.chain import walk
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.report.model import (
    LAYER_ERROR,
    LAYER_OK,
    LAYER_PROTOCOL,
    ChainLayer,
    CheckResult,
    Finding,
    Place,
)

from .common import OUTPUT_HELP, count_option, epilog, error_document, report_error

# qemu-img check's exit codes beside the common ones.
EXIT_CORRUPTIONS = 2
EXIT_LEAKS = 3

DEFAULT_MAX_FINDINGS = 100


def register(subparsers: Any) -> None:
    """Add check to the lead parser's subparsers."""
    check = subparsers.add_parser(
        "check", help="full consistency check, equal to `qemu-img check` (read-only)",
        description="The full consistency check of `qemu-img check` (same counters, same exit "
        "codes), read-only, plus every finding located: the table, its offset, the entry and "
        "the guest offset or snapshot it affects.",
        epilog=epilog("check vm.qcow2", "check --chain --output json --max-findings 20 vm.qcow2",
                      exit_codes="exit codes: as qemu-img check: 0 no errors; 1 the image (or, "
                      "with --chain, a layer) could not be checked, e.g. a missing backing "
                      "file; 2 corruptions; 3 leaked clusters only; 64 bad command line."))
    check.add_argument("--output", choices=["human", "json"], default="human", help=OUTPUT_HELP)
    check.add_argument("--chain", action="store_true",
                       help="also check every layer of the backing chain")
    check.add_argument("--max-findings", type=count_option, default=DEFAULT_MAX_FINDINGS,
                       metavar="N", help="keep at most N located findings, N >= 0 (counters "
                       f"stay complete; default {DEFAULT_MAX_FINDINGS})")
    check.add_argument("file", metavar="FILE", help="qcow2 image file or block device")
    check.set_defaults(handler=run_check)


def exit_code(result: CheckResult) -> int:
    """qemu-img check's exit code: 1 check errors, 2 corruptions, 3 leaks only, 0 clean."""
    if result.check_errors:
        return EXIT_FAILED
    if result.corruptions:
        return EXIT_CORRUPTIONS
    if result.leaks:
        return EXIT_LEAKS
    return EXIT_OK


# -- check -----------------------------------------------------------------------------------
def finding_dict(finding: Finding) -> dict[str, Any]:
    """A finding in JSON: `location` for people, `places` the same entries structured (one
    per referencing entry when several reference a cluster)."""
    data: dict[str, Any] = {key: value for key, value in (
        ("kind", finding.kind), ("severity", finding.severity),
        ("message", finding.message), ("location", finding.location),
        ("host-offset", finding.host_offset), ("cluster-index", finding.cluster_index),
        ("expected", finding.expected), ("found", finding.found),
        ("advice", finding.advice)) if value is not None and value != ""}
    if finding.places:
        data["places"] = [place_dict(place) for place in finding.places]
    return data


def place_dict(place: Place) -> dict[str, Any]:
    """table, table-offset, entry, l1-index, guest-offset, snapshot, refcount-table-offset:
    those that apply."""
    return {name.replace("_", "-"): value for name, value in vars(place).items()
            if value is not None}


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
        out.append(f"Note: {printable(note)}\n")
    if result.findings_total:
        out.append(f"\nFindings ({result.findings_total}"
                   + (f", first {len(result.findings)} shown" if len(result.findings)
                      < result.findings_total else "") + "):\n")
        advice_seen: list[str] = []
        for f in result.findings:
            out.append(f"  {finding_text(f)}\n")
            if f.advice and f.advice not in advice_seen:
                advice_seen.append(f.advice)
        if advice_seen:
            out.append("\nAdvice:\n" + "".join(f"  - {a}\n" for a in advice_seen))
    return "".join(out)


def _worst(codes: list[int]) -> int:
    for code in (EXIT_FAILED, EXIT_CORRUPTIONS, EXIT_LEAKS):
        if code in codes:
            return code
    return EXIT_OK


def _layer_report(layer: ChainLayer, image: Optional[Qcow2Image], max_findings: int,
                  ) -> tuple[dict[str, Any], Optional[CheckResult], Optional[Qcow2Error]]:
    """(JSON report, check result, error) of one layer of the walk."""
    from qcow2_monitor.collectors.check.checker import check_opened  # numpy only for this command

    path = layer.path or layer.name
    error = layer.error
    if layer.status == LAYER_PROTOCOL:
        error = Qcow2Error("backing file name uses a protocol; not opened",
                           structure="backing file", value=layer.name, filename=path)
    if image is not None:
        try:
            result = check_opened(image, max_findings=max_findings)
        except Qcow2Error as exc:
            error = exc.with_filename(path)
        else:
            return check_json(result, path), result, None
    if error is not None:
        status = layer.status if layer.error is not None else LAYER_ERROR
        return error_document(error, path, status, depth=layer.depth), None, error
    return {"filename": path, "depth": layer.depth, "status": layer.status,
            "format": layer.format, "skipped": "not a qcow2 image: nothing to check"}, None, None


def _human(layer: ChainLayer, result: Optional[CheckResult], error: Optional[Qcow2Error],
           chain: bool) -> str:
    """The human text of one layer: its heading (with --chain) and qemu-img check's text."""
    path = printable(layer.path or layer.name)
    gap = "" if layer.depth == 0 else "\n"
    if error is not None:
        return f"{gap}== {path}: could not check\n" if chain else ""
    if result is None:
        return f"\n== {path} ({layer.format}): not qcow2, nothing to check\n"
    return (f"{gap}== {path}\n" if chain else "") + check_human(result)


def run_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    reports: list[dict[str, Any]] = []
    codes = []
    with closing(walk(args.file)) as steps:
        for layer, image in steps:
            data, result, error = _layer_report(layer, image, args.max_findings)
            if error is not None and not args.chain:
                raise error  # the one error document and line (analyze/main.py)
            reports.append(data)
            if error is not None:
                report_error(error, err)
            codes.append(EXIT_FAILED if error is not None
                         else EXIT_OK if result is None else exit_code(result))
            if result is not None and args.chain:
                data["depth"] = layer.depth
                data["status"] = LAYER_OK
            if args.output == "human":
                out.write(_human(layer, result, error, args.chain))
            if not args.chain:
                break
    if args.output == "json":
        out.write(json_text(reports if args.chain else reports[0], indent=4))
    return _worst(codes)
