"""`qcow2-analyze dump` (the metadata tables) and `qcow2-analyze measure` (= qemu-img measure)."""

from __future__ import annotations

from qcow2_monitor.cli.exits import EXIT_OK
from qcow2_monitor.cli.outcome import Namespace, UsageError
from qcow2_monitor.cli.text import (
    indent_block,
    json_text,
    render_fields,
    render_table,
)
from qcow2_monitor.collectors.common.errors import Qcow2Error
from qcow2_monitor.collectors.common.jsonform import to_json, to_json_object
from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.common.units import counted
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.snapshots import ACTIVE

from .common import (
    PROG,
    SnapshotSelection,
    add_file_argument,
    add_output_argument,
    add_snapshot_argument,
    count_option,
    epilog,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO


def register(subparsers: Any) -> None:
    """Add dump and measure to the lead parser's subparsers."""
    dump = subparsers.add_parser(
        "dump", help="dump L1/L2/refcount/snapshot/bitmap tables",
        description="One metadata table of the image, entry by entry.",
        epilog=epilog("dump --what l1 vm.qcow2", "dump --what refcount --limit 50 vm.qcow2",
                      "dump --what l2 --snapshot 1 vm.qcow2",
                      "dump --what snapshots --output json vm.qcow2"))
    dump.add_argument("--what", choices=["l1", "l2", "refcount", "snapshots", "bitmaps"],
                      required=True, help="the table: active L1, L2 tables, refcount table "
                      "and blocks, snapshot table, bitmap directory")
    add_output_argument(dump)
    dump.add_argument("--limit", type=count_option, default=1000, metavar="N",
                      help="at most N entries per list, N >= 0 (default 1000)")
    add_snapshot_argument(dump, "with --what l1|l2: the L1 tables of SEL and the L2 tables "
                          "they name; each table says which snapshots name it", ACTIVE)
    add_file_argument(dump)
    dump.set_defaults(handler=run_dump)

    measure = subparsers.add_parser(
        "measure", help="what `qemu-img measure -O qcow2` reports (required, fully allocated)",
        description="What `qemu-img measure -O qcow2 FILE` reports: the size a qcow2 copy "
        "needs, and fully allocated.",
        epilog=epilog("measure vm.qcow2", "measure --output json vm.qcow2"))
    add_output_argument(measure)
    add_file_argument(measure)
    measure.set_defaults(handler=run_measure)


def run_dump(args: Namespace, out: TextIO, err: TextIO) -> int:
    from qcow2_monitor.collectors.check.dump import dump

    if args.snapshot is not None and args.what not in ("l1", "l2"):
        raise UsageError("argument --snapshot: only with --what l1 or l2", f"{PROG} dump")
    with Qcow2Image.open(args.file) as image:
        with SnapshotSelection("dump"):
            view = dump(image, args.what, limit=args.limit, snapshot=args.snapshot or ACTIVE)
        data = to_json_object(view)
    if args.output == "json":
        out.write(json_text(data, indent=2))
    else:
        out.write(render_dump_human(data))
    return EXIT_OK


def run_measure(args: Namespace, out: TextIO, err: TextIO) -> int:
    from qcow2_monitor.collectors.check.measure import measure_image

    try:
        with Qcow2Image.open(args.file) as image:
            result = measure_image(image, path=args.file)
    except OSError as exc:
        raise Qcow2Error(exc.strerror or str(exc), structure="backing file",
                         filename=args.file) from None
    if args.output == "json":
        out.write(json_text(to_json(result), indent=4))
    else:
        out.write(f"required size: {result.required}\n"
                  f"fully allocated size: {result.fully_allocated}\n")
        if result.bitmaps is not None:
            out.write(f"bitmaps size: {result.bitmaps}\n")
    return EXIT_OK


def _shown(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and key.endswith("offset"):
        return f"0x{value:x}"
    if isinstance(value, list) and key == "covers_clusters":
        return "..".join(str(v) for v in value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


def _summary(item: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """The scalar fields of `item` as aligned `name  value` lines."""
    return render_fields([(key, _shown(key, value)) for key, value in item.items()
                          if key not in skip and not isinstance(value, dict)
                          and not (isinstance(value, list) and value
                                   and isinstance(value[0], dict))])


def _entries(items: list[dict[str, Any]], indent: str = "  ") -> str:
    """A list of entries as an aligned table, one column per field (figures right-aligned)."""
    if not items:
        return f"{indent}(none)\n"
    keys = [key for key, value in items[0].items() if not isinstance(value, dict)]
    rows = [[_shown(key, item.get(key)) for key in keys] for item in items]
    right = [i for i, key in enumerate(keys)
             if all(isinstance(item.get(key), int) and not isinstance(item.get(key), bool)
                    for item in items)]
    return indent_block(render_table([key.upper().replace("_", " ") for key in keys], rows,
                                     right=right), indent)


def _owners(table: dict[str, Any]) -> str:
    """Who names a table: `active`, `snapshot ID (NAME)`..., and how many more."""
    names = (["active"] if table["active"] else []) + [
        f"snapshot {sn['id']} ({sn['name']})" for sn in table["snapshots"]]
    more = table["snapshot_count"] - len(table["snapshots"])
    if more > 0:
        names.append(f"{counted(more, 'more snapshot')}")
    return ", ".join(names) or "no L1 table"


def render_dump_human(data: dict[str, Any]) -> str:
    """Any dump as text, from its JSON form (the keys its type declares, in order): its
    summary fields aligned, then its entries as tables."""
    what = data["what"]
    out = [f"image: {printable(data['filename'])}\n", f"dump: {what}\n",
           _summary(data, ("filename", "what"))]
    if what == "l1":
        for table in data["tables"]:
            out += [f"\nL1 table at 0x{table['l1_table_offset']:x} ({_owners(table)}), "
                    f"{counted(table['l1_size'], 'entry', 'entries')}, "
                    f"{table['nonzero_entries']} non-zero"
                    + (f"; not read: {table['skipped']}" if table.get("skipped") else "")
                    + "\n", _entries(table["entries"])]
    elif what == "l2":
        for table in data["tables"]:
            entries = counted(table["nonempty_entries"], "non-empty entry", "non-empty entries")
            out.append(f"\nL2 table at 0x{table['l2_offset']:x} (L1[{table['l1_index']}]), "
                       f"{entries}; named by {_owners(table)}\n")
            out.append(_entries(table["entries"]))
    elif what == "refcount":
        out += ["\nRefcount table\n", _entries(data["table"]),
                "\nRefcounts by cluster range\n", _entries(data["ranges"])]
    elif what == "snapshots":
        out += ["\nSnapshot table\n", _entries(data["snapshots"])]
    elif what == "bitmaps":
        for bm in data["bitmaps"]:
            out += [f"\nBitmap '{bm['name']}'\n", _summary(bm, ("name",)),
                    "\n", _entries(bm["table"])]
    if data.get("truncated"):
        out.append("\n(output truncated: raise --limit to see more)\n")
    return "".join(out)
