"""`qcow2-analyze usage`: the fast usage figures of images and their backing chains, from the
one collect() every adapter runs (same targets, de-duplication, live sources and health)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_OK
from qcow2_monitor.cli.options import judging_from_args, live_uri
from qcow2_monitor.cli.outcome import Namespace
from qcow2_monitor.cli.text import json_text, render_table
from qcow2_monitor.collectors.common.jsonform import JsonObject, to_json, to_json_object
from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.common.units import (
    human_duration,
    human_rate,
    human_size,
    ratio_percent,
)
from qcow2_monitor.collectors.host.sources import LiveSources
from qcow2_monitor.collectors.report.collect import ChainScope, collect
from qcow2_monitor.collectors.report.extend import extension_text
from qcow2_monitor.collectors.report.health import RULE_BACKING
from qcow2_monitor.collectors.report.model import (
    Collection,
    ImageRecord,
    ImageUsage,
    LayerStatus,
)

from .common import PROG, error_document, report_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

# One entry per target: its record, then the records of its backing layers.
Entry = tuple[ImageRecord, Sequence[ImageRecord]]


def entries(collection: Collection) -> Iterator[Entry]:
    """The collection as usage shows it: each target (or failed live source) with the backing
    layers reported below it. Each image is in it once (collect() de-duplicates): a layer shared
    with an earlier target, or already a target itself, is shown where it was first met."""
    records = collection.records
    index = 0
    while index < len(records):
        end = index + 1
        while end < len(records) and records[end].depth > 0:
            end += 1
        yield records[index], records[index + 1:end]
        index = end


def entry_json(record: ImageRecord, layers: Sequence[ImageRecord]) -> JsonObject:
    """A target's usage document (README, "Figures reported by usage"), or the one error
    document of a target that could not be analysed."""
    if record.usage is None:
        assert record.error is not None
        return error_document(record.error, record.filename)
    return {**to_json_object(record.usage), "status": to_json(record.status),
            "backing_chain": [to_json(layer.layer) for layer in layers]}


USAGE_COLUMNS = ("IMAGE", "END OFFSET", "FROM", "CONTAINER", "CONTAINER SIZE", "USED",
                 "HEADROOM", "FULLY ALLOCATED", "STATE")


def _usage_row(name: str, usage: ImageUsage, status: LayerStatus) -> list[str]:
    c = usage.container
    flags = [flag for flag, on in ((str(status), status != LayerStatus.OK),
                                   ("dirty", usage.dirty), ("CORRUPT", usage.corrupt),
                                   ("in-use", usage.in_use),
                                   (f"PAUSED ({usage.pause_reason})", usage.paused),
                                   ("extend", usage.extension is not None)) if on]
    return [name, human_size(usage.end_offset), str(usage.end_offset_source), str(c.kind),
            human_size(c.size), ratio_percent(usage.usage_ratio), human_size(c.headroom),
            human_size(usage.fully_allocated_size), ", ".join(flags) or "ok"]


def thin_notes(usage: ImageUsage) -> list[str]:
    """The extension advice, a paused VM and the growth, in words, for the human table."""
    notes: list[str] = []
    if usage.pause is not None:
        notes.append(f"VM {usage.pause.domain} paused ({usage.pause.reason}); resume it with "
                     f"{usage.pause.resume} once the cause is gone")
    if usage.extension is not None:
        notes.append(f"headroom below the watermark {human_size(usage.extension.watermark)}: "
                     + extension_text(usage.extension))
    growth = usage.growth
    if growth is not None and growth.bytes_per_second is not None:
        full = f", full in {human_duration(growth.time_to_full)}" \
            if growth.time_to_full is not None else ""
        notes.append(f"growing {human_rate(growth.bytes_per_second)}{full}")
    if growth is not None and growth.note:
        notes.append(growth.note)
    return notes


def render_usage_human(collection: Collection) -> str:
    """One aligned table: a row per image, its backing layers indented below it; a target
    that failed is a row whose state says so (the error itself is on stderr, once)."""
    rows: list[list[str]] = []
    notes: list[str] = []
    empty = ["-"] * (len(USAGE_COLUMNS) - 2)
    for record in collection.records:
        name = record.filename if record.depth == 0 else \
            "  " * record.depth + "└ " + (record.name or record.filename)
        if record.usage is None:
            status = LayerStatus.ERROR if record.depth == 0 else record.status
            rows.append([name, *empty, str(status)])
            continue
        rows.append(_usage_row(record.usage.filename if record.depth == 0 else name,
                               record.usage, record.status))
        # A broken layer below: said once, on the top image, by the one rule that judges it.
        shown = (*record.usage.notes, *thin_notes(record.usage),
                 *(f"{reason.text}: qemu cannot open the image" for reason in
                   record.health.reasons if reason.rule == RULE_BACKING)) \
            if record.depth == 0 else record.usage.notes
        notes += [f"{record.usage.filename}: {note}" for note in shown]
    text = render_table(USAGE_COLUMNS, rows, right=(1, 4, 5, 6, 7))
    # A note names the image (and its layer): by the one rule, as the table names them.
    return text + "".join(f"note: {printable(note)}\n" for note in notes)


def failed(entry: Entry) -> bool:
    """Whether a target makes usage exit 1: it could not be analysed, or its backing chain is
    broken (qemu cannot open the image)."""
    record, _ = entry
    return record.error is not None or record.broken_below is not None


def run_usage(args: Namespace, out: TextIO, err: TextIO) -> int:
    scope = ChainScope.NOT_OK if args.no_chain else ChainScope.ALL
    collection = collect(args.targets, chain=scope,
                         live_sources=LiveSources(live_uri(args), tuple(args.qmp)),
                         judging=judging_from_args(args))
    if collection.libvirt_note and args.libvirt_uri is not None:
        # Asked for by name: say why it gave nothing.
        print(f"{PROG}: note: {printable(collection.libvirt_note)}", file=err)
    for note in collection.notes:
        print(f"{PROG}: note: {printable(note)}", file=err)
    for record in collection.records:
        if record.error is not None:
            report_error(record.error, err)
    shown = list(entries(collection))
    if args.output == "json":
        out.write(json_text([entry_json(*entry) for entry in shown], indent=2))
    else:
        out.write(render_usage_human(collection))
    return EXIT_FAILED if any(failed(entry) for entry in shown) else EXIT_OK
