"""qcow2-analyze: the core's own command line (JSON and human output).

    qcow2-analyze -f FILE [-o json|raw] [-v] [-H]        drop-in for the older Go tool
    qcow2-analyze info [--output human|json] [--backing-chain] FILE
    qcow2-analyze usage [--output human|json] [--no-chain] [--no-live] [--libvirt-uri URI]
                        [--qmp SOCKET]... TARGET...
    qcow2-analyze check | dump | measure ...            (see collectors/cli_check.py)

Exit codes: 0 success; 1 a target could not be analysed; for `check` also 2 corruptions and
3 leaks (as qemu-img check); 64 bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Optional, TextIO

from . import layout as L
from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Qcow2Error, internal_error
from .image import Qcow2Image
from .info import chain_paths, image_info
from .model import DEFAULT_MAX_DEPTH, ChainLayer, ImageUsage, UsageResult
from .usage import analyze_usage, end_offset

PROG = "qcow2-analyze"


class UsageError(Exception):
    """A bad command line: exit 64, not argparse's 2 (2 means corruptions for `check`)."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def report_error(err: Qcow2Error, stream: TextIO) -> None:
    print(f"{PROG}: {err}", file=stream)


# -- the Go tool's key set (-f FILE) ---------------------------------------------------------
HEX_KEYS = {"cluster_size", "virtual_size", "image_end_offset", "l1_table_offset",
            "refcount_table_offset", "header_length"}


def legacy_report(image: Qcow2Image, verbose: bool) -> dict[str, Any]:
    """The keys the Go qcow2-analyze printed, with correct values (its feature flags were
    always 0, v2 headers garbage, refcount_order < 3 a division by zero, and its end offset
    stopped at the first free cluster)."""
    h = image.header
    end, _source, _notes = end_offset(image)
    report: dict[str, Any] = {
        "qcow_version": h.version,
        "backing_file": image.backing_filename or "",
        "cluster_size": h.cluster_size,
        "virtual_size": h.size,
        "crypt_method": h.crypt_method,
        "snapshots": [
            {"id": sn.id_str, "name": sn.name, "l1_table_offset": sn.l1_table_offset,
             "l1_size": sn.l1_size, "vm_state_size": sn.vm_state_size,
             "date_sec": sn.date_sec, "date_nsec": sn.date_nsec,
             "vm_clock_nsec": sn.vm_clock_nsec, "extra_data_size": sn.extra_data_size}
            for sn in image.snapshots()
        ],
        "image_end_offset": end,
    }
    if verbose:
        report.update({
            "l1_size": h.l1_size,
            "l1_table_offset": h.l1_table_offset,
            "refcount_table_offset": h.refcount_table_offset,
            "refcount_table_clusters": h.refcount_table_clusters,
            "dirty_bit": int(h.dirty),
            "corrupt_bit": int(h.corrupt),
            "external_data_file": int(h.has_data_file),
            "compression_type": h.compression_type,
            "extended_l2": int(h.extended_l2),
            "lazy_refcount": int(h.lazy_refcounts),
            "bitmaps_extension": int(h.bitmaps_autoclear),
            "raw_external_data": int(h.data_file_raw),
            "refcount_order": h.refcount_order,
            "header_length": h.header_length,
            "compression_method": L.COMPRESSION_TYPE_NAMES[h.compression_type],
        })
    return report


def _hexify(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in report.items():
        if key in HEX_KEYS and isinstance(value, int):
            out[key] = f"0x{value:x}"
        elif key == "snapshots":
            out[key] = [{k: (f"0x{v:x}" if k in ("l1_table_offset", "vm_state_size")
                             and isinstance(v, int) else v) for k, v in sn.items()}
                        for sn in value]
        else:
            out[key] = value
    return out


def render_raw(report: dict[str, Any]) -> str:
    lines = []
    width = max(len(k) for k in report)
    for key, value in report.items():
        if key == "snapshots":
            lines.append(f"{key:<{width}}  {len(value)}")
            for sn in value:
                lines.append("  " + "  ".join(f"{k}={v}" for k, v in sn.items()))
        else:
            lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines) + "\n"


def run_legacy(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    try:
        with Qcow2Image.open(args.file) as image:
            report = legacy_report(image, args.verbose)
    except Qcow2Error as exc:
        report_error(exc.with_filename(args.file), err)
        return EXIT_FAILED
    if args.hex:
        report = _hexify(report)
    if args.output == "raw":
        out.write(render_raw(report))
    else:
        out.write(json.dumps(report, indent=2) + "\n")
    return EXIT_OK


# -- info ------------------------------------------------------------------------------------
def human_size(value: int) -> str:
    """qemu's size_to_str(): 1024-based with three significant digits."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    size = float(value)
    unit = 0
    while size >= 1024 and unit < len(units) - 1:
        size /= 1024
        unit += 1
    if unit == 0:
        return f"{value} B"
    return f"{size:.3g} {units[unit]}"


def render_info_human(info: dict[str, Any]) -> str:
    lines = [
        f"image: {info['filename']}",
        f"file format: {info['format']}",
        f"virtual size: {human_size(info['virtual-size'])} ({info['virtual-size']} bytes)",
        f"disk size: {human_size(info['actual-size'])}",
        f"cluster_size: {info['cluster-size']}",
    ]
    if "backing-filename" in info:
        line = f"backing file: {info['backing-filename']}"
        if info.get("full-backing-filename") not in (None, info["backing-filename"]):
            line += f" (actual path: {info['full-backing-filename']})"
        lines.append(line)
        if "backing-filename-format" in info:
            lines.append(f"backing file format: {info['backing-filename-format']}")
    if info.get("encrypted"):
        lines.append("encrypted: yes")
    snapshots = info.get("snapshots", [])
    if snapshots:
        lines.append("Snapshot list:")
        lines.append(f"{'ID':<8}{'TAG':<24}{'VM SIZE':>10}  {'DATE':<20}{'VM CLOCK':>16}")
        for sn in snapshots:
            lines.append(f"{sn['id']:<8}{sn['name']:<24}{human_size(sn['vm-state-size']):>10}"
                         f"  {sn['date-sec']:<20}{sn['vm-clock-sec']:>16}")
    lines.append("Format specific information:")
    lines.extend(_render_nested(info["format-specific"]["data"], "    "))
    lines.append(f"dirty flag: {'yes' if info['dirty-flag'] else 'no'}")
    return "\n".join(lines) + "\n"


def _render_nested(data: Any, indent: str) -> list[str]:
    lines: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, (dict, list)):
                lines.append(f"{indent}{key}:")
                lines.extend(_render_nested(value, indent + "    "))
            else:
                shown = str(value).lower() if isinstance(value, bool) else value
                lines.append(f"{indent}{key}: {shown}")
    elif isinstance(data, list):
        for i, item in enumerate(data):
            lines.append(f"{indent}[{i}]:")
            lines.extend(_render_nested(item, indent + "    "))
    return lines


def run_info(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    infos: list[dict[str, Any]] = []
    path: Optional[str] = args.file
    seen: set[str] = set()
    status = EXIT_OK
    while path is not None and len(infos) <= DEFAULT_MAX_DEPTH:
        try:
            with Qcow2Image.open(path) as image:
                infos.append(image_info(image))
                nxt = chain_paths(path, image) if args.backing_chain else None
        except Qcow2Error as exc:
            report_error(exc.with_filename(path), err)
            status = EXIT_FAILED
            break
        seen.add(path)
        if nxt is not None and nxt in seen:
            print(f"{PROG}: {nxt}: backing chain loops", file=err)
            status = EXIT_FAILED
            break
        path = nxt
    if args.output == "json":
        if args.backing_chain:
            out.write(json.dumps(infos, indent=4) + "\n")
        elif infos:
            out.write(json.dumps(infos[0], indent=4) + "\n")
    else:
        out.write("\n".join(render_info_human(info) for info in infos))
    return status


# -- header ---------------------------------------------------------------------------------
def run_header(args: argparse.Namespace) -> int:
    from .describe import describe, render_human

    with Qcow2Image.open(args.file) as image:
        data = describe(image)
    if args.output == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(render_human(data))
    return EXIT_OK


# -- usage -----------------------------------------------------------------------------------
def usage_json(usage: ImageUsage) -> dict[str, Any]:
    c = usage.container
    data: dict[str, Any] = {
        "filename": usage.filename,
        "image_end_offset": usage.image_end_offset,
        "image_end_offset_source": usage.image_end_offset_source,
        "live_end_offset": usage.live_end_offset,
        "end_offset": usage.end_offset,
        "end_offset_source": usage.end_offset_source,
        "domain": usage.domain,
        "disk": usage.disk,
        "container_type": c.kind,
        "container_size": c.size,
        "container_length": c.length,
        "headroom": c.headroom,
        "usage_ratio": usage.usage_ratio,
        "fully_allocated_size": usage.fully_allocated_size,
        "virtual_size": usage.virtual_size,
        "cluster_size": usage.cluster_size,
        "qcow_version": usage.qcow_version,
        "in_use": usage.in_use,
        "dirty": usage.dirty,
        "corrupt": usage.corrupt,
        "lazy_refcounts": usage.lazy_refcounts,
        "refcounts_trusted": usage.refcounts_trusted,
        "encrypted": usage.encrypted,
        "backing_filename": usage.backing_filename,
        "backing_format": usage.backing_format,
        "external_data_file": usage.external_data_file,
        "snapshots": usage.snapshots,
        "bitmaps": usage.bitmaps,
        "notes": list(usage.notes),
    }
    if c.allocated_bytes is not None:
        data["allocated_bytes"] = c.allocated_bytes
    return data


def layer_json(layer: ChainLayer) -> dict[str, Any]:
    data: dict[str, Any] = {"depth": layer.depth, "name": layer.name, "path": layer.path,
                            "status": layer.status, "format": layer.format}
    if layer.usage is not None:
        data.update(usage_json(layer.usage))
    if layer.error is not None:
        data["error"] = layer.error.as_dict()
    return data


def result_json(result: UsageResult) -> dict[str, Any]:
    if result.usage is None:
        assert result.error is not None
        return {"filename": result.target, "error": result.error.as_dict()}
    data = usage_json(result.usage)
    data["backing_chain"] = [layer_json(layer) for layer in result.chain]
    return data


def render_usage_human(result: UsageResult) -> str:
    if result.usage is None:
        return f"{result.target}: ERROR {result.error}\n"
    lines = []
    rows: list[tuple[str, Optional[ImageUsage], str]] = [("", result.usage, "")]
    rows += [("  " * layer.depth + "└ ", layer.usage,
              "" if layer.usage else f"{layer.name}: {layer.status}"
              + (f" ({layer.error})" if layer.error else ""))
             for layer in result.chain]
    for prefix, usage, status in rows:
        if usage is None:
            lines.append(f"{prefix}{status}")
            continue
        c = usage.container
        flags = [name for name, on in (("dirty", usage.dirty), ("CORRUPT", usage.corrupt),
                                       ("in-use", usage.in_use)) if on]
        live = (f" [live: {usage.domain} {usage.disk}, on disk {usage.image_end_offset}]"
                if usage.live_end_offset is not None else "")
        lines.append(
            f"{prefix}{usage.filename}: end {usage.end_offset} "
            f"({human_size(usage.end_offset)}){live} of {c.kind} {human_size(c.size)}, "
            f"{usage.usage_ratio * 100:.1f}% used, headroom {human_size(c.headroom)}, "
            f"fully allocated {human_size(usage.fully_allocated_size)}"
            + (f" [{', '.join(flags)}]" if flags else ""))
        lines.extend(f"{' ' * len(prefix)}  note: {note}" for note in usage.notes)
    return "\n".join(lines) + "\n"


def run_usage(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    from .discovery import expand_targets
    from .live import gather_live
    from .selection import live_uri

    status = EXIT_OK
    uri = live_uri(args)
    live = gather_live(uri, args.qmp) if uri is not None or args.qmp else None
    if live is not None and live.libvirt_note and args.libvirt_uri is not None:
        print(f"{PROG}: note: {live.libvirt_note}", file=err)  # asked for by name: say why not
    results: list[UsageResult] = []
    for target in expand_targets(args.targets):
        if target.error is not None or target.path is None:
            error = target.error or Qcow2Error("no such target", structure="target")
            results.append(UsageResult(target.spec, None, (), error.with_filename(target.spec)))
        else:
            results.append(analyze_usage(target.path, chain=not args.no_chain, live=live))
    if live is not None:
        results += [UsageResult(e.filename or "--qmp", None, (), e) for e in live.errors]
    for result in results:
        if result.error is not None:
            report_error(result.error, err)
            status = EXIT_FAILED
        for layer in result.chain:
            if layer.error is not None:
                report_error(layer.error, err)
    if args.output == "json":
        out.write(json.dumps([result_json(r) for r in results], indent=2) + "\n")
    else:
        out.write("".join(render_usage_human(r) for r in results))
    return status


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Read-only qcow2 analyzer.")
    parser.add_argument("-f", "--file", help="analyse FILE (drop-in for the Go tool)")
    parser.add_argument("-o", dest="legacy_output", choices=["json", "raw"], default="json",
                        help="output of -f: json (default) or raw text")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="with -f: also every header field and feature flag")
    parser.add_argument("-H", "--hex", action="store_true",
                        help="with -f: offsets and sizes in hex")
    sub = parser.add_subparsers(dest="command", parser_class=ArgumentParser)

    info = sub.add_parser("info", help="what `qemu-img info` reports, without key")
    info.add_argument("--output", choices=["human", "json"], default="human")
    info.add_argument("--backing-chain", action="store_true")
    info.add_argument("file")
    info.set_defaults(handler=run_info)

    header = sub.add_parser("header", help="every header field, feature, extension, the "
                            "LUKS header, snapshot table and bitmap directory")
    header.add_argument("--output", choices=["human", "json"], default="human")
    header.add_argument("file")
    header.set_defaults(handler=run_header)

    usage = sub.add_parser("usage", help="image end offset, container and headroom (fast)")
    usage.add_argument("--output", choices=["human", "json"], default="human")
    usage.add_argument("--no-chain", action="store_true",
                       help="do not analyse backing layers")
    usage.add_argument("targets", nargs="+", metavar="TARGET",
                       help="image file, block device, glob or directory")
    from .selection import add_live_arguments

    add_live_arguments(usage)
    usage.set_defaults(handler=run_usage)

    from .cli_check import register

    register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    err = sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None and args.file is None:
            raise UsageError(f"{PROG}: give -f FILE or a command (info, usage, check, dump, "
                             "measure); see --help")
    except UsageError as exc:
        print(exc, file=err)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        if args.command is None:
            args.output = args.legacy_output
            return run_legacy(args)
        handler = args.handler
        return int(handler(args))
    except Qcow2Error as exc:
        file = getattr(args, "file", None)
        report_error(exc.with_filename(file) if file else exc, err)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # last resort: one line, never a traceback
        report_error(internal_error(exc, getattr(args, "file", None)), err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
