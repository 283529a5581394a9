"""qcow2-textfile: qcow2 usage (and check) metrics for node_exporter's textfile collector.

    qcow2-textfile --output /var/lib/prometheus/node-exporter/qcow2.prom TARGET...

Renders :mod:`collectors.metrics` with a jinja2 template (``templates/qcow2.prom.j2``, or
``--template FILE``), validates the text by parsing it back, and replaces the output file
atomically: a temporary ``NAME.prom.<pid>`` in the same directory (not matched by node_exporter's
``*.prom``), fsync, mode 0644 whatever the umask (the exporter runs as another user), rename.
A run that fails at any step leaves the previous file in place; its
``qcow2_last_success_timestamp_seconds`` then goes stale, which the shipped alert watches.
Images that cannot be analysed are not run failures: they are exported as
``qcow2_scrape_error 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, TextIO

from qcow2_monitor.cli.entry import exception_text, write_utf8
from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_OK
from qcow2_monitor.cli.options import (
    add_selection_and_health_arguments,
    add_targets_argument,
    collect_selected,
    collector_main,
)
from qcow2_monitor.cli.parser import ArgumentParser
from qcow2_monitor.cli.version import add_version_argument
from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.report.metrics import (
    METRICS,
    Collection,
    Labels,
    Metric,
    MetricValue,
    collection_metrics,
    failure_line,
    filesystem_metrics,
    filesystems,
    image_metrics,
)

if TYPE_CHECKING:
    import jinja2  # imported lazily at run time, like everything heavy

PROG = "qcow2-textfile"
PREFIX = "qcow2_"
TEMPLATE_PACKAGE_PATH = Path(__file__).parent / "templates" / "qcow2.prom.j2"
FILE_MODE = 0o644


class InvalidOutput(Exception):
    """The rendered text is not something node_exporter would accept completely."""


# --- the one place for the text format's escaping and number rules --------------------------


def escape_label_value(value: str) -> str:
    """Label values escape backslash, double quote and newline (exposition format 0.0.4); the
    text is first written by the one printable rule of every output (collectors/common/text.py),
    which leaves no newline (it is ``\\x0a`` there, as in every other output)."""
    return printable(value).replace("\\", "\\\\").replace('"', '\\"')


def escape_help(text: str) -> str:
    """HELP text escapes backslash and newline only (none is left by the printable rule)."""
    return printable(text).replace("\\", "\\\\")


def format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{escape_label_value(value)}"' for key, value in sorted(labels))
    return "{" + inner + "}"


def format_value(value: MetricValue) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)  # shortest text that reads back as the same double


# --- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """All samples of one metric name, so that HELP and TYPE are written once."""

    name: str
    help: str
    type: str
    metrics: tuple[Metric, ...]


def families(collection: Collection) -> list[Family]:
    """Group every metric of the run by name, in the declaration order of METRICS."""
    grouped: dict[str, list[Metric]] = {}
    for record in collection.records:
        for metric in image_metrics(record):
            grouped.setdefault(metric.name, []).append(metric)
    for figures in filesystems(collection):
        for metric in filesystem_metrics(figures):
            grouped.setdefault(metric.name, []).append(metric)
    for metric in collection_metrics(collection):
        grouped.setdefault(metric.name, []).append(metric)
    order = {name: index for index, name in enumerate(METRICS)}
    return [
        Family(PREFIX + name, metrics[0].help, metrics[0].type, tuple(metrics))
        for name, metrics in sorted(grouped.items(), key=lambda item: order[item[0]])
    ]


def load_template(path: Optional[str] = None) -> jinja2.Template:
    import jinja2

    source = Path(path) if path else TEMPLATE_PACKAGE_PATH
    env = jinja2.Environment(
        autoescape=False,  # not HTML: escaping is the text format's, done by the filters
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,  # node_exporter rejects a file without its final newline
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(labels=format_labels, value=format_value, help_text=escape_help)
    return env.from_string(source.read_text(encoding="utf-8"))


def render(collection: Collection, template: jinja2.Template) -> str:
    errors = [text for record in collection.records if (text := failure_line(record))]
    return str(template.render(families=families(collection), errors=errors))


def validate(text: str) -> int:
    """Parse `text` back; raise InvalidOutput for anything node_exporter would not take whole.

    prometheus_client's parser alone is lenient: it accepts a missing final
    newline, duplicate series and timestamps, all of which make node_exporter drop data. Those
    are checked here explicitly. Returns the number of samples.
    """
    from prometheus_client.parser import text_string_to_metric_families

    if text and not text.endswith("\n"):
        raise InvalidOutput("output does not end with a newline")
    seen_meta: set[tuple[str, str]] = set()
    for line in text.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[0] == "#" and parts[1] in ("HELP", "TYPE"):
            meta = (parts[1], parts[2])
            if meta in seen_meta:
                raise InvalidOutput(f"{parts[1]} for {parts[2]} given twice")
            seen_meta.add(meta)
    series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.timestamp is not None:
                    raise InvalidOutput(f"sample {sample.name} has a timestamp")
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key in series:
                    raise InvalidOutput(f"duplicate series {sample.name}{dict(key[1])}")
                series.add(key)
    except InvalidOutput:
        raise
    except Exception as exc:  # the parser raises ValueError and others on bad input
        raise InvalidOutput(f"does not parse: {type(exc).__name__}: {exc}") from exc
    return len(series)


# --- writing -----------------------------------------------------------------------------------


def write_atomically(path: str, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old file or the new one, whole.

    Raises OSError; the temporary file is removed on failure and `path` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    temporary = f"{path}.{os.getpid()}"
    data = text.encode("utf-8")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, FILE_MODE)  # the umask narrowed the mode given to open()
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # The rename itself is durable only once the directory is synced.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- command line ------------------------------------------------------------------------------


_EPILOG = """\
examples:
  qcow2-textfile -o /var/lib/prometheus/node-exporter/qcow2.prom /var/lib/libvirt/images
  qcow2-textfile --output - --running --chain

exit codes: 0 file written (images that cannot be analysed are in it, with
qcow2_scrape_error 1, and listed on stderr); 1 file not written (template, write or
internal error; the previous file is kept); 64 bad command line.
"""


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Write qcow2 image metrics for node_exporter's textfile collector.",
        epilog=_EPILOG,
    )
    add_targets_argument(parser)
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="the .prom file to replace atomically, e.g. "
        "/var/lib/prometheus/node-exporter/qcow2.prom; '-' prints to stdout",
    )
    parser.add_argument(
        "--template", metavar="FILE", help="jinja2 template replacing the shipped one"
    )
    add_selection_and_health_arguments(parser)
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="do not list images that could not be analysed on stderr (they are in the file)",
    )
    add_version_argument(parser)
    return parser


def _write_file(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """One run: collect, render, validate, write; the exit code."""
    prog = PROG
    if args.output != "-" and not args.output.endswith(".prom"):
        print(f"{prog}: warning: node_exporter reads only *.prom files", file=stderr)

    try:
        template = load_template(args.template)
    except Exception as exc:  # unreadable file or jinja2 syntax error: the run fails cleanly
        print(f"{prog}: error: template: {exception_text(exc)}", file=stderr)
        return EXIT_FAILED

    collection = collect_selected(args.targets, args)
    if not args.quiet:
        for record in collection.failed:
            print(f"{prog}: {failure_line(record)}", file=stderr)
        for note in collection.notes:
            print(f"{prog}: note: {printable(note)}", file=stderr)
    try:
        text = render(collection, template)
        validate(text)
    except Exception as exc:  # a template error or invalid text: keep the previous good file
        print(f"{prog}: error: output not written: {exception_text(exc)}", file=stderr)
        return EXIT_FAILED

    if args.output == "-":
        write_utf8(stdout, text)
        return EXIT_OK
    try:
        write_atomically(args.output, text)
    except OSError as exc:
        print(f"{prog}: error: cannot write {printable(args.output)}: {exc.strerror or exc}",
              file=stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    return collector_main(_parser, _write_file, argv, stdout, stderr,
                          internal_error=f"{PROG}: error: internal error: ")


if __name__ == "__main__":
    sys.exit(main())
