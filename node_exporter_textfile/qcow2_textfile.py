"""qcow2-textfile: qcow2 usage (and check) metrics for node_exporter's textfile collector.

    qcow2-textfile --output /var/lib/prometheus/node-exporter/qcow2.prom TARGET...

The text is made one way: a jinja2 template, the shipped ``templates/qcow2.prom.j2`` or the
user's ``--template FILE``, rendered with the families of :mod:`collectors.report.metrics` and
the format's filters (:mod:`.exposition`: escaping and number text, written once). It is
checked one way, whatever the template: :func:`.exposition.validate` reads it as
node_exporter will. Why a template rather than prometheus_client's writer: ``--template``
needs the template path anyway, so the writer would be a second producer beside it; and the
writer turns every integer into Go-style float text (``1.073741824e+010``), which is exact only
up to 2**53 and changes the file operators read.
The file is then replaced atomically: a temporary file with a random name made by mkstemp in
the same directory (hidden: a leading dot, no ``.prom`` suffix), fsync, mode 0644 whatever the
umask (the exporter runs as another user), rename over the output (a symlink there is replaced,
never written through).
A run that fails at any step leaves the previous file in place; its
``qcow2_last_success_timestamp_seconds`` then goes stale, which the shipped alert watches.
Images that cannot be analysed are not run failures: they are exported as
``qcow2_scrape_error 1``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from pathlib import Path

from qcow2_monitor.cli.entry import exception_text, write_utf8
from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from qcow2_monitor.cli.options import (
    add_selection_and_health_arguments,
    add_targets_argument,
    collect_selected,
    collector_main,
)
from qcow2_monitor.cli.outcome import Namespace
from qcow2_monitor.cli.parser import ArgumentParser
from qcow2_monitor.cli.version import add_version_argument
from qcow2_monitor.collectors.common.record import frozen_record
from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.qcow2.reader import open_readonly
from qcow2_monitor.collectors.report.metrics import (
    METRICS,
    Metric,
    collection_metrics,
    failure_line,
    filesystem_metrics,
    filesystems,
    image_metrics,
)
from qcow2_monitor.collectors.report.model import Collection
from qcow2_monitor.node_exporter_textfile.exposition import FILTERS, validate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Sequence, TextIO

    import jinja2  # imported lazily at run time, like everything heavy

PROG = "qcow2-textfile"
PREFIX = "qcow2_"
TEMPLATE_PACKAGE_PATH = Path(__file__).parent / "templates" / "qcow2.prom.j2"
FILE_MODE = 0o644


# --- rendering ---------------------------------------------------------------------------------


@frozen_record
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
    env.filters.update(FILTERS)
    return env.from_string(_read_template(str(source)))


def _read_template(path: str) -> str:
    """The text of a template file. Opened as images are (open_readonly: a FIFO would block
    forever, a device act or never end), and only a regular file is read: /dev/zero, given by
    mistake, would fill the memory."""
    fd = open_readonly(path)
    with os.fdopen(fd, encoding="utf-8") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return file.read()


def render(collection: Collection, template: jinja2.Template) -> str:
    errors = [text for record in collection.records if (text := failure_line(record))]
    return str(template.render(families=families(collection), errors=errors))


# --- writing -----------------------------------------------------------------------------------


def write_atomically(path: str, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old file or the new one, whole.

    The temporary file is made by mkstemp in the same directory: a random name, created with
    O_CREAT|O_EXCL|O_NOFOLLOW, so that nobody who may write to the directory can have planted
    it or a symlink in its place (a predictable ``NAME.<pid>`` opened with O_TRUNC would write
    through such a symlink, as root, into any file). Its name starts with a dot and does not
    end in ``.prom``: node_exporter never reads it. rename() then replaces the directory entry
    `path`, a symlink included, and never writes through it.

    Raises OSError; the temporary file is removed on failure and `path` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                     dir=directory)
    try:
        try:
            view = memoryview(text.encode("utf-8"))
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, FILE_MODE)  # mkstemp creates 0600: the exporter runs as another user
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
        metavar="FILE",
        help="required: the .prom file to replace atomically, e.g. "
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


# Names of the run's own descriptors, never a file to replace: rename() over /dev/stdout would
# replace the host's link with a regular file, whatever the descriptor is.
_OWN_DESCRIPTORS = ("/dev/stdin", "/dev/stdout", "/dev/stderr")
_DESCRIPTOR_DIRECTORIES = ("/dev/fd/", "/proc/")


def _output_problem(output: Optional[str]) -> Optional[str]:
    if output is None:
        return "the following arguments are required: -o/--output"
    if output == "-":
        return None
    if os.path.isdir(output):
        return (f"--output {printable(output)} is a directory: give the file to write in it, "
                f"e.g. {printable(os.path.join(output, 'qcow2.prom'))}")
    path = os.path.abspath(output)
    if path in _OWN_DESCRIPTORS or path.startswith(_DESCRIPTOR_DIRECTORIES):
        return f"--output {printable(output)} is no file to replace: use --output - for stdout"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # absent, or a dangling link: the file is made (a write error says why)
    if not stat.S_ISREG(mode):
        # A device, FIFO or socket (or a link to one) would be replaced by a regular file:
        # `--output /dev/null` as root would leave the host without /dev/null.
        return (f"--output {printable(output)} is not a regular file: the file written "
                "replaces it; give the .prom file to write, or - for stdout")
    return None


def _write_file(args: Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """One run: collect, render, validate, write; the exit code."""
    prog = PROG
    # Checked here, not by argparse's required=True: argparse reports a missing required
    # option before an unknown one, so a typo (--otput -) would read "--output required".
    problem = _output_problem(args.output)
    if problem:
        stderr.write(f"{_parser().format_usage()}{prog}: error: {problem}\n")
        return EXIT_USAGE
    if args.output != "-" and not args.output.endswith(".prom"):
        print(f"{prog}: warning: node_exporter reads only *.prom files", file=stderr)

    try:
        template = load_template(args.template)
    except OSError as exc:  # missing, unreadable, not a regular file
        print(f"{prog}: error: template {printable(args.template or '')}: "
              f"{exc.strerror or exc}", file=stderr)
        return EXIT_FAILED
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
