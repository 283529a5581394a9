"""Randomised differential test: `check`, `info`, the usage end offset and `measure` against
qemu-img on random qemu-img/qemu-io histories (tests/histories.py), every layer of every chain.

The seeds are fixed, so a failure names a history that replays the same way every time; its
message carries the commands that rebuild it by hand.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from qcow2_monitor.analyze.check import exit_code
from qcow2_monitor.collectors.check.checker import check_image
from qcow2_monitor.collectors.check.measure import measure_image
from qcow2_monitor.collectors.common.jsonform import to_json
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.info import image_info
from qcow2_monitor.collectors.report.usage import analyze_usage

from corpus import CHECK_FIGURES
from histories import QEMU_IMG, History, draw_history

FIRST_SEED = 1000
HISTORIES = 36



def qemu_json(cwd: Path, *args: str) -> tuple[dict[str, Any], int]:
    # In the image's directory: qemu 7.2 resolves a relative data file name against it.
    proc = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, check=False,
                          timeout=300, cwd=cwd)
    assert proc.stdout.strip(), f"qemu-img {' '.join(args)} failed: {proc.stderr}"
    return json.loads(proc.stdout), proc.returncode


def compare_layer(path: Path) -> list[str]:
    """Every figure of ours that differs from qemu-img's on one layer, as readable lines."""
    name = str(path)
    problems = []

    expected_check, code = qemu_json(path.parent, "check", "--output=json", "-f", "qcow2", name)
    result = check_image(name)
    for key in CHECK_FIGURES:  # a figure qemu leaves out is zero
        attr = key.replace("-", "_")  # the CheckResult attribute
        if expected_check.get(key, 0) != getattr(result, attr):
            problems.append(f"check {key}: qemu {expected_check.get(key, 0)}, "
                            f"ours {getattr(result, attr)}")
    if exit_code(result) != code:
        problems.append(f"check exit code: qemu {code}, ours {exit_code(result)}")

    usage = analyze_usage(name, chain=False).usage
    assert usage is not None, name
    if usage.image_end_offset != expected_check.get("image-end-offset"):
        problems.append(f"usage end offset: qemu {expected_check.get('image-end-offset')}, "
                        f"ours {usage.image_end_offset} ({usage.image_end_offset_source})")

    expected_info, _ = qemu_json(path.parent, "info", "--output=json", "-f", "qcow2", name)
    expected_measure, _ = qemu_json(path.parent, "measure", "--output=json", "-O", "qcow2",
                                    name)
    with Qcow2Image.open(name) as image:
        info = to_json(image_info(image))
        measured = to_json(measure_image(image, path=name))
    if info != expected_info:
        problems.append(f"info:\n  qemu {json.dumps(expected_info, sort_keys=True)}"
                        f"\n  ours {json.dumps(info, sort_keys=True)}")
    if measured != expected_measure:
        problems.append(f"measure: qemu {expected_measure}, ours {measured}")
    return problems


def compare_history(history: History, directory: Path) -> list[str]:
    problems = []
    for path in history.build(directory):
        problems += [f"{path.name}: {line}" for line in compare_layer(path)]
    return problems


def test_history_generator_is_deterministic() -> None:
    assert draw_history(FIRST_SEED).describe() == draw_history(FIRST_SEED).describe()
    assert draw_history(FIRST_SEED).describe() != draw_history(FIRST_SEED + 1).describe()


def test_histories_cover_what_they_claim() -> None:
    """The fixed seeds draw every ingredient the randomised test exists for."""
    text = "\n".join(draw_history(seed).describe()
                     for seed in range(FIRST_SEED, FIRST_SEED + HISTORIES))
    for needle in ("cluster_size=2097152", "cluster_size=1048576", "cluster_size=512",
                   "compat=0.10", "refcount_bits=1", "refcount_bits=64", "extended_l2=on",
                   "data_file=", "data_file_raw=on",
                   "preallocation=metadata", "preallocation=falloc", "preallocation=full",
                   "write -P", "write -z", "write -z -u", "discard", "write -c",
                   "snapshot -c", "snapshot -d", "bitmap --add", "resize", " -b layer1"):
        assert needle in text, needle


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + HISTORIES))
def test_random_history_matches_qemu(seed: int, tmp_path: Path) -> None:
    history = draw_history(seed)
    problems = compare_history(history, tmp_path)
    assert not problems, "\n".join(problems) + "\nreplay:\n" + history.describe()
