"""`qcow2-analyze dump` (the metadata tables) and `qcow2-analyze measure` (= qemu-img measure)."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from collectors.errors import EXIT_FAILED, EXIT_OK, Qcow2Error
from collectors.image import Qcow2Image

from .common import report_error


def register(subparsers: Any) -> None:
    """Add dump and measure to the lead parser's subparsers."""
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


def run_dump(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from collectors.dump import dump, render_human

    try:
        with Qcow2Image.open(args.file) as image:
            data = dump(image, args.what, limit=max(0, args.limit))
    except Qcow2Error as exc:
        report_error(exc.with_filename(args.file), err)
        return EXIT_FAILED
    if args.output == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(render_human(data))
    return EXIT_OK


def run_measure(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from collectors.measure import measure_image

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
