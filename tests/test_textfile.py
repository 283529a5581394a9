"""qcow2-textfile: golden output, validation, atomic replacement, promtool, a real node_exporter."""

from __future__ import annotations

import math
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import sample_collection

from qcow2_monitor.collectors.report.usage import analyze_usage
from qcow2_monitor.node_exporter_textfile import qcow2_textfile as textfile
from qcow2_monitor.node_exporter_textfile.exposition import (
    InvalidOutput,
    escape_help,
    escape_label_value,
    format_value,
    validate,
)
from qcow2_monitor.node_exporter_textfile.qcow2_textfile import load_template, main, render

from daemons import NodeExporter, make_image, node_exporter, require_binary, run
from tree import BIN

HERE = Path(__file__).parent
PACKAGE = HERE.parent / "node_exporter_textfile"
GOLDEN = HERE / "golden" / "qcow2.prom"

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def series_of(text: str) -> Series:
    """Every sample by name and label set; an empty label value is an absent label (Prometheus
    semantics: node_exporter fills labels missing from some samples of a family with "")."""
    return {
        (sample.name, frozenset((k, v) for k, v in sample.labels.items() if v)): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --- format rules ------------------------------------------------------------------------------


def test_escaping_and_values() -> None:
    # A newline by the printable rule of every output (common/text.py), then its backslash.
    assert escape_label_value('a\\b"c\nd ü') == 'a\\\\b\\"c\\\\x0ad ü'
    assert escape_help('x\\y\n"z"') == 'x\\\\y\\\\x0a"z"'
    assert [format_value(v) for v in (True, False, 0, 10737418240, 0.5, 1.0, 1e-05)] == [
        "1", "0", "0", "10737418240", "0.5", "1.0", "1e-05"]
    assert [format_value(v) for v in (math.inf, -math.inf, math.nan)] == ["+Inf", "-Inf", "NaN"]


def test_golden_file() -> None:
    text = render(sample_collection(), load_template())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")
    assert text.endswith("\n")
    # Counted by hand: the file image 11 usage figures + 7 check figures + health, its
    # health_reason (leaks), scrape_error, image_info = 22; the block layer 10 (no
    # allocated_bytes) + health, health_reason (dirty-in-use), scrape_error, image_info = 14;
    # the protocol layer health, scrape_error, image_info = 3; the failed target the same
    # plus its health_reason = 4; the run 3 (duration, timestamp, images): 46.
    assert validate(text) == 46


def test_golden_file_reads_back_with_the_model_values() -> None:
    series = series_of(GOLDEN.read_text(encoding="utf-8"))
    path = '/var/lib/images/a b,c=d "q\\ ü.qcow2'
    labels = frozenset({("path", path)})
    assert series[("qcow2_image_end_offset_bytes", labels)] == 327680
    assert series[("qcow2_usage_ratio", labels)] == 327680 / 10737418240
    assert series[("qcow2_leaks", labels)] == 2
    assert series[("qcow2_scrape_error", frozenset({("path", "/srv/*.qcow2")}))] == 1
    assert series[("qcow2_health", labels)] == 1  # 2 leaks: WARNING
    assert series[("qcow2_health_reason", frozenset({("path", path), ("rule", "leaks")}))] == 1


# Texts node_exporter does not serve whole (it says node_textfile_scrape_error 1, or drops
# repeated series silently), each with the validator's reason: every one is checked against a
# real node_exporter below, so the validator's rules are node_exporter's, not our guess.
REFUSED = [
    ("# TYPE a gauge\na 1", "newline"),
    ("# TYPE a gauge\na 1\na 2\n", "duplicate series"),
    ('# TYPE a gauge\na{x="1"} 1\na{x="1"} 2\n', "duplicate series"),
    ('a{x=""} 1\na 2\n', "duplicate series"),  # an empty label is an absent one
    ("# TYPE a gauge\na 1 1700000000000\n", "timestamp"),
    ("a 1 2 3 4\n", "timestamp"),
    ("a 1 \n", "blank after the value"),
    ("# HELP a x\n# HELP a y\na 1\n", "second HELP"),
    ("# HELP a x\na 1\n# HELP a y\n", "second HELP"),
    ("# TYPE a gauge\n# TYPE a gauge\na 1\n", "second TYPE"),
    ("a 1\n# TYPE a gauge\n", "TYPE after its samples"),
    ("# TYPE a gauges\na 1\n", "not one of"),
    ("# TYPE a gauge extra\na 1\n", "not one of"),
    ("a{x=1} 1\n", "labels of a do not parse"),
    ("a{,} 1\n", "labels of a do not parse"),
    ('a{x="1",,} 1\n', "labels of a do not parse"),
    ('a{x="1",x="2"} 1\n', "repeated or reserved"),
    ('a{__name__="b"} 1\n', "repeated or reserved"),
    ('a{x="\\t"} 1\n', "invalid escape"),
    ("# HELP a x\\ty\na 1\n", "invalid escape"),
    ("a 1x\n", "not a number"),
    ("a 0x1\n", "not a number"),
    ("a 1_000\n", "not a number"),
    ("a 1e400\n", "out of range"),
    ("1a 1\n", "not a sample"),
]
# Texts node_exporter serves whole: the validator passes them and counts their series.
ACCEPTED = [
    "a{} 1\n",
    'a{x="1",} 1\n',
    '  a { x = "1" } 1\n',
    "a\t1\n",
    "\n\n# comment\n#\n# HELPx foo\n# HELP\na +Inf\nb -Inf\nc NaN\nd 1e3\ne .5\nf 5.\n"
    "g Infinity\nh nan\ni 1e-400\n",
    '# HELP a x\\\\y\\nz\n# TYPE a counter\na{p="\\\\ \\" \\n ü}"} 1\n# HELP b\nb 1\n',
    'a 1\nb 1\na{x="2"} 1\n',  # a family's samples need not be together
    # Lines end at "\n" only: a line or paragraph separator is text (a file name may hold one).
    'a{p="x\u2028y\u2029z\x85"} 1\n# HELP b x\u2028y\nb 1\n',
]


@pytest.mark.parametrize(("text", "reason"), REFUSED)
def test_validate_refuses_what_node_exporter_would_not_serve(text: str, reason: str) -> None:
    with pytest.raises(InvalidOutput, match=reason):
        validate(text)


@pytest.mark.parametrize("text", ACCEPTED)
def test_validate_accepts_what_node_exporter_serves(text: str) -> None:
    assert validate(text) == len(series_of(text))


def test_validate_refuses_what_would_crash_node_exporter_and_what_it_does_not_check() -> None:
    # node_exporter 1.5 dies on a label name starting with "__" (checked below).
    with pytest.raises(InvalidOutput, match="repeated or reserved"):
        validate('a{__x="b"} 1\n')
    # Not node_exporter's rules, ours: the model has no histogram or summary, so a template
    # writing one is a mistake; and the text is written as UTF-8.
    with pytest.raises(InvalidOutput, match="not one of counter, gauge, untyped"):
        validate("# TYPE a summary\na_sum 1\na_count 2\n")
    with pytest.raises(InvalidOutput, match="UTF-8"):
        validate('a{x="\udcff"} 1\n')


def _served(exporter: NodeExporter, directory: Path, text: str) -> tuple[float, Series]:
    (directory / "t.prom").write_text(text, encoding="utf-8")
    scraped = series_of(exporter.scrape())
    error = scraped.pop(("node_textfile_scrape_error", frozenset()))
    own = ("go_", "process_", "promhttp_", "node_")  # the exporter's own series
    return error, {key: value for key, value in scraped.items() if not key[0].startswith(own)}


def test_validators_verdicts_are_node_exporters(tmp_path: Path) -> None:
    """Each refused text is refused or cut by a real node_exporter; each accepted one is
    served whole, with the values the text holds."""
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    with node_exporter(textfiles, tmp_path / "ne") as exporter:
        for text, _ in REFUSED:
            error, served = _served(exporter, textfiles, text)
            assert error == 1 or served != series_of(text), f"node_exporter served {text!r}"
        for text in ACCEPTED:
            error, served = _served(exporter, textfiles, text)
            assert error == 0, f"node_exporter refused {text!r}"
            assert {k: repr(float(v)) for k, v in served.items()} == {
                k: repr(float(v)) for k, v in series_of(text).items()}, text
    (textfiles / "t.prom").write_text('a{__x="b"} 1\n', encoding="utf-8")
    with pytest.raises(AssertionError), node_exporter(textfiles, tmp_path / "ne2") as exporter:
        exporter.scrape()  # the first scrape kills it


# --- writing -----------------------------------------------------------------------------------


def _images(directory: Path) -> list[Path]:
    directory.mkdir(parents=True)
    base = make_image(directory / "base ü.qcow2", "32M", write=["write 0 1M"])
    return [
        make_image(directory / 'a b,c=d "q\\x.qcow2', "64M", write=["write 0 3M"]),
        make_image(directory / "overlay.qcow2", backing=base, write=["write 2M 1M"]),
        base,
    ]


def test_writes_0644_atomically_whatever_the_umask(tmp_path: Path) -> None:
    images = _images(tmp_path / "img")
    out = tmp_path / "out" / "qcow2.prom"
    out.parent.mkdir()
    old = os.umask(0o077)
    try:
        assert main(["--output", str(out), "--chain", str(tmp_path / "img")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert os.listdir(out.parent) == ["qcow2.prom"]  # no temporary left behind
    series = series_of(out.read_text(encoding="utf-8"))
    for image in images:  # base is met by the directory scan before overlay: depth 0
        usage = analyze_usage(str(image), chain=False).usage
        assert usage is not None
        labels = frozenset({("path", str(image))})
        assert series[("qcow2_image_end_offset_bytes", labels)] == usage.image_end_offset
        assert series[("qcow2_scrape_error", labels)] == 0


def test_promtool_check_metrics_accepts_the_file(tmp_path: Path) -> None:
    _images(tmp_path / "img")
    junk = tmp_path / "img" / "junk.qcow2"
    junk.write_bytes(b"junk" * 100)
    out = tmp_path / "qcow2.prom"
    assert main(["--output", str(out), "--chain", "--check", str(tmp_path / "img"),
                 str(junk), str(tmp_path / "none-*.qcow2")]) == 0
    text = out.read_text(encoding="utf-8")
    assert "qcow2_leaks{" in text and 'qcow2_scrape_error{path="' in text
    proc = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Control: promtool does flag a lint problem, so exit 0 above means something.
    bad = subprocess.run([require_binary("promtool"), "check", "metrics"],
                         input="# TYPE qcow2_x counter\nqcow2_x 1\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0


def test_a_line_separator_in_a_file_name_keeps_the_file_written(tmp_path: Path) -> None:
    """U+2028 is no control character: it stays in the path label as it is, on one line for
    node_exporter, and the file is written (it was refused whole, every image's series lost)."""
    image = make_image(tmp_path / "vm\u2028a\u2029b.qcow2", "16M")
    out = tmp_path / "qcow2.prom"
    assert main(["--no-live", "--output", str(out), str(image)]) == 0
    text = out.read_text(encoding="utf-8")
    assert f'qcow2_scrape_error{{path="{image}"}} 0\n' in text
    proc = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_output_dash_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = make_image(tmp_path / "p.qcow2", "16M")
    assert main(["--output", "-", str(image)]) == 0
    out = capsys.readouterr().out
    assert f'qcow2_scrape_error{{path="{image}"}} 0\n' in out
    assert list(tmp_path.iterdir()) == [image]


def _previous_good(tmp_path: Path) -> tuple[Path, str, Path]:
    image = make_image(tmp_path / "k.qcow2", "16M")
    out = tmp_path / "out" / "qcow2.prom"
    out.parent.mkdir()
    assert main(["--output", str(out), str(image)]) == 0
    return out, out.read_text(), image


def test_failed_write_keeps_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, before, image = _previous_good(tmp_path)
    run([require_binary("qemu-io"), "-f", "qcow2", "-c", "write 0 4M", str(image)])

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    assert main(["--output", str(out), str(image)]) == 1
    assert out.read_text() == before
    assert os.listdir(out.parent) == ["qcow2.prom"]
    monkeypatch.undo()
    assert main(["--output", str(out), str(image)]) == 0  # control: the image did change
    assert out.read_text() != before


def test_planted_symlinks_are_never_written_through(tmp_path: Path) -> None:
    """Whoever may write to the textfile directory plants symlinks at every name a
    predictable temporary file could have (NAME.<pid> for each pid) and turns the output
    itself into a symlink, all pointing at files they want the root job to overwrite."""
    image = make_image(tmp_path / "a.qcow2", "16M")
    directory = tmp_path / "textfiles"
    directory.mkdir()
    victim, other = tmp_path / "victim", tmp_path / "other"
    victim.write_text("precious\n")
    other.write_text("also precious\n")
    out = directory / "qcow2.prom"
    pids = {*range(1, 32769), os.getpid()}
    for pid in pids:
        (directory / f"qcow2.prom.{pid}").symlink_to(victim)
    out.symlink_to(other)
    assert main(["--output", str(out), str(image)]) == 0
    assert victim.read_text() == "precious\n" and other.read_text() == "also precious\n"
    assert not out.is_symlink() and stat.S_IMODE(out.stat().st_mode) == 0o644
    assert f'qcow2_scrape_error{{path="{image}"}} 0' in out.read_text()
    # Nothing else changed in the directory: the planted links are theirs, no temporary left.
    assert len(os.listdir(directory)) == len(pids) + 1
    assert all((directory / f"qcow2.prom.{pid}").is_symlink() for pid in (1, os.getpid()))


def test_temporary_file_is_random_hidden_and_exclusive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(tmp_path / "a.qcow2", "16M")
    out = tmp_path / "qcow2.prom"
    renamed: list[tuple[str, str]] = []
    real_rename = os.rename

    def rename(src: str, dst: str, **dir_fds: int) -> None:
        if not dir_fds:  # the state store renames relative to its directory: not the textfile
            renamed.append((src, dst))
        real_rename(src, dst, **dir_fds)

    monkeypatch.setattr(os, "rename", rename)
    for _ in range(2):
        assert main(["--output", str(out), str(image)]) == 0
    [(first, dst), (second, _)] = renamed
    assert dst == str(out) and first != second  # a new random name each run
    for name in (os.path.basename(first), os.path.basename(second)):
        # Hidden from node_exporter (*.prom) and from ls; not NAME.<pid>.
        assert name.startswith(".qcow2.prom.") and not name.endswith(".prom"), name
        assert str(os.getpid()) not in name.split(".")
    assert os.path.dirname(first) == str(tmp_path)  # same filesystem: rename is atomic


@pytest.mark.parametrize(
    "template",
    [
        # Drops the final newline node_exporter needs.
        "{% for f in families %}{% for m in f.metrics %}{{ f.name }}{{ m.labels | labels }} "
        "{{ m.value | value }}\n{% endfor %}{% endfor %}x 1",
        # Repeats every series.
        "{% for f in families %}{% for m in f.metrics %}{{ f.name }}{{ m.labels | labels }} "
        "{{ m.value | value }}\n{{ f.name }}{{ m.labels | labels }} 0\n{% endfor %}{% endfor %}",
        "{% for f in families %}",  # jinja2 syntax error
        "{{ no_such_variable }}\n",  # StrictUndefined
    ],
)
def test_bad_template_keeps_previous_file(tmp_path: Path, template: str) -> None:
    out, before, image = _previous_good(tmp_path)
    custom = tmp_path / "bad.j2"
    custom.write_text(template)
    assert main(["--output", str(out), "--template", str(custom), str(image)]) == 1
    assert out.read_text() == before
    assert os.listdir(out.parent) == ["qcow2.prom"]


def test_a_special_file_as_template_fails_at_once(tmp_path: Path) -> None:
    """A FIFO as --template blocked the run forever on open(), /dev/zero read until memory ran
    out: each is refused at once, naming the template, and the previous file is kept."""
    out, before, image = _previous_good(tmp_path)
    fifo = tmp_path / "fifo.j2"
    os.mkfifo(fifo)
    for template in (str(fifo), "/dev/zero", str(tmp_path)):
        proc = subprocess.run([BIN / "qcow2-textfile", "--no-live", "--output", str(out),
                               "--template", template, str(image)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == f"qcow2-textfile: error: template {template}: not a regular " \
            "file or block device\n"
        assert out.read_text() == before


def test_custom_template(tmp_path: Path) -> None:
    image = make_image(tmp_path / "t.qcow2", "16M")
    custom = tmp_path / "headroom.j2"
    custom.write_text(
        "{% for f in families if f.name == 'qcow2_headroom_bytes' %}"
        "# TYPE {{ f.name }} {{ f.type }}\n"
        "{% for m in f.metrics %}{{ f.name }}{{ m.labels | labels }} {{ m.value | value }}\n"
        "{% endfor %}{% endfor %}"
    )
    out = tmp_path / "h.prom"
    assert main(["--output", str(out), "--template", str(custom), str(image)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "# TYPE qcow2_headroom_bytes gauge"
    assert lines[1].startswith(f'qcow2_headroom_bytes{{path="{image}"}} ')
    assert len(lines) == 2


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 64  # --output is required
    assert "the following arguments are required: -o/--output" in capsys.readouterr().err
    assert main(["--output", str(tmp_path / "x.prom")]) == 64  # no targets
    assert main(["--output", str(tmp_path / "missing-dir" / "x.prom"), str(tmp_path)]) == 1
    # A typo names the typo, not a missing --output.
    assert main(["--otput", "-", str(tmp_path)]) == 64
    err = capsys.readouterr().err
    assert "unrecognized arguments: --otput" in err and "required" not in err
    # A directory as --output: said plainly, before any work, with no temporary name.
    assert main(["--output", str(tmp_path), str(tmp_path)]) == 64
    err = capsys.readouterr().err
    assert f"--output {tmp_path} is a directory: give the file to write in it, e.g. " \
        f"{tmp_path}/qcow2.prom" in err
    assert "warning" not in err and os.listdir(tmp_path) == []


def test_special_files_as_output_are_refused_not_replaced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rename() replaces whatever the name holds: `--output /dev/full` (or /dev/null) as root
    left the host with a regular file there. A device, a FIFO, a link to one and the names of
    the run's own descriptors are a bad command line, and stay as they were."""
    image = make_image(tmp_path / "a.qcow2", "16M")
    directory = tmp_path / "out"
    directory.mkdir()
    device = directory / "null.prom"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    fifo = directory / "fifo.prom"
    os.mkfifo(fifo)
    link = directory / "link.prom"
    link.symlink_to(device)
    for output in (device, fifo, link):
        assert main(["--no-live", "--output", str(output), str(image)]) == 64, output
        assert f"--output {output} is not a regular file" in capsys.readouterr().err
    assert stat.S_ISCHR(device.stat().st_mode) and stat.S_ISFIFO(fifo.lstat().st_mode)
    assert link.is_symlink() and sorted(os.listdir(directory)) == [
        "fifo.prom", "link.prom", "null.prom"]
    # Asked of the rule alone: a run that got past it would replace the host's /dev/stdout.
    for output in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        assert "use --output - for stdout" in (textfile._output_problem(output) or ""), output


def test_shipped_template_is_package_data() -> None:
    assert textfile.TEMPLATE_PACKAGE_PATH.is_file()
    text = (HERE.parent / "pyproject.toml").read_text()
    assert '"qcow2_monitor.node_exporter_textfile" = ["templates/*.j2"' in text


# --- a real node_exporter ----------------------------------------------------------------------


def test_node_exporter_serves_every_series(tmp_path: Path) -> None:
    images = _images(tmp_path / "img")
    junk = tmp_path / "img" / "junk.qcow2"
    junk.write_bytes(b"junk" * 100)
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    out = textfiles / "qcow2.prom"
    assert main(["--output", str(out), "--chain", "--check", str(tmp_path / "img"),
                 str(junk)]) == 0
    ours = series_of(out.read_text(encoding="utf-8"))
    assert len(ours) > 60
    with node_exporter(textfiles, tmp_path / "ne") as exporter:
        scraped = series_of(exporter.scrape())
        assert scraped[("node_textfile_scrape_error", frozenset())] == 0
        missing = {key for key in ours if key not in scraped}
        assert not missing, sorted(missing)[:5]
        assert {key: scraped[key] for key in ours} == ours
        for image in images[:2]:
            usage = analyze_usage(str(image), chain=False).usage
            assert usage is not None
            labels = frozenset({("path", str(image))})
            assert scraped[("qcow2_image_end_offset_bytes", labels)] == usage.image_end_offset
            assert scraped[("qcow2_virtual_size_bytes", labels)] == usage.virtual_size
        junk_labels = frozenset({("path", str(junk))})
        assert scraped[("qcow2_scrape_error", junk_labels)] == 1
        assert scraped[("qcow2_health", junk_labels)] == 3  # could not look: unknown
        assert scraped[("qcow2_health_reason", junk_labels | {("rule", "unknown")})] == 3
        mounts = [labels for name, labels in scraped if name == "qcow2_filesystem_size_bytes"]
        assert len(mounts) == 1  # every image of the test lives on one filesystem

        # Control: the same file without its final newline is refused by node_exporter, so
        # the assertions above can fail.
        out.write_text(out.read_text(encoding="utf-8").rstrip("\n"), encoding="utf-8")
        scraped = series_of(exporter.scrape())
        assert scraped[("node_textfile_scrape_error", frozenset())] == 1
        assert not any(name.startswith("qcow2_") for name, _ in scraped)


# --- alerting rules ----------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    run([require_binary("promtool"), "check", "rules", str(PACKAGE / "qcow2.rules.yml")])


def test_promtool_test_rules(tmp_path: Path) -> None:
    run([require_binary("promtool"), "test", "rules", "qcow2.rules.test.yml"], cwd=PACKAGE)
    # Control: a test file expecting an alert that must not fire makes promtool fail.
    for name in ("qcow2.rules.yml", "qcow2.rules.test.yml"):
        shutil.copy(PACKAGE / name, tmp_path / name)
    mutated = tmp_path / "qcow2.rules.test.yml"
    text = mutated.read_text()
    assert "path: /img/idle" in text
    mutated.write_text(text.replace("path: /img/idle", "path: /img/busy", 1))
    proc = subprocess.run([require_binary("promtool"), "test", "rules", mutated.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


# --- many images -------------------------------------------------------------------------------


def test_500_images_in_one_run(tmp_path: Path) -> None:
    from work import work_of

    source = make_image(tmp_path / "src.qcow2", "16M", write=["write 0 64k"])
    images = tmp_path / "many"
    images.mkdir()
    for index in range(500):
        shutil.copyfile(source, images / f"vm{index:03}.qcow2")
    out = tmp_path / "qcow2.prom"
    argv = ["--output", str(out), "--quiet", str(images)]
    assert main(argv) == 0  # imports and caches: only the per-image work is counted below
    work = work_of(main, argv, call_limit=500 * 4_000)
    series = series_of(out.read_text())
    assert sum(1 for name, _ in series if name == "qcow2_scrape_error") == 500
    # Counted, not timed: about 1,900 calls and 3 reads per image here (0.6 s of CPU). A
    # regression to per-image imports (tens of thousands of calls each) or to reading an
    # image's tables again would exceed these bounds.
    assert work.calls <= 500 * 4_000, work
    assert work.reads <= 500 * 4 and work.bytes_read <= 500 * 2 * source.stat().st_size, work
