"""The plugin's text: the short first line and one long-output line per image (and per
filesystem when overcommit is thresholded)."""

from __future__ import annotations

from qcow2_monitor.collectors.common.units import (
    counted,
    human_duration,
    human_rate,
    human_size,
)
from qcow2_monitor.collectors.report.health import (
    OK,
    RULE_BACKING,
    SEVERITY,
    STATE_NAMES,
    error_without_filename,
)
from qcow2_monitor.collectors.report.model import LayerStatus
from qcow2_monitor.nagios.perfdata import perfdata
from qcow2_monitor.nagios.runtime import PREFIX
from qcow2_monitor.nagios.text import clean_text, percent_text, usage_percent
from qcow2_monitor.nagios.thresholds import FilesystemVerdict, Thresholds, Verdict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from qcow2_monitor.collectors.report.model import ImageRecord, ImageUsage

MAX_IMAGES_IN_SUMMARY = 2  # the first line must stay short; the long output lists everything


def _image_name(record: ImageRecord) -> str:
    return clean_text(record.label_path)


def _named(record: ImageRecord, text: str) -> str:
    """`text` about `record`, after its name (a failed --qmp socket's is its path); the
    record about uninspectable qemu processes is no image and its text names it already."""
    return f"{_image_name(record)}: {text}" if record.is_image or record.source else text


def _details(record: ImageRecord) -> list[str]:
    """-v: what the image is, its notes and the check totals."""
    parts = [f"note: {note.text}" for note in record.health.notes]
    usage = record.usage
    if usage is not None:
        flags = [
            flag for flag, on in (
                ("in use", usage.in_use), ("dirty", usage.dirty), ("corrupt", usage.corrupt),
                ("lazy refcounts", usage.lazy_refcounts), ("encrypted", usage.encrypted),
            ) if on
        ]
        detail = (
            f"qcow2 v{usage.qcow_version}, virtual {human_size(usage.virtual_size)}, "
            f"cluster {human_size(usage.cluster_size)}, end offset from "
            f"{usage.end_offset_source}, "
            f"fully allocated {human_size(usage.fully_allocated_size)}"
        )
        if flags:
            detail += ", " + ", ".join(flags)
        if usage.backing_filename:
            detail += f", backing {usage.backing_filename}"
        if usage.free_below_end:
            detail += f", {human_size(usage.free_below_end)} free below the end"
        parts.append(detail)
        if usage.growth is not None and usage.growth.note:
            parts.append(f"note: {usage.growth.note}")
    check = record.check
    if check is not None:
        parts.append(
            f"check: {counted(check.corruptions, 'corruption')}, "
            f"{counted(check.leaks, 'leak')}, {counted(check.check_errors, 'check error')}, "
            + (f"{check.unconfirmed} unconfirmed, " if check.unconfirmed else "")
            + f"{check.allocated_clusters}/"
            f"{check.total_clusters} clusters allocated"
        )
    return parts


def _findings(record: ImageRecord) -> list[str]:
    """-vv: every located finding of the check."""
    if record.check is None:
        return []
    from qcow2_monitor.cli.text import finding_text  # --check only

    lines = [
        "    " + clean_text(finding_text(finding))
        for finding in record.check.findings
    ]
    hidden = record.check.findings_total - len(record.check.findings)
    if hidden > 0:
        lines.append(f"    ... {hidden} more findings")
    return lines


def _growth_text(usage: ImageUsage) -> str:
    """", growing 1.2 MiB/s, full in 3h 20m" once the history allows."""
    growth = usage.growth
    if growth is None or growth.bytes_per_second is None:
        return ""
    text = f", growing {human_rate(growth.bytes_per_second)}"
    if growth.time_to_full is not None:
        text += f", full in {human_duration(growth.time_to_full)}"
    return text


def _said_above(record: ImageRecord) -> set[str]:
    """The reasons of a backing layer that its top image names already: its chain's broken
    layer (itself, or one below it; of an unreadable layer, also why it is unreadable)."""
    if record.depth == 0:
        return set()
    said = {reason.text for reason in record.health.reasons if reason.rule == RULE_BACKING}
    if record.status == LayerStatus.ERROR and record.error is not None:
        said.add(error_without_filename(record.error))
    return said


def _problem_texts(verdict: Verdict) -> list[str]:
    """The problems of one image as the output names them. A broken chain is one fact, named
    on its top image: a backing layer (the broken one, or one between) says only its status
    (missing, backing-missing, ...) instead of repeating it."""
    said = _said_above(verdict.record)
    texts = [problem.text for problem in verdict.problems if problem.text not in said]
    return [str(verdict.record.status), *texts] if said & {p.text for p in verdict.problems} \
        else texts


def _named_in_summary(verdict: Verdict) -> bool:
    """Whether the first line names the image: not a backing layer whose only problem is the
    broken chain its top image names."""
    said = _said_above(verdict.record)
    return not said or any(problem.text not in said for problem in verdict.problems)


def image_line(verdict: Verdict, verbosity: int, top: str = "") -> str:
    record = verdict.record
    usage = record.usage
    parts: list[str] = []
    if usage is not None:
        container = usage.container
        parts.append(
            f"usage {percent_text(usage_percent(usage.usage_ratio))}% "
            f"(end {human_size(usage.end_offset)}"
            + (clean_text(f" live from {usage.domain} {usage.disk}")
               if usage.live_end_offset is not None else "")
            + f" of {human_size(container.size)} "
            f"{container.kind} container, headroom {human_size(container.headroom)})"
            + _growth_text(usage)
        )
    parts.extend(_problem_texts(verdict))
    if verbosity >= 1:
        parts.extend(_details(record))
    # Below the image the chain starts at: the target may be a directory or a pattern.
    where = f" (backing file, depth {record.depth} below {top or clean_text(record.target)})" \
        if record.depth else ""
    # A raw base or a json:/nbd: layer is reported, not analysed (model.LayerStatus).
    text = "; ".join(clean_text(part) for part in parts) or f"{record.status}, not analysed"
    name = f"{_image_name(record)}{where}: " if record.is_image or record.source else ""
    lines = [f"{STATE_NAMES[verdict.state]}: {name}{text}"]
    if verbosity >= 2:
        lines.extend(_findings(record))
    return "\n".join(lines)


def filesystem_line(verdict: FilesystemVerdict) -> str:
    fs = verdict.figures
    text = (
        f"overcommit {percent_text(fs.overcommit_ratio)} ({counted(fs.images, 'image')}, virtual "
        f"{human_size(fs.virtual_sizes)} on {human_size(fs.size)}, free {human_size(fs.free)})"
    )
    texts = [text, *(problem.text for problem in verdict.problems)]
    return clean_text(f"{STATE_NAMES[verdict.state]}: filesystem {fs.mountpoint}: "
                      + "; ".join(texts))


def _ok_summary(verdicts: Sequence[Verdict]) -> str:
    if len(verdicts) == 1:
        record = verdicts[0].record
        usage = record.usage
        if usage is None:  # only a backing layer lacks figures without an error
            return f"{_image_name(record)}: {record.status}, not analysed"
        return (
            f"{_image_name(record)}: usage "
            f"{percent_text(usage_percent(usage.usage_ratio))}%, headroom "
            f"{human_size(usage.container.headroom)}"
        )
    measured = [(v.record.usage.usage_ratio, v.record) for v in verdicts
                if v.record.usage is not None]
    text = f"{len(verdicts)} images"
    if measured:
        ratio, fullest = max(measured, key=lambda pair: pair[0])
        text += (
            f", highest usage {percent_text(usage_percent(ratio))}% "
            f"({_image_name(fullest)})"
        )
    return text


def summary(verdicts: Sequence[Verdict], filesystems: Sequence[FilesystemVerdict],
            state: int) -> str:
    if state == OK:
        return _ok_summary(verdicts)
    # Worst first, then in the collector's (stable) order; filesystems after images.
    # A backing layer with nothing but its chain's broken layer to say is counted, not named:
    # its top image names the fact.
    bad_images = sum(v.record.is_image for v in verdicts if v.state != OK)
    bad = [(v.state, _named(v.record, ", ".join(_problem_texts(v))), v.record.is_image)
           for v in verdicts if v.state != OK and _named_in_summary(v)]
    bad.sort(key=lambda item: -SEVERITY[item[0]])
    bad += [(f.state, f"filesystem {f.figures.mountpoint}: "
             + ", ".join(p.text for p in f.problems), False)
            for f in filesystems if f.state != OK]
    shown = "; ".join(text for _, text, _ in bad[:MAX_IMAGES_IN_SUMMARY])
    if len(bad) > MAX_IMAGES_IN_SUMMARY:
        shown += f"; +{len(bad) - MAX_IMAGES_IN_SUMMARY} more"
    images = sum(v.record.is_image for v in verdicts)
    if images > 1 and bad_images:
        shown = f"{bad_images} of {images} images: {shown}"
    return clean_text(shown)


def _with_tops(verdicts: Sequence[Verdict]) -> Iterator[tuple[Verdict, str]]:
    """Each verdict with the name of the image its chain starts at: a layer's record follows
    its top image's (collect() lists each chain after its image, a shared layer once)."""
    top = ""
    for verdict in verdicts:
        if verdict.record.depth == 0:
            top = _image_name(verdict.record)
        yield verdict, top


def render(verdicts: Sequence[Verdict], filesystems: Sequence[FilesystemVerdict],
           limits: Thresholds, state: int, verbosity: int = 0,
           notes: Sequence[str] = ()) -> str:
    """The whole plugin output: first line with perfdata, then the long output."""
    first = f"{PREFIX} {STATE_NAMES[state]} - {summary(verdicts, filesystems, state)}"
    perf = perfdata(verdicts, filesystems, limits)
    if perf:
        first += " | " + " ".join(perf)
    lines = [first]
    # Long output is worth its lines only when it says more than the first line.
    if len(verdicts) > 1 or verbosity >= 1:
        lines.extend(image_line(verdict, verbosity, top)
                     for verdict, top in _with_tops(verdicts))
    lines.extend(filesystem_line(fs) for fs in filesystems)
    lines.extend(clean_text(f"note: {note}") for note in notes)
    return "\n".join(lines) + "\n"
