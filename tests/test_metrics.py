"""The neutral metric model: names, units, types, labels; collect() on real images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qcow2_monitor.collectors.common.errors import IO_ERROR, NOT_QCOW2, Qcow2Error
from qcow2_monitor.collectors.common.record import replace
from qcow2_monitor.collectors.common.units import parse_size
from qcow2_monitor.collectors.report import collect as collecting
from qcow2_monitor.collectors.report import usage as usage_module
from qcow2_monitor.collectors.report.collect import collect, judge
from qcow2_monitor.collectors.report.metrics import (
    INFO_METRIC,
    METRICS,
    collection_metrics,
    failure_line,
    filesystem_metrics,
    filesystems,
    image_metrics,
    info_labels,
)
from qcow2_monitor.collectors.report.model import (
    RUNNING_PROCESSES,
    CheckResult,
    Collection,
    Container,
    ContainerKind,
    EndOffsetSource,
    Extension,
    Growth,
    ImageRecord,
    ImageUsage,
    LayerStatus,
    LiveSource,
    Pause,
    PauseReason,
)
from qcow2_monitor.collectors.report.usage import analyze_usage

from daemons import make_image, require_binary, run
from tree import REPO

# --- hand-built model objects, shared with the adapters' golden tests --------------------------

GIB = 2**30
AWKWARD_PATH = '/var/lib/images/a b,c=d "q\\ ü.qcow2'


def sample_usage(filename: str, **changes: object) -> ImageUsage:
    fields: dict[str, object] = dict(
        filename=filename,
        image_end_offset=327680,
        image_end_offset_source=EndOffsetSource.REFCOUNTS,
        container=Container(
            kind=ContainerKind.FILE,
            size=10737418240,
            headroom=10737090560,
            length=327680,
            allocated_bytes=266240,
        ),
        usage_ratio=327680 / 10737418240,
        fully_allocated_size=1074135040,
        virtual_size=1073741824,
        cluster_size=65536,
        qcow_version=3,
        in_use=False,
        dirty=False,
        corrupt=False,
        lazy_refcounts=False,
        refcounts_trusted=True,
        encrypted=False,
        backing_filename="base.qcow2",
        backing_format="qcow2",
        external_data_file=None,
        snapshots=1,
        bitmaps=0,
    )
    fields.update(changes)
    return ImageUsage(**fields)  # type: ignore[arg-type]


def sample_check(filename: str) -> CheckResult:
    return CheckResult(
        filename=filename,
        check_errors=0,
        corruptions=0,
        leaks=2,
        image_end_offset=327680,
        total_clusters=16384,
        allocated_clusters=3,
        fragmented_clusters=1,
        compressed_clusters=0,
    )


def sample_collection() -> Collection:
    """Four records covering every shape: full (+check), block layer, failed target, protocol."""
    top = ImageRecord(
        target="/var/lib/images",
        path=AWKWARD_PATH,
        depth=0,
        usage=sample_usage(AWKWARD_PATH),
        check=sample_check(AWKWARD_PATH),
        error=None,
    )
    base = ImageRecord(
        target="/var/lib/images",
        path="/dev/vg0/base",
        depth=1,
        usage=sample_usage(
            "/dev/vg0/base",
            container=Container(
                kind=ContainerKind.BLOCK,
                size=1073741824,
                headroom=0,
                length=1073741824,
                allocated_bytes=None,
            ),
            image_end_offset=1073741824,
            usage_ratio=1.0,
            backing_filename="nbd://backup.example:10809/base",
            backing_format=None,
            in_use=True,
            dirty=True,
            lazy_refcounts=True,
            refcounts_trusted=False,
            snapshots=0,
            bitmaps=2,
        ),
        check=None,
        error=None,
        status=LayerStatus.OK,
        name="/dev/vg0/base",
    )
    proto = ImageRecord(
        target="/var/lib/images",
        path=None,
        depth=2,
        usage=None,
        check=None,
        error=None,
        status=LayerStatus.PROTOCOL,
        name="nbd://backup.example:10809/base",
    )
    failed = ImageRecord(
        target="/srv/*.qcow2",
        path=None,
        depth=0,
        usage=None,
        check=None,
        error=Qcow2Error(
            "no file matches this pattern", structure="target", kind=IO_ERROR,
            filename="/srv/*.qcow2",
        ),
    )
    records = tuple(judge(record) for record in (top, base, proto, failed))
    return Collection(records, duration_seconds=0.25, timestamp=1700000000.5)


# --- the model ----------------------------------------------------------------------------------


def test_metric_names_carry_their_unit_suffix() -> None:
    suffix = {"bytes": "_bytes", "ratio": "_ratio", "seconds": "_seconds"}
    for name, spec in METRICS.items():
        if spec.unit:
            assert name.endswith(suffix[spec.unit]), name
        else:
            assert not name.endswith(tuple(suffix.values())), name
        assert spec.help and "\n" not in spec.help
        assert spec.type in ("gauge", "counter")


def test_image_metrics_full_record() -> None:
    top = sample_collection().records[0]
    by_name = {m.name: m for m in image_metrics(top)}
    assert list(by_name) == [
        "image_end_offset_bytes", "end_offset_bytes", "container_size_bytes", "headroom_bytes",
        "usage_ratio", "fully_allocated_size_bytes", "virtual_size_bytes", "allocated_bytes",
        "in_use", "snapshots", "bitmaps", "check_errors", "corruptions", "leaks",
        "allocated_clusters", "fragmented_clusters", "compressed_clusters", "unconfirmed",
        "health", "health_reason", "scrape_error", "image_info",
    ]
    identity = (("path", AWKWARD_PATH),)  # one disk, one series: nothing but its path
    for metric in by_name.values():
        if metric.name == "health_reason":
            assert metric.labels == (*identity, ("rule", "leaks"))
        elif metric.name != INFO_METRIC:
            assert metric.labels == identity
        assert metric.unit == METRICS[metric.name].unit
        assert metric.help == METRICS[metric.name].help
    assert by_name["image_end_offset_bytes"].value == 327680
    assert by_name["headroom_bytes"].value == 10737090560
    assert by_name["leaks"].value == 2
    assert by_name["scrape_error"].value == 0
    assert by_name["health"].value == 1  # leaks: WARNING
    assert by_name["health_reason"].value == 1
    assert dict(by_name[INFO_METRIC].labels) == {
        "backing_file": "base.qcow2",
        "backing_format": "qcow2",
        "cluster_size": "65536",
        "container": "file",
        "depth": "0",
        "encrypted": "false",
        "end_offset_source": "refcounts",
        "filename": 'a b,c=d "q\\ ü.qcow2',
        "lazy_refcounts": "false",
        "name": AWKWARD_PATH,
        "path": AWKWARD_PATH,
        "qcow_version": "3",
        "status": "ok",
    }


def test_value_types_never_change_between_records() -> None:
    """A field's type is fixed by its first write in InfluxDB: ratio 1.0 stays float, etc."""
    types: dict[str, set[type]] = {}
    for record in sample_collection().records:
        for metric in image_metrics(record):
            types.setdefault(metric.name, set()).add(type(metric.value))
    assert types["usage_ratio"] == {float}  # 1.0 for the full block device included
    # Flags are integers 0/1: InfluxQL cannot aggregate booleans.
    assert types["in_use"] == {int}
    for name in ("image_end_offset_bytes", "snapshots", "scrape_error", "leaks", "image_info"):
        assert types[name] == {int}, name
    for name, seen in types.items():
        assert seen == {METRICS[name].value_type}, name


def test_block_layer_has_no_allocated_bytes_and_keeps_backing_name() -> None:
    base = sample_collection().records[1]
    names = [m.name for m in image_metrics(base)]
    assert "allocated_bytes" not in names
    assert "check_errors" not in names
    info = dict(info_labels(base))
    assert info["backing_name"] == "/dev/vg0/base"
    assert info["container"] == "block"
    assert info["backing_file"] == "nbd://backup.example:10809/base"
    assert "backing_format" not in info  # None: never an empty label value


# The figures every disk has (usage read), then those that only some disks have.
_ALWAYS = ("image_end_offset_bytes", "end_offset_bytes", "container_size_bytes",
           "headroom_bytes", "usage_ratio", "fully_allocated_size_bytes", "virtual_size_bytes",
           "in_use", "snapshots", "bitmaps", "health", "scrape_error", "image_info")
_CHECK = ("check_errors", "corruptions", "leaks", "allocated_clusters", "fragmented_clusters",
          "compressed_clusters", "unconfirmed")
_OPTIONAL = ("live_end_offset_bytes", "free_below_end_bytes", "growth_bytes_per_second",
             "time_to_full_seconds")


def worst_case(kind: ContainerKind) -> ImageRecord:
    """A disk with every optional figure: a live source, free bytes below the end, --check, a
    growth history, and the allocated bytes of a file or the extension advice of a device."""
    path = f"/worst/{kind}"
    block = kind == ContainerKind.BLOCK
    container = Container(kind=kind, size=GIB, headroom=GIB // 8, length=GIB,
                          allocated_bytes=None if block else GIB // 2, used=GIB - GIB // 8)
    usage = sample_usage(
        path, container=container, usage_ratio=container.usage_ratio,
        live_end_offset=GIB - GIB // 8, free_below_end=65536, in_use=True, dirty=True,
        corrupt=True, lazy_refcounts=True, refcounts_trusted=False,
        pause=Pause("vm1", "vda", PauseReason.NOSPACE),
        growth=Growth(bytes_per_second=1000.0, time_to_full=GIB / 8 / 1000, samples=10,
                      span=3600.0),
        extension=Extension(watermark=GIB // 2, chunk=GIB, extend_by=GIB, extend_to=2 * GIB,
                            granularity=4 << 20, volume="vg0/worst",
                            command="lvextend -L +1G vg0/worst") if block else None,
    )
    return judge(ImageRecord(path, path, 0, usage, sample_check(path), None))


@pytest.mark.parametrize("kind", [ContainerKind.FILE, ContainerKind.BLOCK])
def test_worst_case_disk_has_at_most_25_series(kind: ContainerKind) -> None:
    """Issue 22: each fact once, at most 25 series per disk. Counted by hand (as in the comment
    above collectors/report/metrics.py's METRICS): 13 always, 7 with --check, 4 optional (live
    end, free below the end, growth, time to full), plus allocated_bytes for a file or
    extend_by_bytes for a device: 13 + 7 + 4 + 1 = 25 either way; health_reason apart (one per
    applying rule)."""
    assert (len(_ALWAYS), len(_CHECK), len(_OPTIONAL)) == (13, 7, 4)
    record = worst_case(kind)
    names = [m.name for m in image_metrics(record) if m.name != "health_reason"]
    own = "extend_by_bytes" if kind == ContainerKind.BLOCK else "allocated_bytes"
    assert sorted(names) == sorted((*_ALWAYS, *_CHECK, *_OPTIONAL, own))
    assert len(names) == 25
    # The rules behind the removed flags do export them, one series each.
    rules = {dict(m.labels)["rule"] for m in image_metrics(record) if m.name == "health_reason"}
    assert {"corrupt", "dirty-in-use", "paused-nospace"} <= rules
    [info] = [m for m in image_metrics(record) if m.name == "image_info"]
    assert dict(info.labels)["pause_reason"] == "nospace"


def test_every_per_disk_metric_is_in_the_worst_case() -> None:
    """A new per-disk figure must join the worst case (and its hand count) above."""
    run_wide = {"collector_duration_seconds", "last_success_timestamp_seconds", "images"}
    per_disk = {name for name in METRICS
                if not name.startswith("filesystem_") and name not in run_wide}
    seen = {m.name for kind in (ContainerKind.FILE, ContainerKind.BLOCK)
            for m in image_metrics(worst_case(kind))}
    assert seen == per_disk
    for gone in ("refcounts_trusted", "total_clusters", "extend_to_bytes", "dirty", "corrupt",
                 "paused"):
        assert gone not in METRICS, gone


def test_failed_and_protocol_records() -> None:
    _, _, proto, failed = sample_collection().records
    assert [(m.name, m.value) for m in image_metrics(failed)] == [
        ("health", 3),  # could not look: UNKNOWN
        ("health_reason", 3),
        ("scrape_error", 1),
        ("image_info", 1),
    ]
    assert image_metrics(failed)[0].labels == (("path", "/srv/*.qcow2"),)
    assert dict(info_labels(failed))["status"] == "error"
    assert failure_line(failed) == "/srv/*.qcow2: target: no file matches this pattern"
    assert [(m.name, m.value) for m in image_metrics(proto)] == [
        ("health", 0),
        ("scrape_error", 0),
        ("image_info", 1),
    ]
    assert dict(info_labels(proto)) == {
        "backing_name": "nbd://backup.example:10809/base",
        "depth": "2",
        "name": "nbd://backup.example:10809/base",
        "path": "nbd://backup.example:10809/base",
        "status": "protocol",
    }


def test_failure_line_is_one_line_and_label_values_printable() -> None:
    bad_name = os.fsdecode(b"/img/new\nline\xff.qcow2")  # undecodable byte -> surrogate
    record = ImageRecord(
        bad_name, bad_name, 0, None, None,
        Qcow2Error("not a qcow2 image", structure="header", kind=NOT_QCOW2, filename=bad_name),
    )
    text = failure_line(record)
    assert text == "/img/new\\x0aline\\xff.qcow2: header: not a qcow2 image"
    for metric in image_metrics(record):
        for _, value in metric.labels:
            value.encode("utf-8")  # raises on a lone surrogate
    assert dict(image_metrics(record)[0].labels)["path"] == "/img/new\\x0aline\\xff.qcow2"


def test_collection_metrics() -> None:
    got = [(m.name, m.value, m.unit, m.labels) for m in collection_metrics(sample_collection())]
    assert got == [
        ("collector_duration_seconds", 0.25, "seconds", ()),
        ("last_success_timestamp_seconds", 1700000000.5, "seconds", ()),
        ("images", 4, "", ()),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        ("512M", 512 * 2**20),
        ("512m", 512 * 2**20),
        ("10GiB", 10 * 2**30),
        ("10G", 10 * 2**30),
        ("10GB", 10 * 2**30),
        ("1.5T", 3 * 2**39),
        ("1K", 1024),
        ("0", 0),
        (" 2 Ki ", 2048),
        ("100B", 100),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "1X", "1 GiBB", "1e3", "iB", "1..5G", "nan"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_metrics_module_stays_light() -> None:
    """The Nagios plugin imports collectors.metrics on every check."""
    code = (
        "import sys, qcow2_monitor.collectors.report.metrics\n"
        "heavy = {'numpy', 'jinja2', 'prometheus_client', 'psutil',"
        " 'qcow2_monitor.collectors.report.usage'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# --- collect() on real images ------------------------------------------------------------------


def _qemu_check(path: Path) -> dict[str, object]:
    proc = subprocess.run(
        [require_binary("qemu-img"), "check", "--output=json", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_collect_matches_core_and_qemu(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "32M", write=["write -P 1 0 1M"])
    top = make_image(tmp_path / "top img.qcow2", backing=base, write=["write -P 2 4M 2M"])
    missing = tmp_path / "nope.qcow2"
    collection = collect([str(top), str(missing)], chain=True)
    assert [(r.label_path, r.depth, r.error is None) for r in collection.records] == [
        (str(top), 0, True),
        (str(base), 1, True),
        (str(missing), 0, False),
    ]
    assert collection.duration_seconds > 0
    for record in collection.records[:2]:
        assert record.path is not None
        core = analyze_usage(record.path, chain=False).usage
        assert core is not None and record.usage is not None
        # Free space of the shared filesystem moves between the two calls: compare the rest.
        assert record.usage == replace(core, container=record.usage.container,
                                       usage_ratio=record.usage.usage_ratio)
        assert record.usage.container.length == core.container.length
        values = {m.name: m.value for m in image_metrics(record)}
        assert values["image_end_offset_bytes"] == _qemu_check(Path(record.path))[
            "image-end-offset"]
        assert values["virtual_size_bytes"] == 32 * 2**20
        assert values["scrape_error"] == 0
    assert dict(info_labels(collection.records[1]))["backing_name"] == str(base)
    failed = collection.records[2]
    assert failed.error is not None and failed.error.kind == IO_ERROR


def test_collect_reports_each_file_once(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "16M")
    one = make_image(tmp_path / "one.qcow2", backing=base)
    two = make_image(tmp_path / "two.qcow2", backing=base)
    link = tmp_path / "link.qcow2"
    link.symlink_to(one)
    collection = collect([str(one), str(two), str(link), str(base)], chain=True)
    assert [(r.path, r.depth) for r in collection.records] == [
        (str(one), 0),
        (str(base), 1),
        (str(two), 0),
    ]


def test_collect_missing_and_looping_layers(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "16M")
    top = make_image(tmp_path / "top.qcow2", backing=base)
    base.unlink()
    a = make_image(tmp_path / "a.qcow2", "16M")
    b = make_image(tmp_path / "b.qcow2", backing=a)
    # a -> b -> a: rebase a onto b without touching data (-u).
    run([require_binary("qemu-img"), "rebase", "-u", "-F", "qcow2", "-b", str(b), str(a)])
    records = collect([str(top), str(a)], chain=True).records
    by_key = {(r.label_path, r.depth): r for r in records}
    missing = by_key[(str(base), 1)]
    assert missing.status == LayerStatus.MISSING and missing.error is not None
    assert "not found" in str(missing.error)
    assert by_key[(str(a), 0)].error is None
    assert by_key[(str(b), 1)].error is None
    loop = by_key[(str(a), 2)]  # a again, below b: reported although a was reported at depth 0
    assert loop.error is not None and "loops" in str(loop.error)
    # One series per disk: a's own series says the loop (status backing-loop, rule backing).
    assert image_metrics(loop) == []
    top_a = {m.name: m for m in image_metrics(by_key[(str(a), 0)])}
    assert dict(top_a["image_info"].labels)["status"] == "backing-loop"
    assert top_a["health"].value == 2 and top_a["scrape_error"].value == 0


def test_collect_turns_unexpected_exceptions_into_record_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = make_image(tmp_path / "good.qcow2", "16M")
    bad = make_image(tmp_path / "bad.qcow2", "16M")

    def analyze(path: str, **kwargs: object) -> object:
        if path == str(bad):
            raise RuntimeError("boom")
        return analyze_usage(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(collecting, "_analyze_fn", lambda: analyze)
    records = collect([str(bad), str(good)]).records
    assert records[0].error is not None and "RuntimeError: boom" in str(records[0].error)
    assert records[1].error is None and records[1].usage is not None


def test_a_bug_on_one_layer_costs_only_that_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """collect()'s guard shields each layer's work: the top keeps its figures, the layer whose
    analysis met a bug reports it (an internal error, never a traceback), and an OSError that
    escaped is an io-error."""
    base = make_image(tmp_path / "base.qcow2", "16M")
    top = make_image(tmp_path / "top.qcow2", backing=base)
    real = usage_module.image_usage
    planted: list[BaseException] = [RuntimeError("boom")]

    def image_usage(image: Any, live: Any = None) -> Any:
        if image.filename == str(base):
            raise planted[0]
        return real(image, live)

    monkeypatch.setattr(usage_module, "image_usage", image_usage)
    top_record, layer = collect([str(top)], chain=True).records
    assert top_record.error is None and top_record.usage is not None
    assert layer.status == LayerStatus.ERROR and layer.usage is None and layer.error is not None
    assert (layer.error.kind, layer.error.filename) == ("internal-error", str(base))
    assert "RuntimeError: boom" in layer.error.message
    assert top_record.broken_below is not None  # qemu could not open it either: said above
    planted[0] = OSError(5, "Input/output error")
    layer = collect([str(top)], chain=True).records[1]
    assert layer.error is not None and (layer.error.kind, layer.error.message) == (
        "io-error", "Input/output error")


def test_collect_with_check(tmp_path: Path) -> None:
    # Written out of guest order, so that some clusters are fragmented.
    image = make_image(tmp_path / "c.qcow2", "16M",
                       write=["write 8M 64k", "write 0 1M", "write 4M 64k"])
    not_qcow2 = tmp_path / "raw.img"
    not_qcow2.write_bytes(b"\0" * 65536)
    records = collect([str(image), str(not_qcow2)], check=True).records
    assert records[0].check is not None
    expected = _qemu_check(image)
    values = {m.name: m.value for m in image_metrics(records[0])}
    assert values["check_errors"] == expected.get("check-errors", 0)
    assert values["corruptions"] == expected.get("corruptions", 0)
    assert values["leaks"] == expected.get("leaks", 0)
    # Not a series (virtual size / cluster size, both exported), still qemu's figure.
    assert "total_clusters" not in values
    assert records[0].check.total_clusters == expected["total-clusters"]
    assert values["allocated_clusters"] == expected["allocated-clusters"]
    assert values["fragmented_clusters"] == expected["fragmented-clusters"]  # present: > 0
    assert values["compressed_clusters"] == expected.get("compressed-clusters", 0)
    assert records[1].error is not None and records[1].check is None


def test_uninspectable_qemu_processes_have_a_non_path_identity_and_are_no_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--running as a user who may not inspect some qemu processes: one failed record, named
    "(running qemu processes)" in every adapter, not counted as an image."""
    from qcow2_monitor.collectors.host.discovery import RunningScan
    from qcow2_monitor.nagios.check_qcow2 import verdict
    from qcow2_monitor.nagios.thresholds import Thresholds
    from qcow2_monitor.node_exporter_textfile.qcow2_textfile import load_template
    from qcow2_monitor.node_exporter_textfile.qcow2_textfile import render as prom_render
    from qcow2_monitor.telegraf.qcow2_telegraf import render as lp_render

    image = tmp_path / "seen.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    monkeypatch.setattr(collecting, "scan_running",
                        lambda *args: RunningScan([str(image)], [4242, 4243]))
    collection = collect([], running=True)
    assert [r.label_path for r in collection.records] == [str(image), RUNNING_PROCESSES]
    record = collection.records[1]
    assert not record.is_image and record.health.state == 3
    assert "2 qemu processes not inspectable by this user (pid 4242, 4243)" in str(record.error)

    prom = prom_render(collection, load_template())
    assert 'qcow2_scrape_error{path="(running qemu processes)"} 1' in prom
    assert "qcow2_images 1" in prom.splitlines()
    points = lp_render(collection)[0].splitlines()
    assert points[1].startswith("qcow2,path=(running\\ qemu\\ processes) ")
    assert "scrape_error=1i" in points[1]
    state, text = verdict(collection, Thresholds())
    # The error names the processes already: no path before it, and no image counted.
    assert state == 3
    assert text.startswith("QCOW2 UNKNOWN - running qemu processes: 2 qemu processes not "
                           "inspectable"), text

    monkeypatch.setattr(collecting, "scan_running", lambda *args: RunningScan([], [4242]))
    [alone] = collect([], running=True).records
    assert "1 qemu process not inspectable" in str(alone.error)


def test_filesystem_sums_use_the_live_aware_end_offset_of_the_images_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """filesystem_end_offset_bytes sums end_offset (live when ahead), over the run's images."""
    from qcow2_monitor.collectors.host.live import LiveView
    from qcow2_monitor.collectors.report.model import LiveDisk

    images = [tmp_path / f"{n}.qcow2" for n in range(3)]
    for image in images:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"],
                       check=True)
    view = LiveView()
    view.add(LiveDisk(str(images[0]), 7 << 20, "qemu 1", "#block1", LiveSource.QMP))

    class Pending:
        def wait(self) -> LiveView:
            return view

    monkeypatch.setattr(collecting, "start_live", lambda *args: Pending())
    collection = collect([str(image) for image in images])
    ends = [r.usage.end_offset for r in collection.records if r.usage is not None]
    on_disk = [r.usage.image_end_offset for r in collection.records if r.usage is not None]
    assert ends[0] == 7 << 20 > on_disk[0] and ends[1:] == on_disk[1:]
    (fs,) = filesystems(collection)
    assert fs.end_offsets == sum(ends)
    values = {m.name: m.value for m in filesystem_metrics(fs)}
    assert values["filesystem_end_offset_bytes"] == sum(ends)
    assert "filesystem_image_end_offset_bytes" not in values
    # The sums depend on the targets: one image of the three is a third of the virtual sizes.
    (one,) = filesystems(collect([str(images[1])]))
    assert (one.images, one.virtual_sizes * 3) == (1, fs.virtual_sizes)
    for name in ("filesystem_end_offset_bytes", "filesystem_virtual_size_bytes",
                 "filesystem_overcommit_ratio"):
        assert "Covers only the images this run was given" in METRICS[name].help
