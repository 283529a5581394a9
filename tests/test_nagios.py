"""check_qcow2: ranges, golden outputs on hand-built model objects and on real images, exit codes.

Golden outputs are compared whole (first line, perfdata, long output): a monitoring system
parses every byte of them, and graphs break when a label changes.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from qcow2_monitor.cli.options import policy_from_args
from qcow2_monitor.collectors.common.errors import IO_ERROR, NOT_QCOW2, Qcow2Error
from qcow2_monitor.collectors.common.record import replace
from qcow2_monitor.collectors.common.units import plain_number
from qcow2_monitor.collectors.report.collect import judge
from qcow2_monitor.collectors.report.model import (
    ChainLayer,
    CheckResult,
    Collection,
    Container,
    ContainerKind,
    EndOffsetSource,
    Finding,
    ImageRecord,
    ImageUsage,
    LayerStatus,
)
from qcow2_monitor.nagios import check_qcow2
from qcow2_monitor.nagios.check_qcow2 import clean_label, clean_text, main, percent_text
from qcow2_monitor.nagios.ranges import Range, RangeError

from daemons import holding_open, make_image, own_filesystem, require_binary
from damage import INCOMPAT_CORRUPT, INCOMPAT_DIRTY, OFF_INCOMPATIBLE, patch_u64, read_u64
from nagios_daemons import PLUGIN, REPO, plugin_script

GiB = 1024**3
MiB = 1024**2

# --- ranges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "alerts", "quiet"),
    [
        # The table of the monitoring-plugins guidelines, endpoints inclusive.
        ("10", [-1, 10.5, 11], [0, 5, 10]),
        ("10:", [-1, 9.99], [10, 11, 1e9]),
        ("~:10", [10.01, 11], [-1e9, 0, 10]),
        ("10:20", [9, 21, -1], [10, 15, 20]),
        ("@10:20", [10, 15, 20], [9.99, 20.01]),
        ("80", [80.0001, 100], [0, 80]),
        ("1e3", [1000.5], [1000, 0]),
        ("-5:5", [-6, 6], [-5, 0, 5]),
        ("~:", [], [-1e300, 0, 1e300]),
        ("@~:", [-1e300, 0, 1e300], []),
        ("@5", [0, 5], [-0.1, 5.1]),
        (".5:1.5e1", [0.4, 16], [0.5, 15]),
    ],
)
def test_range_semantics(text: str, alerts: list[float], quiet: list[float]) -> None:
    limit = Range.parse(text)
    assert [value for value in alerts if not limit.alert(value)] == []
    assert [value for value in quiet if limit.alert(value)] == []


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("10", "10"), ("10:", "10:"), ("~:10", "~:10"), ("10:20", "10:20"),
        ("@10:20", "@10:20"), ("1e3", "1000"), ("0:", "0:"), ("0:10", "10"),
        ("~:", "~:"), ("1.50", "1.5"), ("1e-5", "0.00001"), ("@~:0", "@~:0"),
    ],
)
def test_range_canonical_text(text: str, canonical: str) -> None:
    assert str(Range.parse(text)) == canonical
    assert Range.parse(canonical) == Range.parse(text)  # perfdata thresholds reparse alike


@pytest.mark.parametrize(
    "text", ["", " ", "@", ":", "@:", "abc", "10:5", "1:2:3", "inf", "nan", "1e999", "~",
             "~10", "10~", "1,5", "1_000", "--5", "10 :20"],
)
def test_range_rejects(text: str) -> None:
    with pytest.raises(RangeError):
        Range.parse(text)


# The guidelines' grammar as a regular expression, written here from the guidelines: the
# parser (which does without re) must accept exactly what it matches.
GRAMMAR_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
GRAMMAR = rf"(@)?(?:(~|{GRAMMAR_NUMBER})?:)?({GRAMMAR_NUMBER})?"


def test_range_grammar_is_the_guidelines() -> None:
    rng = random.Random(7)
    alphabet = ["1", "0", "9", "\u0663", "\u00b2", ".", "e", "E", "+", "-", "~", ":", "@", " ",
                "x", "_"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
             for _ in range(40000)]
    accepted = 0
    for text in texts:
        match = re.fullmatch(GRAMMAR, text.strip())
        expected = match is not None and (match[2] is not None or match[3] is not None)
        try:
            Range.parse(text)
            parsed = True
        except RangeError as exc:
            parsed = "out of range" in str(exc) or "greater than" in str(exc)
        accepted += expected
        assert parsed == expected, text
    assert accepted > 2000


def test_range_describe() -> None:
    assert Range.parse("90").describe("%") == "> 90%"
    assert Range.parse("10:").describe("%") == "< 10%"
    assert Range.parse("10:20").describe() == "outside 10..20"
    assert Range.parse("@10:20").describe() == "in 10..20"
    assert Range.parse("~:5").describe() == "> 5"


@pytest.mark.parametrize(
    ("value", "text"),
    [(1e-05, "0.00001"), (1e21, "1000000000000000000000"), (0.5, "0.5"), (-3.0, "-3"),
     (80.00011497, "80.00011497"), (100.0, "100"), (2**70, str(2**70))],
)
def test_plain_number_plain_decimals(value: float, text: str) -> None:
    assert plain_number(value) == text
    assert "e" not in plain_number(value).lower()


def test_plain_number_refuses_non_finite() -> None:
    for value in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError):
            plain_number(value)


def test_percent_text_never_prints_the_threshold_it_crossed() -> None:
    assert percent_text(80.00011497) == "80"
    assert percent_text(80.00011497, Range.parse("80")) == "80.0001"
    assert percent_text(80.0, Range.parse("80")) == "80"  # on the endpoint: no alert anyway
    assert percent_text(0.0000196) == "0.00002"
    assert percent_text(0) == "0"


def test_cleaning_of_paths() -> None:
    """The printable rule of every output (collectors/common/text.py), then `|` as `_`."""
    assert clean_text("/a|b\nc\x7fd") == "/a_b\\x0ac\\x7fd"
    assert clean_label("/a|b=c'd e") == "/a_b_c_d e"
    undecodable = os.fsdecode(b"/img/\xff.qcow2")
    assert clean_text(undecodable) == "/img/\\xff.qcow2"


# --- hand-built model objects ---------------------------------------------------------------


def usage(path: str, end: int, size: int, kind: ContainerKind = ContainerKind.BLOCK,
          **fields: Any) -> ImageUsage:
    container = Container(kind=kind, size=size, headroom=size - end, length=size,
                          allocated_bytes=None if kind == ContainerKind.BLOCK else end)
    values: dict[str, Any] = dict(
        filename=path, image_end_offset=end, image_end_offset_source=EndOffsetSource.REFCOUNTS,
        container=container, usage_ratio=end / size, fully_allocated_size=21 * GiB,
        virtual_size=20 * GiB, cluster_size=65536, qcow_version=3, in_use=False, dirty=False,
        corrupt=False, lazy_refcounts=False, refcounts_trusted=True, encrypted=False,
        backing_filename=None, backing_format=None, external_data_file=None, snapshots=0,
        bitmaps=0,
    )
    values.update(fields)
    return ImageUsage(**values)


def record(path: str, image: Optional[ImageUsage] = None, *, error: Optional[Qcow2Error] = None,
           check: Optional[CheckResult] = None, depth: int = 0, target: Optional[str] = None,
           status: str = "ok") -> ImageRecord:
    return ImageRecord(target or path, path, depth, image, check, error, status=status)


A = "/var/lib/images/a.qcow2"
B = "/var/lib/images/b.qcow2"
REC_A = record(A, usage(A, 8 * GiB + 12345, 10 * GiB))  # 80.0001 %
REC_B = record(B, usage(B, int(9.5 * GiB), 10 * GiB))  # 95 %
NOT_Q = record("/x/notq", error=Qcow2Error(
    "not a qcow2 image (bad magic)", structure="header", offset=0, kind=NOT_QCOW2,
    filename="/x/notq"))

PERF_A = (
    "'/var/lib/images/a.qcow2 usage_percent'=80.00011497%;80;90;0;100 "
    "'/var/lib/images/a.qcow2 end_offset_bytes'=8589946937B;;;0;10737418240 "
    "'/var/lib/images/a.qcow2 image_end_offset_bytes'=8589946937B;;;0;10737418240 "
    "'/var/lib/images/a.qcow2 container_size_bytes'=10737418240B;;;0 "
    "'/var/lib/images/a.qcow2 headroom_bytes'=2147471303B;;;0;10737418240"
)
PERF_B = (
    "'/var/lib/images/b.qcow2 usage_percent'=95%;80;90;0;100 "
    "'/var/lib/images/b.qcow2 end_offset_bytes'=10200547328B;;;0;10737418240 "
    "'/var/lib/images/b.qcow2 image_end_offset_bytes'=10200547328B;;;0;10737418240 "
    "'/var/lib/images/b.qcow2 container_size_bytes'=10737418240B;;;0 "
    "'/var/lib/images/b.qcow2 headroom_bytes'=536870912B;;;0;10737418240"
)


def run_main(monkeypatch: pytest.MonkeyPatch, records: list[ImageRecord],
             *argv: str) -> tuple[int, str]:
    """main() on hand-built records, in process (the collector is replaced, nothing else)."""
    def collect(args: argparse.Namespace) -> Collection:
        # As collectors.collect.collect does: every record judged by the options' policy.
        judged = tuple(judge(record, policy_from_args(args)) for record in records)
        return Collection(judged, 0.01, 1_700_000_000.0)

    monkeypatch.setattr(check_qcow2, "_collect", collect)
    out = io.StringIO()
    code = main(["-f", "placeholder", *argv], stdout=out)
    return code, out.getvalue()


def test_golden_ok_single(monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run_main(monkeypatch, [REC_A], "-w", "90", "-c", "95")
    assert code == 0
    assert text == (
        "QCOW2 OK - /var/lib/images/a.qcow2: usage 80%, headroom 2 GiB | "
        + PERF_A.replace(";80;90;", ";90;95;") + "\n"
    )


def test_golden_warning_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run_main(monkeypatch, [REC_A], "-w", "80", "-c", "90")
    assert code == 1
    assert text == (
        f"QCOW2 WARNING - /var/lib/images/a.qcow2: usage 80.0001% > 80% | {PERF_A}\n"
    )


def test_golden_critical_two_images_worst_first(monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run_main(monkeypatch, [REC_A, REC_B], "-w", "80", "-c", "90")
    assert code == 2
    assert text == (
        "QCOW2 CRITICAL - 2 of 2 images: /var/lib/images/b.qcow2: usage 95% > 90%; "
        f"/var/lib/images/a.qcow2: usage 80.0001% > 80% | {PERF_A} {PERF_B}\n"
        "WARNING: /var/lib/images/a.qcow2: usage 80% (end 8 GiB of 10 GiB block container, "
        "headroom 2 GiB); usage 80.0001% > 80%\n"
        "CRITICAL: /var/lib/images/b.qcow2: usage 95% (end 9.5 GiB of 10 GiB block container, "
        "headroom 512 MiB); usage 95% > 90%\n"
    )


def test_golden_headroom(monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run_main(monkeypatch, [REC_A], "--warning-headroom", "4G",
                          "--critical-headroom", "1GiB")
    assert code == 1
    assert text == (
        "QCOW2 WARNING - /var/lib/images/a.qcow2: headroom 2 GiB < 4 GiB | "
        "'/var/lib/images/a.qcow2 usage_percent'=80.00011497%;;;0;100 "
        "'/var/lib/images/a.qcow2 end_offset_bytes'=8589946937B;;;0;10737418240 "
        "'/var/lib/images/a.qcow2 image_end_offset_bytes'=8589946937B;;;0;10737418240 "
        "'/var/lib/images/a.qcow2 container_size_bytes'=10737418240B;;;0 "
        "'/var/lib/images/a.qcow2 headroom_bytes'=2147471303B;4294967296:;1073741824:;0;"
        "10737418240\n"
    )
    code, text = run_main(monkeypatch, [REC_A], "--critical-headroom", "3G")
    assert code == 2
    assert text.startswith("QCOW2 CRITICAL - /var/lib/images/a.qcow2: headroom 2 GiB < 3 GiB |")
    # Exactly the headroom: "falls below" is not reached.
    code, _ = run_main(monkeypatch, [REC_A], "--critical-headroom", "2147471303")
    assert code == 0


def test_golden_mixed_corrupt_unknown_and_awkward_path(monkeypatch: pytest.MonkeyPatch) -> None:
    awkward = "/x/c|d=e'f.qcow2"
    corrupt = record(awkward, usage(awkward, GiB, 10 * GiB, corrupt=True))
    code, text = run_main(monkeypatch, [REC_A, corrupt, NOT_Q], "-w", "90", "-c", "95")
    assert code == 2  # CRITICAL outranks UNKNOWN
    assert text == (
        "QCOW2 CRITICAL - 2 of 3 images: /x/c_d=e'f.qcow2: corrupt bit set; /x/notq: header at "
        "offset 0x0: not a qcow2 image (bad magic) | "
        + PERF_A.replace(";80;90;", ";90;95;") + " "
        "'/x/c_d_e_f.qcow2 usage_percent'=10%;90;95;0;100 "
        "'/x/c_d_e_f.qcow2 end_offset_bytes'=1073741824B;;;0;10737418240 "
        "'/x/c_d_e_f.qcow2 image_end_offset_bytes'=1073741824B;;;0;10737418240 "
        "'/x/c_d_e_f.qcow2 container_size_bytes'=10737418240B;;;0 "
        "'/x/c_d_e_f.qcow2 headroom_bytes'=9663676416B;;;0;10737418240\n"
        "OK: /var/lib/images/a.qcow2: usage 80% (end 8 GiB of 10 GiB block container, "
        "headroom 2 GiB)\n"
        "CRITICAL: /x/c_d=e'f.qcow2: usage 10% (end 1 GiB of 10 GiB block container, "
        "headroom 9 GiB); corrupt bit set\n"
        "UNKNOWN: /x/notq: header at offset 0x0: not a qcow2 image (bad magic)\n"
    )
    first, perf = text.splitlines()[0].split(" | ")
    assert "|" not in first and "|" not in perf
    assert all("|" not in line for line in text.splitlines()[1:])


def test_golden_unknown_single(monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run_main(monkeypatch, [NOT_Q])
    assert code == 3
    assert text == "QCOW2 UNKNOWN - /x/notq: header at offset 0x0: not a qcow2 image (bad magic)\n"


def test_golden_dirty_and_in_use_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    dirty = record("/x/dirty.qcow2", usage(
        "/x/dirty.qcow2", GiB, 10 * GiB, kind=ContainerKind.FILE, dirty=True, lazy_refcounts=True,
        refcounts_trusted=False, image_end_offset_source=EndOffsetSource.CHECK))
    in_use = record("/x/inuse.qcow2", usage(
        "/x/inuse.qcow2", GiB, 10 * GiB, dirty=True, in_use=True, lazy_refcounts=True,
        refcounts_trusted=False, image_end_offset_source=EndOffsetSource.CHECK,
        backing_filename="base.qcow2"))
    code, text = run_main(monkeypatch, [dirty, in_use], "-v")
    assert code == 1
    lines = text.splitlines()
    # Dirty while no qemu has it open: WARNING, qemu repairs it on the next open. Dirty while
    # in use with lazy refcounts is how lazy refcounts work: OK, with a note.
    assert lines[0].startswith(
        "QCOW2 WARNING - 1 of 2 images: /x/dirty.qcow2: dirty, not in use: repaired by qemu on "
        "next open | ")
    assert lines[1:] == [
        "WARNING: /x/dirty.qcow2: usage 10% (end 1 GiB of 10 GiB file container, headroom "
        "9 GiB); dirty, not in use: repaired by qemu on next open; qcow2 v3, virtual 20 GiB, "
        "cluster 64 KiB, end offset from check, fully allocated 21 GiB, dirty, lazy refcounts",
        "OK: /x/inuse.qcow2: usage 10% (end 1 GiB of 10 GiB block container, headroom "
        "9 GiB); note: dirty while in use with lazy refcounts; qcow2 v3, virtual 20 GiB, "
        "cluster 64 KiB, end offset from check, fully allocated 21 GiB, in use, dirty, lazy "
        "refcounts, backing base.qcow2",
    ]
    # Each health state is configurable, "ok" included.
    code, text = run_main(monkeypatch, [dirty, in_use], "--dirty-state", "critical",
                          "--dirty-in-use-state", "warning")
    assert code == 2
    assert text.splitlines()[0].startswith(
        "QCOW2 CRITICAL - 2 of 2 images: /x/dirty.qcow2: dirty, not in use: repaired by qemu on "
        "next open; /x/inuse.qcow2: dirty while in use with lazy refcounts | ")
    code, text = run_main(monkeypatch, [dirty, in_use], "--dirty-state", "ok")
    assert code == 0


CHECK = CheckResult(
    filename="/x/l.qcow2", check_errors=0, corruptions=2, leaks=3, image_end_offset=GiB,
    total_clusters=327680, allocated_clusters=1000, fragmented_clusters=5, compressed_clusters=0,
    findings=(Finding("refcount-too-low", "corruption", "refcount 0, referenced 1",
                      "L2 table at 0x50000 entry 12", host_offset=0x60000),),
    findings_total=5,
)
PERF_CHECK = (
    "'/x/l.qcow2 usage_percent'=10%;;;0;100 "
    "'/x/l.qcow2 end_offset_bytes'=1073741824B;;;0;10737418240 "
    "'/x/l.qcow2 image_end_offset_bytes'=1073741824B;;;0;10737418240 "
    "'/x/l.qcow2 container_size_bytes'=10737418240B;;;0 "
    "'/x/l.qcow2 headroom_bytes'=9663676416B;;;0;10737418240 "
    "'/x/l.qcow2 check_errors'=0;;;0 '/x/l.qcow2 corruptions'=2;;;0 '/x/l.qcow2 leaks'=3;;;0 "
    "'/x/l.qcow2 allocated_clusters'=1000;;;0 "
    "'/x/l.qcow2 fragmented_clusters'=5;;;0 '/x/l.qcow2 compressed_clusters'=0;;;0 "
    "'/x/l.qcow2 unconfirmed'=0;;;0"
)


def test_golden_check_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = record("/x/l.qcow2", usage("/x/l.qcow2", GiB, 10 * GiB), check=CHECK)
    code, text = run_main(monkeypatch, [checked], "-vv")
    assert code == 2
    assert text == (
        f"QCOW2 CRITICAL - /x/l.qcow2: 2 corruptions, 3 leaked clusters | {PERF_CHECK}\n"
        "CRITICAL: /x/l.qcow2: usage 10% (end 1 GiB of 10 GiB block container, headroom 9 GiB); "
        "2 corruptions; 3 leaked clusters; qcow2 v3, virtual 20 GiB, cluster 64 KiB, end offset "
        "from refcounts, fully allocated 21 GiB; check: 2 corruptions, 3 leaks, 0 check errors, "
        "1000/327680 clusters allocated\n"
        "    corruption (refcount-too-low) at L2 table at 0x50000 entry 12: refcount 0, "
        "referenced 1\n"
        "    ... 4 more findings\n"
    )
    code, text = run_main(monkeypatch, [checked], "--corruptions-state", "ok")
    assert (code, text) == (1, f"QCOW2 WARNING - /x/l.qcow2: 3 leaked clusters | {PERF_CHECK}\n")
    code, _ = run_main(monkeypatch, [checked], "--corruptions-state", "ok", "--leaks-state", "ok")
    assert code == 0


def test_singular_counts_and_leaks_read_right(monkeypatch: pytest.MonkeyPatch) -> None:
    one = CheckResult(
        filename="/x/one.qcow2", check_errors=1, corruptions=1, leaks=1, image_end_offset=GiB,
        total_clusters=10, allocated_clusters=5, fragmented_clusters=0, compressed_clusters=0,
        findings=(Finding("leak", "leak", "Leaked cluster 10 refcount=1 reference=0",
                          "refcount block at 0x20000 entry 10 (cluster 10 at 0xa0000)"),),
        findings_total=1)
    checked = record("/x/one.qcow2", usage("/x/one.qcow2", GiB, 10 * GiB), check=one)
    _code, text = run_main(monkeypatch, [checked], "-vv")
    prose = "\n".join(line.split(" | ")[0] for line in text.splitlines())  # not perfdata
    assert "; 1 corruption; 1 leaked cluster; 1 check error;" in prose
    assert "corruptions" not in prose and "leaked clusters" not in prose
    assert "check: 1 corruption, 1 leak, 1 check error" in text
    assert "    leak at refcount block at 0x20000 entry 10 (cluster 10 at 0xa0000): Leaked " \
        "cluster 10 refcount=1 reference=0\n" in text
    assert "leak leak" not in text


def test_check_of_image_in_use_with_lazy_refcounts_is_not_critical(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    busy = record("/x/l.qcow2", usage("/x/l.qcow2", GiB, 10 * GiB, in_use=True, dirty=True,
                                      lazy_refcounts=True, refcounts_trusted=False), check=CHECK)
    code, text = run_main(monkeypatch, [busy], "-v")
    assert code == 0
    assert text.split(" | ")[0] == "QCOW2 OK - /x/l.qcow2: usage 10%, headroom 9 GiB"
    # The check's findings are the expected lazy-refcount debt, said so in the note.
    assert ("note: dirty while in use with lazy refcounts; 2 corruptions, 3 leaked clusters are "
            "the expected lazy-refcount debt") in text
    assert "'/x/l.qcow2 corruptions'=2;;;0" in text  # the figures are still graphed
    # Not in use: WARNING, and the corruptions are still debt, not corruption.
    idle = record("/x/l.qcow2", usage("/x/l.qcow2", GiB, 10 * GiB, dirty=True,
                                      lazy_refcounts=True, refcounts_trusted=False), check=CHECK)
    code, text = run_main(monkeypatch, [idle])
    assert code == 1
    assert text.split(" | ")[0] == (
        "QCOW2 WARNING - /x/l.qcow2: dirty, not in use: repaired by qemu on next open; "
        "2 corruptions, 3 leaked clusters are the expected lazy-refcount debt")


def test_golden_backing_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    top = record("/i/top.qcow2", usage("/i/top.qcow2", MiB, 10 * GiB,
                                       backing_filename="base.qcow2"))
    base = record("/i/base.qcow2", usage("/i/base.qcow2", 2 * MiB, 10 * GiB,
                                         backing_filename="raw.img"),
                  depth=1, target="/i/top.qcow2")
    raw = record("/i/raw.img", depth=2, target="/i/top.qcow2", status=LayerStatus.OTHER_FORMAT)
    gone = ChainLayer(1, "gone.qcow2", "/i/gone.qcow2", LayerStatus.MISSING, "qcow2")
    other = replace(record("/i/other.qcow2", usage("/i/other.qcow2", MiB, 10 * GiB,
                                                   backing_filename="gone.qcow2")),
                    broken_below=gone)
    missing = replace(record("/i/gone.qcow2", depth=1, target="/i/other.qcow2",
                             status=LayerStatus.MISSING, error=Qcow2Error(
                                 "backing file 'gone.qcow2' not found",
                                 structure="backing chain", kind=IO_ERROR,
                                 filename="/i/gone.qcow2")), layer=gone)
    code, text = run_main(monkeypatch, [top, base, raw, other, missing], "-w", "80")
    assert code == 2  # the VM of other.qcow2 cannot start
    lines = text.splitlines()
    # One fact, named once: on the image whose VM cannot start; the layer is counted.
    assert lines[0].startswith(
        "QCOW2 CRITICAL - 2 of 5 images: /i/other.qcow2: backing file 'gone.qcow2' (depth 1) "
        "not found | ")
    assert "'/i/base.qcow2 usage_percent'=0.01953125%;80;;0;100" in lines[0]
    assert "/i/raw.img" not in lines[0]  # nothing measured, so no perfdata
    assert lines[1:] == [
        "OK: /i/top.qcow2: usage 0.0098% (end 1 MiB of 10 GiB block container, headroom "
        "10 GiB)",
        "OK: /i/base.qcow2 (backing file, depth 1 below /i/top.qcow2): usage 0.02% (end 2 MiB "
        "of 10 GiB block container, headroom 10 GiB)",
        "OK: /i/raw.img (backing file, depth 2 below /i/top.qcow2): other-format, not "
        "analysed",
        "CRITICAL: /i/other.qcow2: usage 0.0098% (end 1 MiB of 10 GiB block container, headroom "
        "10 GiB); backing file 'gone.qcow2' (depth 1) not found",
        "CRITICAL: /i/gone.qcow2 (backing file, depth 1 below /i/other.qcow2): missing",
    ]


def test_a_layer_is_said_below_its_image_not_below_the_directory(tmp_path: Path) -> None:
    """With a directory as the target, each layer's line named the directory ("depth 1 below
    /srv"): which image's chain it is in was not said. It names the image its chain starts at."""
    images = tmp_path / "images"
    bases = tmp_path / "bases"
    images.mkdir()
    bases.mkdir()
    for name in ("a", "b"):
        make_image(images / f"{name}.qcow2", "16M",
                   backing=make_image(bases / f"{name}-base.qcow2", "16M"))
    out = io.StringIO()
    assert main(["--no-live", "--no-state", "--chain", str(images)], stdout=out) == 0
    lines = out.getvalue().splitlines()
    for name in ("a", "b"):
        assert any(line.startswith(f"OK: {bases}/{name}-base.qcow2 (backing file, depth 1 "
                                   f"below {images}/{name}.qcow2): ") for line in lines), lines


def test_golden_ok_many_images(monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run_main(monkeypatch, [REC_A, REC_B])
    assert code == 0
    assert text.splitlines()[0] == (
        "QCOW2 OK - 2 images, highest usage 95% (/var/lib/images/b.qcow2) | "
        + (PERF_A + " " + PERF_B).replace(";80;90;", ";;;")
    )


def test_more_problems_than_the_first_line_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [record(f"/m/{n}.qcow2", usage(f"/m/{n}.qcow2", 9 * GiB, 10 * GiB))
               for n in range(4)]
    code, text = run_main(monkeypatch, records, "-c", "50")
    assert code == 2
    assert text.splitlines()[0].startswith(
        "QCOW2 CRITICAL - 4 of 4 images: /m/0.qcow2: usage 90% > 50%; /m/1.qcow2: usage 90% > "
        "50%; +2 more | ")
    assert len(text.splitlines()) == 5


def test_labels_are_stable_across_states(monkeypatch: pytest.MonkeyPatch) -> None:
    def labels(text: str) -> list[str]:
        return re.findall(r"'([^']*)'=", text.split(" | ", 1)[1].splitlines()[0])

    _, ok = run_main(monkeypatch, [REC_A, REC_B])
    _, crit = run_main(monkeypatch, [REC_A, REC_B], "-w", "1", "-c", "2",
                       "--warning-headroom", "1T")
    assert labels(ok) == labels(crit) and len(labels(ok)) == 10


def test_empty_running_set_is_ok_but_no_images_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check_qcow2, "_collect", lambda args: Collection((), 0.0, 0.0))
    out = io.StringIO()
    assert main(["--running"], stdout=out) == 0
    assert out.getvalue() == "QCOW2 OK - no qcow2 image is open in a running qemu process\n"
    out = io.StringIO()
    assert main(["-f", "/nothing"], stdout=out) == 3
    assert out.getvalue() == "QCOW2 UNKNOWN - no images found\n"


# --- arguments and exit codes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no images given (use -f IMAGE or --running)"),
        (["-f", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["-f", "x", "-w", "1:2:3"], "argument -w/--warning: invalid range '1:2:3'"),
        (["-f", "x", "-c", "10:5"], "start 10 is greater than end 5"),
        (["-f", "x", "-c", "-5"], "'-5': start 0 (the default) is greater than end -5"),
        (["-f", "x", "--warning-headroom", "10X"], "invalid size '10X'"),
        (["-f", "x", "--dirty-state", "bad"], "invalid state 'bad'"),
        (["-f", "x", "-t", "0"], "invalid timeout '0'"),
        (["-f", "x", "-t", "abc"], "invalid timeout 'abc'"),
        (["-f", "x", "--max-depth", "0"], "invalid depth '0'"),
        # Out of range both ways: no extension advice in exbibytes beyond int64.
        (["-f", "x", "--extend-chunk", "2048P"], "invalid chunk '2048P' (1M to 1024P)"),
        (["-f", "x", "--extend-chunk", "512K"], "invalid chunk '512K' (1M to 1024P)"),
        (["-f"], "expected one argument"),
        # An unset variable: it made the working directory the target (scanned recursively).
        (["-f", ""], "argument -f/--file: an empty name is no target (an unset variable?)"),
        (["-w", "80", ""], "argument IMAGE: an empty name is no target"),
    ],
)
def test_bad_arguments_are_unknown(argv: list[str], message: str) -> None:
    out = io.StringIO()
    assert main(argv, stdout=out) == 3
    first = out.getvalue().splitlines()[0]
    assert first.startswith("QCOW2 UNKNOWN - bad arguments: ")
    assert message in first


def test_help_and_version_exit_unknown_on_stdout() -> None:
    out = io.StringIO()
    assert main(["--help"], stdout=out) == 3
    assert out.getvalue().startswith("usage: check_qcow2 ")
    assert "--warning-headroom" in out.getvalue() and "all binary" in out.getvalue()
    # The overcommit sums depend on the targets given: --help says so.
    assert "cover\n  only the images this check was given" in out.getvalue()
    # The epilog comes after every option: the --RULE-state options are above it.
    text = out.getvalue()
    assert "option below" not in text
    assert text.index("  --corrupt-state STATE") < text.index("--RULE-state option above")
    assert "-w 90 -c 80" in text  # the refused thresholds are explained
    out = io.StringIO()
    assert main(["-V"], stdout=out) == 3
    assert re.fullmatch(r"check_qcow2 \S+\n", out.getvalue())


def test_internal_error_is_one_unknown_line(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def boom(args: object) -> Collection:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(check_qcow2, "_collect", boom)
    out = io.StringIO()
    assert main(["-f", "x"], stdout=out) == 3
    assert out.getvalue() == "QCOW2 UNKNOWN - internal error: RuntimeError: boom\n"
    assert capsys.readouterr().err == ""  # no traceback unless -vvv
    assert main(["-f", "x", "-vvv"], stdout=io.StringIO()) == 3
    assert "Traceback" in capsys.readouterr().err


def test_timeout_is_unknown_even_when_blocked() -> None:
    """The watchdog thread exits UNKNOWN while the main thread is stuck (here: sleeping)."""
    code = textwrap.dedent("""
        import sys, time
        from qcow2_monitor.nagios import check_qcow2
        check_qcow2._collect = lambda args: time.sleep(600)
        sys.exit(check_qcow2.main(["-f", "x", "-t", "0.5"]))
    """)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO, check=False)
    # Out at the 0.5 s timeout (1.5 s in all here with the load at 12), not after the 600 s
    # sleep: the bound is over 5x the first.
    assert time.monotonic() - started < 30
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        3, "QCOW2 UNKNOWN - timed out after 0.5 s (raise -t/--timeout)\n", "")


# --- real images, through the installed console script --------------------------------------


def run_plugin(*argv: str, env: Optional[dict[str, str]] = None) -> tuple[int, str, str]:
    proc = subprocess.run([str(plugin_script()), *argv], capture_output=True, text=True,
                          timeout=60, check=False, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def perf_values(output: str) -> dict[str, str]:
    perf = output.splitlines()[0].split(" | ", 1)[1]
    return dict(re.findall(r"'([^']*)'=(\S+)", perf))


def qemu_check(path: Path) -> dict[str, Any]:
    proc = subprocess.run([require_binary("qemu-img"), "check", "--output=json", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture
def images(tmp_path: Path) -> Iterator[Path]:
    # Their own small filesystem (their container): usage must not depend on the build disk.
    with own_filesystem(tmp_path / "images") as directory:
        make_image(directory / "a.qcow2", "64M", write=["write -P 1 0 3M"])
        make_image(directory / "b c|d=e'f.qcow2", "32M", write=["write -P 2 1M 1M"])
        (directory / "notes.txt").write_text("not an image\n")
        yield directory


def test_real_ok_warning_critical(images: Path) -> None:
    a = images / "a.qcow2"
    code, out, err = run_plugin("-f", str(a), "-w", "80", "-c", "90")
    assert (code, err) == (0, "")
    a_re = re.escape(str(a))
    assert re.fullmatch(
        rf"QCOW2 OK - {a_re}: usage [0-9.]+%, headroom [0-9.]+ [KMGT]iB \| "
        rf"'{a_re} usage_percent'=[0-9.]+%;80;90;0;100 "
        rf"'{a_re} end_offset_bytes'=\d+B;;;0;\d+ "
        rf"'{a_re} image_end_offset_bytes'=\d+B;;;0;\d+ "
        rf"'{a_re} container_size_bytes'=\d+B;;;0 '{a_re} headroom_bytes'=\d+B;;;0;\d+\n", out)
    # The end offset agrees with qemu-img check's (differential).
    end = perf_values(out)[f"{a} image_end_offset_bytes"].split(";")[0]
    assert end == f"{qemu_check(a)['image-end-offset']}B"
    # Thresholds low enough for any filesystem: deterministic WARNING / CRITICAL.
    code, out, _ = run_plugin("-f", str(a), "-w", "0.0000001", "-c", "99")
    assert code == 1 and out.startswith(f"QCOW2 WARNING - {a}: usage ")
    assert "% > 0.0000001% | " in out
    code, out, _ = run_plugin("-f", str(a), "-w", "0.0000001", "-c", "0.0000002")
    assert code == 2 and "% > 0.0000002% | " in out


def test_real_directory_and_awkward_name(images: Path) -> None:
    code, out, err = run_plugin("-f", str(images), "--warning-headroom", "1P")
    assert (code, err) == (1, "")
    lines = out.splitlines()
    # The directory scan found both images (not the text file); "|" never reaches the text.
    assert lines[0].startswith(f"QCOW2 WARNING - 2 of 2 images: {images}/a.qcow2: headroom ")
    assert f"{images}/b c_d=e'f.qcow2: headroom" in lines[0]
    text, perf = lines[0].split(" | ")
    assert "|" not in text and "|" not in perf
    assert f"'{images}/b c_d_e_f.qcow2 usage_percent'=" in perf
    assert f"'{images}/b c_d_e_f.qcow2 headroom_bytes'=" in perf
    assert ";1125899906842624:;;0;" in perf
    assert [line.split(":")[0] for line in lines[1:]] == ["WARNING", "WARNING"]


def test_real_unknowns(images: Path, tmp_path: Path) -> None:
    code, out, _ = run_plugin("-f", str(images / "notes.txt"))
    assert (code, out) == (
        3, f"QCOW2 UNKNOWN - {images}/notes.txt: header at offset 0x0: not a qcow2 image "
        "(bad magic)\n")
    code, out, _ = run_plugin("-f", str(tmp_path / "missing.qcow2"))
    assert code == 3 and out.startswith(f"QCOW2 UNKNOWN - {tmp_path}/missing.qcow2: ")
    assert "No such file or directory" in out
    code, out, _ = run_plugin("-f", str(tmp_path / "*.nomatch"))
    assert code == 3 and "no file matches this pattern" in out
    code, out, err = run_plugin("-f", str(images / "a.qcow2"), "-w", "abc")
    assert (code, err) == (3, "")
    assert out.startswith("QCOW2 UNKNOWN - bad arguments: argument -w/--warning: invalid range")


@pytest.mark.parametrize("warning,critical,fires", [
    ("80", "90", True), ("90", "80", False), ("80", "80", False), ("~:80", "90", True),
    ("@0:50", "80", True), ("@0:50", "@0:60", False), ("10:", "20:", False),
    ("20:", "10:", True), ("10:90", "5:95", True), ("10:90", "20:80", False),
    ("0.5", "0.5:", True),
])
def test_range_alerts_beyond_another(warning: str, critical: str, fires: bool) -> None:
    """Whether some usage (>= 0) alerts under the warning but not under the critical range;
    worked out by hand from the guidelines' meaning of each range."""
    assert Range.parse(warning).alerts_beyond(Range.parse(critical)) is fires


@pytest.mark.parametrize("argv,message", [
    (["-w", "90", "-c", "80"], "-w 90 can never fire: every usage it alerts on is CRITICAL "
     "under -c 80 first"),
    (["-w", "80", "-c", "80"], "-w 80 can never fire"),
    (["--warning-headroom", "5G", "--critical-headroom", "20G"],
     "--warning-headroom 5 GiB can never fire: it is not above --critical-headroom 20 GiB"),
    (["--warning-headroom", "5G", "--critical-headroom", "5120M"],
     "--warning-headroom 5 GiB can never fire"),
    (["--warning-overcommit", "3", "--critical-overcommit", "1.5"],
     "--warning-overcommit 3 can never fire"),
    (["--warning-time-to-full", "4h", "--critical-time-to-full", "24h"],
     "--warning-time-to-full 4h can never fire: it is not longer than "
     "--critical-time-to-full 1d"),
    (["--warning-time-to-full", "2h", "--critical-time-to-full", "120m"],
     "--warning-time-to-full 2h can never fire"),
])
def test_warning_that_can_never_fire_is_refused(images: Path, argv: list[str],
                                                message: str) -> None:
    """`-w 90 -c 80` would give OK up to 80 % and CRITICAL after: never WARNING."""
    code, out, err = run_plugin("-f", str(images / "a.qcow2"), *argv)
    assert (code, err) == (3, "")
    assert out.startswith(f"QCOW2 UNKNOWN - bad arguments: {message}"), out


def test_warning_reached_first_is_accepted(images: Path) -> None:
    for argv in (["-w", "80", "-c", "90"], ["--warning-headroom", "20G",
                                            "--critical-headroom", "5G"],
                 ["--warning-time-to-full", "24h", "--critical-time-to-full", "4h"]):
        code, out, _ = run_plugin("-f", str(images / "a.qcow2"), *argv)
        assert "bad arguments" not in out and code != 3, out


def test_real_corrupt_bit_is_critical(images: Path) -> None:
    a = images / "a.qcow2"
    patch_u64(a, OFF_INCOMPATIBLE, read_u64(a, OFF_INCOMPATIBLE) | INCOMPAT_CORRUPT)
    code, out, _ = run_plugin("-f", str(a))
    assert code == 2
    assert out.startswith(f"QCOW2 CRITICAL - {a}: corrupt bit set | ")
    code, _, _ = run_plugin("-f", str(a), "--corrupt-state", "warning")
    assert code == 1


def test_real_dirty_bit_is_warning(images: Path) -> None:
    a = images / "a.qcow2"
    patch_u64(a, OFF_INCOMPATIBLE, read_u64(a, OFF_INCOMPATIBLE) | INCOMPAT_DIRTY)
    code, out, _ = run_plugin("-f", str(a))
    assert (code, out.split(" | ")[0]) == (
        1, f"QCOW2 WARNING - {a}: dirty, not in use: repaired by qemu on next open")


def test_real_in_use_with_lazy_refcounts_is_ok_with_a_note(tmp_path: Path) -> None:
    image = make_image(tmp_path / "lazy.qcow2", "64M", options=["lazy_refcounts=on"])
    # qemu-io writes (setting the dirty bit: lazy refcounts) and keeps the image open.
    proc = subprocess.Popen(
        [require_binary("qemu-io"), "-f", "qcow2", "-c", "write -P 3 0 1M", "-c", "sleep 20000",
         str(image)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not read_u64(image, OFF_INCOMPATIBLE) & INCOMPAT_DIRTY:
            assert time.monotonic() < deadline, "qemu-io did not set the dirty bit"
            time.sleep(0.05)
        code, out, _ = run_plugin("-f", str(image), "--check", "-v")
        assert code == 0, out
        assert "note: dirty while in use with lazy refcounts" in out
        # The debt qemu-img check would count as corruptions is named as such.
        expected = json.loads(subprocess.run(
            [require_binary("qemu-img"), "check", "-U", "--output=json", str(image)],
            capture_output=True, text=True, timeout=60).stdout)
        assert expected["corruptions"] > 0  # the refcounts of the write are not on disk yet
        assert (f"{expected['corruptions']} corruptions, {expected.get('leaks', 0)} leaked "
                "clusters are the expected lazy-refcount debt") in out
    finally:
        proc.kill()
        proc.wait(10)


def test_real_in_use_clean_image_is_ok(tmp_path: Path) -> None:
    image = make_image(tmp_path / "busy.qcow2", "64M", write=["write -P 4 0 1M"])
    with holding_open(image):
        code, out, _ = run_plugin("-f", str(image), "-v")
    assert code == 0
    assert ", in use" in out.splitlines()[1]


def test_real_check_leak_is_warning(tmp_path: Path) -> None:
    from damage import get_refcount, set_refcount

    image = make_image(tmp_path / "leak.qcow2", "64M", write=["write -P 5 0 1M"])
    # Refcount 1 on a cluster inside the image that nothing references: a leak, as qemu-img
    # check reports it.
    size = image.stat().st_size
    with open(image, "r+b") as handle:
        handle.truncate(size + 65536)
    cluster = size // 65536
    assert get_refcount(image, cluster) == 0
    set_refcount(image, cluster, 1)
    assert qemu_check(image)["leaks"] == 1
    code, out, _ = run_plugin("-f", str(image), "--check")
    assert code == 1
    assert out.startswith(f"QCOW2 WARNING - {image}: 1 leaked cluster | ")
    perf = perf_values(out)
    assert perf[f"{image} leaks"] == "1;;;0"
    assert perf[f"{image} corruptions"] == "0;;;0"
    code, _, _ = run_plugin("-f", str(image), "--check", "--leaks-state", "ok")
    assert code == 0


def test_real_golden_on_block_device(tmp_path: Path,
                                     loop_device: Callable[..., str]) -> None:
    """A loop device is a container of exact size: the whole output is deterministic."""
    image = make_image(tmp_path / "blk.qcow2", "32M", write=["write -P 6 0 5M"])
    with open(image, "r+b") as handle:
        handle.truncate(16 * MiB)  # the device: 16 MiB, whatever the image needs
    device = loop_device(image)
    end = qemu_check(Path(device))["image-end-offset"]
    # Header, refcount table, refcount block, L1 and one L2 cluster, then the data.
    assert end == 5 * MiB + 5 * 65536
    code, out, err = run_plugin("-f", device, "-w", "30", "-c", "50",
                                "--warning-headroom", "12M")
    assert (code, err) == (1, "")
    # The image (32 MiB virtual) can outgrow its 16 MiB volume, whose 10.7 MiB of headroom are
    # below the default extension watermark (512 MiB): extend by the chunk, 1 GiB.
    assert out == (
        f"QCOW2 WARNING - {device}: headroom 10.7 MiB below the watermark 512 MiB: extend the "
        f"volume by 1 GiB to 1.02 GiB, usage 33.2% > 30%, headroom 10.7 MiB < 12 MiB | "
        f"'{device} usage_percent'=33.203125%;30;50;0;100 "
        f"'{device} end_offset_bytes'=5570560B;;;0;16777216 "
        f"'{device} image_end_offset_bytes'=5570560B;;;0;16777216 "
        f"'{device} container_size_bytes'=16777216B;;;0 "
        f"'{device} headroom_bytes'=11206656B;12582912:;;0;16777216\n"
    )


def test_light_imports() -> None:
    """One plain check imports neither jinja2, prometheus_client nor numpy (startup time)."""
    require_binary("qemu-img")
    image = make_image(Path(os.environ.get("TMPDIR", "/tmp")) / f"light-{os.getpid()}.qcow2",
                       "16M", write=["write 0 64k"])
    try:
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", str(PLUGIN), "-f", str(image)],
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        image.unlink()
    assert proc.returncode == 0, proc.stdout
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "qcow2_monitor" in imported  # the measurement is real
    assert imported.isdisjoint({"jinja2", "prometheus_client", "numpy"}), sorted(imported)
