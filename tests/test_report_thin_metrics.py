"""collectors/report/thin_metrics.py: the thin-provisioning figures an image's usage has, each
declared once in the catalogue, from real images (qemu-io discards and a killed writer) and
from growth and extension advice built in the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcow2_monitor.collectors.report.metrics import METRICS
from qcow2_monitor.collectors.report.model import Extension, Growth, ImageUsage
from qcow2_monitor.collectors.report.thin_metrics import THIN_METRICS, thin_values
from qcow2_monitor.collectors.report.usage import analyze_image

from corpus import qemu_io
from daemons import make_image
from damage import get_refcount, read_header

CLUSTER = 65536


def create(path: Path, *options: str) -> Path:
    make_image(path, "1G", options=[f"cluster_size={CLUSTER}", *options])
    return path


def io(path: Path, *commands: str, killed: bool = False) -> None:
    qemu_io(path, *commands, allowed_returncodes=(-9,) if killed else (0,))


def zero_refcount_bytes_below_end(path: Path) -> int:
    """Clusters below the last cluster with a refcount, whose refcount is 0 (tests' reader)."""
    clusters = path.stat().st_size // CLUSTER
    counts = [get_refcount(path, i) for i in range(clusters)]
    end = max(i for i, count in enumerate(counts) if count) + 1
    return sum(1 for count in counts[:end] if count == 0) * CLUSTER


def with_thin_figures(usage: ImageUsage, growth: Growth | None,
                      extension: Extension | None) -> ImageUsage:
    """`usage` with the growth and extension advice the thin decision adds later."""
    u = usage
    return ImageUsage(
        filename=u.filename, image_end_offset=u.image_end_offset,
        image_end_offset_source=u.image_end_offset_source, container=u.container,
        usage_ratio=u.usage_ratio, fully_allocated_size=u.fully_allocated_size,
        virtual_size=u.virtual_size, cluster_size=u.cluster_size, qcow_version=u.qcow_version,
        in_use=u.in_use, dirty=u.dirty, corrupt=u.corrupt, lazy_refcounts=u.lazy_refcounts,
        refcounts_trusted=u.refcounts_trusted, encrypted=u.encrypted,
        backing_filename=u.backing_filename, backing_format=u.backing_format,
        external_data_file=u.external_data_file, snapshots=u.snapshots, bitmaps=u.bitmaps,
        free_below_end=u.free_below_end, growth=growth, extension=extension)


@pytest.mark.parametrize("discarded", [0, 1, 3])
def test_free_below_end_from_discards(tmp_path: Path, discarded: int,
                                      qemu_tools: object) -> None:
    """Five data clusters written, `discarded` of the first four discarded: qemu sets their
    refcount to 0 and the fifth keeps the end where it was."""
    path = create(tmp_path / "a.qcow2")
    io(path, f"write -P 0x5a 0 {5 * CLUSTER}",
       *(f"discard {i * CLUSTER} {CLUSTER}" for i in range(discarded)))
    expected = zero_refcount_bytes_below_end(path)
    assert expected == discarded * CLUSTER
    usage = analyze_image(str(path))
    assert thin_values(usage) == [("free_below_end_bytes", discarded * CLUSTER)]


def test_no_figure_while_refcounts_are_untrusted(tmp_path: Path, qemu_tools: object) -> None:
    """A writer with lazy refcounts killed leaves the dirty bit: the on-disk refcounts say
    nothing, so neither does free_below_end_bytes."""
    path = create(tmp_path / "dirty.qcow2", "lazy_refcounts=on")
    io(path, f"write -P 0x5a 0 {2 * CLUSTER}", "sigraise 9", killed=True)
    assert read_header(path)["incompatible_features"] & 1  # the dirty bit, set by qemu
    assert thin_values(analyze_image(str(path))) == []


def test_growth_and_extension_figures(tmp_path: Path, qemu_tools: object) -> None:
    usage = analyze_image(str(create(tmp_path / "a.qcow2")))
    growing = Growth(bytes_per_second=2048.5, time_to_full=3600.25, samples=12, span=7200.0)
    short = Growth(bytes_per_second=None, time_to_full=None, samples=1, span=0.0)
    shrinking = Growth(bytes_per_second=-10.0, time_to_full=None, samples=5, span=3600.0)
    advice = Extension(watermark=512 << 20, chunk=1 << 30, extend_by=1 << 30,
                       extend_to=3 << 30, granularity=4 << 20)
    every = thin_values(with_thin_figures(usage, growing, advice))
    assert every == [
        ("free_below_end_bytes", 0), ("growth_bytes_per_second", 2048.5),
        ("time_to_full_seconds", 3600.25), ("extend_by_bytes", 1 << 30)]
    for name, value in every:  # of the type the catalogue declares
        assert type(value) is THIN_METRICS[name][2], name
    assert thin_values(with_thin_figures(usage, short, None)) == [("free_below_end_bytes", 0)]
    assert thin_values(with_thin_figures(usage, shrinking, None)) == [
        ("free_below_end_bytes", 0), ("growth_bytes_per_second", -10.0)]


def test_catalogue_declares_each_figure_once() -> None:
    """Each name has its unit as suffix (Prometheus' naming rule), a value type, a help text,
    and is exported through the one metrics catalogue with the same declaration."""
    assert list(THIN_METRICS) == ["free_below_end_bytes", "growth_bytes_per_second",
                                  "time_to_full_seconds", "extend_by_bytes"]
    units = {"free_below_end_bytes": "bytes", "growth_bytes_per_second": "",
             "time_to_full_seconds": "seconds", "extend_by_bytes": "bytes"}
    kinds = {"free_below_end_bytes": int, "growth_bytes_per_second": float,
             "time_to_full_seconds": float, "extend_by_bytes": int}
    for name, (unit, text, kind) in THIN_METRICS.items():
        assert (unit, kind) == (units[name], kinds[name]), name
        assert text.endswith(".") and len(text) > 40, name
        spec = METRICS[name]
        assert (spec.unit, spec.help, spec.value_type) == (unit, text, kind), name
