"""qcow2-textfile: golden output, validation, atomic replacement, promtool, a real node_exporter."""

from __future__ import annotations

import math
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import sample_collection

from qcow2_monitor.collectors.report.usage import analyze_usage
from qcow2_monitor.node_exporter_textfile import qcow2_textfile as textfile
from qcow2_monitor.node_exporter_textfile.qcow2_textfile import (
    InvalidOutput,
    escape_help,
    escape_label_value,
    format_value,
    load_template,
    main,
    render,
    validate,
)

from daemons import make_image, node_exporter, require_binary, run

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
    assert validate(text) == 54  # 45 figures (paused of 2 images), end_offset_bytes of 2
    # images, 4 health, 3 reasons


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


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("# TYPE a gauge\na 1", "newline"),
        ("# TYPE a gauge\na 1\na 2\n", "duplicate series"),
        ('# TYPE a gauge\na{x="1"} 1\na{x="1"} 2\n', "duplicate series"),
        ("# TYPE a gauge\na 1 1700000000000\n", "timestamp"),
        ("# HELP a x\n# HELP a y\na 1\n", "given twice"),
        ("# TYPE a gauge\n# TYPE a gauge\na 1\n", "given twice"),
        ("a{x=1} 1\n", "does not parse"),
        ("a 1 2 3 4\n", "timestamp"),
        ("a 1x\n", "does not parse"),
    ],
)
def test_validate_rejects_what_node_exporter_would_drop(text: str, reason: str) -> None:
    with pytest.raises(InvalidOutput, match=reason):
        validate(text)


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


def test_usage_errors(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 64  # --output is required
    assert main(["--output", str(tmp_path / "x.prom")]) == 64  # no targets
    assert main(["--output", str(tmp_path / "missing-dir" / "x.prom"), str(tmp_path)]) == 1


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
    source = make_image(tmp_path / "src.qcow2", "16M", write=["write 0 64k"])
    images = tmp_path / "many"
    images.mkdir()
    for index in range(500):
        shutil.copyfile(source, images / f"vm{index:03}.qcow2")
    out = tmp_path / "qcow2.prom"
    started = time.monotonic()
    assert main(["--output", str(out), "--quiet", str(images)]) == 0
    elapsed = time.monotonic() - started
    series = series_of(out.read_text())
    assert sum(1 for name, _ in series if name == "qcow2_scrape_error") == 500
    # Generous bound: about 0.6 s here; a regression to per-image imports or re-parsing
    # would take far longer.
    assert elapsed < 10, elapsed
