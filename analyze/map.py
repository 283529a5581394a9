"""`qcow2-analyze map`: where an image's clusters lie in its file or device, drawn one
character per range, so that "why is the end offset so far from what the guest uses?" is
answered at a glance (free clusters below the end: discards, deleted snapshots)."""

from __future__ import annotations

import json

from qcow2_monitor.cli.argparse_replay import terminal_columns
from qcow2_monitor.cli.exits import EXIT_OK
from qcow2_monitor.cli.outcome import Namespace, UsageError
from qcow2_monitor.collectors.common.units import human_size

from .common import PROG, add_file_argument, add_output_argument, count_option, epilog

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

# One character per kind, in collectors.check.clustermap's order of kinds.
SYMBOLS = (" ", ".", "#", "c", "M", "L")
LEGEND = (
    ("#", "data", "guest data"),
    ("c", "compressed", "compressed guest data"),
    ("M", "metadata", "header, L1/L2 tables, refcount table and blocks, snapshots, bitmaps"),
    (".", "free", "free below the end offset (qemu fills it before the image grows; "
     "compaction gives it back)"),
    ("L", "leaked", "leaked: a refcount but no reference (qemu-img check -r leaks)"),
    (" ", "beyond-end", "past the end offset, up to the container's end"),
)
DEFAULT_ROWS = 8
MIN_WIDTH = 16
# The most characters a picture has: each is a few integers while it is drawn, so an unchecked
# --width 100000000 took the memory of the host (a million is more than any screen shows).
MAX_CELLS = 1 << 20


def register(subparsers: Any) -> None:
    command = subparsers.add_parser(
        "map", help="draw where the image's clusters lie in its file or device",
        description="Draw where the image's clusters lie in its file or device, one "
        "character per range (the kind most of it holds): data, compressed data, metadata, "
        "free below the end offset, leaked, and past the end offset; the end offset and the "
        "container's end are marked. Reads all metadata, like check.",
        epilog=epilog("map vm.qcow2", "map --width 64 --rows 4 /dev/vg0/vm1",
                      "map --output json vm.qcow2"))
    add_output_argument(command, " (json: the runs of clusters of one kind)")
    command.add_argument("--width", type=count_option, metavar="N",
                         help="characters per row (default: the terminal's width)")
    command.add_argument("--rows", type=count_option, default=DEFAULT_ROWS, metavar="N",
                         help=f"rows of the picture (default {DEFAULT_ROWS})")
    add_file_argument(command)
    command.set_defaults(handler=run_map)


def run_map(args: Namespace, out: TextIO, err: TextIO) -> int:
    from qcow2_monitor.collectors.check.clustermap import KIND_NAMES, cluster_map
    from qcow2_monitor.collectors.qcow2.image import Qcow2Image

    with Qcow2Image.open(args.file) as image:
        mapped = cluster_map(image, image.file.length)
    if args.output == "json":
        document = {
            "filename": args.file, "cluster_size": mapped.cluster_size,
            "end_offset": mapped.end_offset, "container_end": mapped.length,
            "totals": mapped.totals(),
            "runs": [{"kind": KIND_NAMES[kind], "offset": offset, "length": length}
                     for kind, offset, length in mapped.runs()],
        }
        out.write(json.dumps(document, indent=2) + "\n")
        return EXIT_OK
    label = len(f"{mapped.length:x}") + 3  # "0x" + digits + a space
    width = args.width or max(terminal_columns() - label, MIN_WIDTH)
    rows = max(args.rows, 1)
    if width * rows > MAX_CELLS:
        raise UsageError(f"argument --width/--rows: {width} x {rows} characters is more than "
                         f"the {MAX_CELLS} a picture may have", f"{PROG} map")
    cells = mapped.cells(width * rows)
    out.write(render(cells, width, mapped.length, mapped.end_offset, mapped.totals()))
    return EXIT_OK


def _marker_line(row_start: int, width: int, per_cell: float, offset: int, text: str,
                 label: int) -> str:
    column = min(int((offset - 1) // per_cell) - row_start, width - 1) if offset else 0
    return " " * (label + column) + "^ " + text + "\n"


def render(cells: list[int], width: int, length: int, end: int, totals: dict[str, int]) -> str:
    """The rows with their start offsets, the end offset and the container's end marked under
    the cells that hold them, and the legend with each kind's total."""
    digits = len(f"{length:x}")
    label = digits + 3
    per_cell = length / max(len(cells), 1)
    lines: list[str] = []
    for row_start in range(0, len(cells), width):
        row = cells[row_start:row_start + width]
        lines.append(f"0x{int(row_start * per_cell):0{digits}x} "
                     + "".join(SYMBOLS[kind] for kind in row) + "\n")
        covers = (row_start * per_cell, (row_start + len(row)) * per_cell)
        for offset, text in ((end, f"end offset {human_size(end)}"),
                             (length, f"container end {human_size(length)}")):
            if covers[0] < offset <= covers[1] or (offset == 0 and row_start == 0):
                lines.append(_marker_line(row_start, width, per_cell, offset, text, label))
    lines.append(f"one character = {human_size(int(per_cell))} (the kind most of it holds)\n")
    lines += [f"  {symbol!r:5} {human_size(totals[name]):>10}  {text}\n"
              for symbol, name, text in LEGEND]
    return "".join(lines)
