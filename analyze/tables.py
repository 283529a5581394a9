"""`qcow2-analyze dump` (the metadata tables) and `qcow2-analyze measure` (= qemu-img measure)."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from qcow2_monitor.collectors.errors import EXIT_FAILED, EXIT_OK, Qcow2Error
from qcow2_monitor.collectors.image import Qcow2Image

from .common import OUTPUT_HELP, count_option, epilog, report_error


def register(subparsers: Any) -> None:
    """Add dump and measure to the lead parser's subparsers."""
    dump = subparsers.add_parser(
        "dump", help="dump L1/L2/refcount/snapshot/bitmap tables",
        description="One metadata table of the image, entry by entry.",
        epilog=epilog("dump --what l1 vm.qcow2", "dump --what refcount --limit 50 vm.qcow2",
                      "dump --what snapshots --output json vm.qcow2"))
    dump.add_argument("--what", choices=["l1", "l2", "refcount", "snapshots", "bitmaps"],
                      required=True, help="the table: active L1, L2 tables, refcount table "
                      "and blocks, snapshot table, bitmap directory")
    dump.add_argument("--output", choices=["human", "json"], default="human", help=OUTPUT_HELP)
    dump.add_argument("--limit", type=count_option, default=1000, metavar="N",
                      help="at most N entries per list, N >= 0 (default 1000)")
    dump.add_argument("file", metavar="FILE", help="qcow2 image file or block device")
    dump.set_defaults(handler=run_dump)

    measure = subparsers.add_parser(
        "measure", help="what `qemu-img measure -O qcow2` reports (required, fully allocated)",
        description="What `qemu-img measure -O qcow2 FILE` reports: the size a qcow2 copy "
        "needs, and fully allocated.",
        epilog=epilog("measure vm.qcow2", "measure --output json vm.qcow2"))
    measure.add_argument("--output", choices=["human", "json"], default="human",
                         help=OUTPUT_HELP)
    measure.add_argument("file", metavar="FILE", help="qcow2 image file or block device")
    measure.set_defaults(handler=run_measure)


def run_dump(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from qcow2_monitor.collectors.dump import dump, render_human

    try:
        with Qcow2Image.open(args.file) as image:
            data = dump(image, args.what, limit=args.limit)
    except Qcow2Error as exc:
        report_error(exc.with_filename(args.file), err)
        return EXIT_FAILED
    if args.output == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(render_human(data))
    return EXIT_OK


def run_measure(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from qcow2_monitor.collectors.measure import measure_image

    try:
        with Qcow2Image.open(args.file) as image:
            data = measure_image(image, path=args.file)
    except Qcow2Error as exc:
        report_error(exc.with_filename(args.file), err)
        return EXIT_FAILED
    except OSError as exc:
        report_error(Qcow2Error(exc.strerror or str(exc), structure="backing file",
                                filename=args.file), err)
        return EXIT_FAILED
    if args.output == "json":
        out.write(json.dumps(data, indent=4) + "\n")
    else:
        out.write(f"required size: {data['required']}\n"
                  f"fully allocated size: {data['fully-allocated']}\n")
        if "bitmaps" in data:
            out.write(f"bitmaps size: {data['bitmaps']}\n")
    return EXIT_OK
