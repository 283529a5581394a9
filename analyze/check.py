"""`qcow2-analyze check`.

`check` prints what `qemu-img check` prints (human summary, or its JSON keys with qemu's
presence rules) plus located findings, and exits like it: 0 clean, 1 could not check,
2 corruptions, 3 leaks only. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_OK
from qcow2_monitor.cli.outcome import Namespace, UsageError
from qcow2_monitor.cli.text import finding_text, json_text
from qcow2_monitor.collectors.common.errors import IO_ERROR, Qcow2Error
from qcow2_monitor.collectors.common.jsonform import to_json_object
from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.qcow2.chain import Visited, not_read_error, visit
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.report.health import broken_layer
from qcow2_monitor.collectors.report.model import ChainLayer, CheckResult, LayerStatus

from .common import (
    PROG,
    SnapshotSelection,
    add_file_argument,
    add_output_argument,
    add_snapshot_argument,
    count_option,
    epilog,
    error_document,
    report_error,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional, TextIO

    from qcow2_monitor.collectors.check.snapview import FindingsView

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
                      "check --snapshot 1 vm.qcow2",
                      exit_codes="exit codes: as qemu-img check: 0 no errors; 1 the image (or, "
                      "with --chain, a layer) could not be checked, or qemu cannot open it: "
                      "a backing layer is missing, loops, is unreadable or is not qcow2; 2 "
                      "corruptions; 3 leaked clusters only; 64 bad command line."))
    add_output_argument(check)
    check.add_argument("--chain", action="store_true",
                       help="also check every layer of the backing chain")
    check.add_argument("--max-findings", type=count_option, default=DEFAULT_MAX_FINDINGS,
                       metavar="N", help="keep at most N located findings, N >= 0 (counters "
                       f"stay complete; default {DEFAULT_MAX_FINDINGS})")
    add_snapshot_argument(check, "list only the findings located in the tables of SEL (its L1 "
                          "and L2 tables, its snapshot table entry) and count the others; the "
                          "figures stay the whole image's")
    add_file_argument(check)
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
def check_json(result: CheckResult, filename: str) -> dict[str, Any]:
    """qemu-img check --output=json: filename, format, check-errors always; the other figures
    only when nonzero (qemu's has_* rules); then our findings (the model's JSON)."""
    return {"filename": filename, "format": "qcow2", **to_json_object(result)}


def check_human(result: CheckResult, view: Optional[FindingsView] = None) -> str:
    """dump_human_image_check() in qemu-img.c, then the findings with advice (`view`: of
    check --snapshot)."""
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
    out.append(_findings_human(result, view))
    return "".join(out)


def _findings_human(result: CheckResult, view: Optional[FindingsView]) -> str:
    """The findings with their advice (with --snapshot, limited to its tables)."""
    out = []
    if view is not None:
        out.append(f"\nFindings limited to --snapshot {printable(view.snapshot)}: "
                   f"{result.findings_total} in its tables, "
                   f"{view.findings_elsewhere} elsewhere in the image"
                   + (f", {view.findings_unexamined} not examined (past --max-findings)"
                      if view.findings_unexamined else "") + "\n")
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


def _layer_report(visited: Visited[CheckResult]
                  ) -> tuple[dict[str, Any], Optional[Qcow2Error]]:
    """(JSON report, error) of one layer of the walk."""
    layer, result = visited.layer, visited.value
    if result is not None:
        return check_json(result, layer.filename), None
    if layer.status == LayerStatus.OTHER_FORMAT:
        return {"filename": layer.filename, "depth": layer.depth, "status": layer.status.value,
                "format": layer.format, "skipped": "not a qcow2 image: nothing to check"}, None
    error = layer.error or not_read_error(layer)
    status = layer.status if layer.error is not None else LayerStatus.ERROR
    return error_document(error, layer.filename, status, depth=layer.depth), error


def _human(visited: Visited[CheckResult], error: Optional[Qcow2Error], chain: bool) -> str:
    """The human text of one layer: its heading (with --chain) and qemu-img check's text."""
    layer, result = visited.layer, visited.value
    path = printable(layer.filename)
    gap = "" if layer.depth == 0 else "\n"
    if error is not None:
        return f"{gap}== {path}: could not check\n" if chain else ""
    if result is None:
        return f"\n== {path} ({layer.format}): not qcow2, nothing to check\n"
    return (f"{gap}== {path}\n" if chain else "") + check_human(result)


def run_check(args: Namespace, out: TextIO, err: TextIO) -> int:
    if args.snapshot is None:
        return _check_layers(args, out, err)
    if args.chain:
        raise UsageError("argument --snapshot: selects tables of one image, not with --chain",
                         f"{PROG} check")
    with SnapshotSelection("check"):
        return _check_view(args, out)


def _check_view(args: Namespace, out: TextIO) -> int:
    """check --snapshot SEL: the image's figures, its findings limited to SEL's tables; the
    view's keys go before findings-total in JSON."""
    from qcow2_monitor.collectors.check.checker import check_view  # numpy only for this command

    with Qcow2Image.open(args.file) as image:
        result, view = check_view(image, snapshot=args.snapshot, max_findings=args.max_findings)
    if args.output == "human":
        out.write(check_human(result, view))
        return exit_code(result)
    items = list(check_json(result, args.file).items())
    at = [key for key, _ in items].index("findings-total")
    out.write(json_text(dict(items[:at] + list(to_json_object(view).items()) + items[at:]),
                        indent=4))
    return exit_code(result)


def _check_layers(args: Namespace, out: TextIO, err: TextIO) -> int:
    from qcow2_monitor.collectors.check.checker import check_opened  # numpy only for this command

    reports: list[dict[str, Any]] = []
    codes = []
    broken: Optional[ChainLayer] = None
    # Without --chain the layers below are opened (headers only), as qemu-img check opens
    # them: a broken one fails qemu's check of the top image (exit 1).
    for visited in visit(args.file, lambda image, layer: check_opened(
            image, max_findings=args.max_findings) if args.chain or layer.depth == 0
            else None):
        layer, result = visited.layer, visited.value
        if layer.depth > 0 and not args.chain:
            broken = broken_layer([layer])
            if broken is not None or layer.status != LayerStatus.OK:
                break
            continue
        data, error = _layer_report(visited)
        if error is not None and not args.chain:
            raise error  # the one error document and line (analyze/main.py)
        reports.append(data)
        if error is not None:
            report_error(error, err)
        codes.append(EXIT_FAILED if error is not None
                     else EXIT_OK if result is None else exit_code(result))
        if result is not None and args.chain:
            data["depth"] = layer.depth
            data["status"] = LayerStatus.OK.value
        if args.output == "human":
            out.write(_human(visited, error, args.chain))
    if broken is not None:
        error = backing_error(broken, args.file)
        report_error(error, err)
        reports[0]["backing-chain-error"] = error_document(
            broken.error or error, broken.filename, broken.status, depth=broken.depth)
        codes.append(EXIT_FAILED)
    if args.output == "json":
        out.write(json_text(reports if args.chain else reports[0], indent=4))
    return _worst(codes)


def backing_error(broken: ChainLayer, top: str) -> Qcow2Error:
    """Why qemu-img check of `top` fails (exit 1, "Could not open backing file"): the one line
    on stderr. The top image's own metadata is checked all the same."""
    reason = broken.error.message if broken.error is not None \
        else f"backing file '{printable(broken.name)}' {broken.status}"
    return Qcow2Error(
        f"{reason} (depth {broken.depth}): qemu cannot open the image, so qemu-img check "
        "exits 1 (\"Could not open backing file\"); the image's own metadata was checked",
        structure="backing chain",
        kind=broken.error.kind if broken.error is not None else IO_ERROR, filename=top)
