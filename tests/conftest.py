"""Session fixtures: the qemu-made image corpus, its damaged copies, and loop devices.

The suite never skips for a missing prerequisite: qemu-img/qemu-io and root (for loop devices)
are requirements of the CI, so their absence is a failure with a message saying what to fix.

tests/ has no __init__.py, so pytest puts this directory on sys.path and the helper modules are
imported by their plain names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Union

import pytest

from qcow2_monitor.collectors.report.state import SYSTEM_STATE_DIRECTORY

from corpus import QEMU_IMG, QEMU_IO, CorpusImage, build_corpus
from damage import DamagedImage, copy_image, damaged_variants

# Every failure report short (tests/short_reports.py); pytester for testing that.
pytest_plugins = ["short_reports", "pytester"]

# Sources of the damaged copies: every structure a recipe needs (snapshot, bitmaps, compressed
# and extended-L2 entries), a v2 header, and packed 1-bit refcounts.
DAMAGE_BASES = ("mixed", "extended-l2-65536", "v2-snapshot", "refbits-1")

LoopAttach = Callable[..., str]


@pytest.fixture(scope="session", autouse=True)
def private_state_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The adapters keep growth samples in a state directory (for root /var/lib/qcow2-monitor
    by default): every run in the suite, its subprocesses included, keeps them in a temporary
    one instead ($MP_STATE_PATH, the monitoring-plugins convention). World-writable and sticky
    like /tmp, so that the runs as `nobody` create their own qcow2-monitor directory there."""
    base = tmp_path_factory.mktemp("state")
    base.chmod(0o1777)
    (base / "root").mkdir(mode=0o700)
    saved = os.environ.get("MP_STATE_PATH")
    os.environ["MP_STATE_PATH"] = str(base / "root")
    # sudo resets the environment: the shipped commands run through it (Icinga 2, Nagios,
    # Telegraf as their users) keep root's default, /var/lib/qcow2-monitor. A directory the
    # suite created there is removed at the end; one that was there before is left alone.
    system = Path(SYSTEM_STATE_DIRECTORY)
    existed = system.exists()
    try:
        yield base
    finally:
        if saved is None:
            os.environ.pop("MP_STATE_PATH", None)
        else:
            os.environ["MP_STATE_PATH"] = saved
        if not existed:
            shutil.rmtree(system, ignore_errors=True)


@pytest.fixture(scope="session")
def qemu_tools() -> dict[str, str]:
    """Paths of qemu-img and qemu-io; fails (never skips) when either is missing."""
    found = {}
    for tool in (QEMU_IMG, QEMU_IO):
        path = shutil.which(tool)
        if path is None:
            pytest.fail(f"{tool} not found on PATH; install qemu-utils (Debian) to run the tests")
        found[tool] = path
    return found


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="session")
def corpus(qemu_tools: dict[str, str], corpus_dir: Path) -> list[CorpusImage]:
    return build_corpus(corpus_dir)


@pytest.fixture(scope="session")
def corpus_by_name(corpus: list[CorpusImage]) -> dict[str, CorpusImage]:
    return {image.name: image for image in corpus}


@pytest.fixture(scope="session")
def damaged(
    corpus_by_name: dict[str, CorpusImage], tmp_path_factory: pytest.TempPathFactory
) -> list[DamagedImage]:
    workdir = tmp_path_factory.mktemp("damaged")
    variants: list[DamagedImage] = []
    for base in DAMAGE_BASES:
        variants += damaged_variants(corpus_by_name[base].path, workdir)
    return variants


@pytest.fixture(scope="session")
def damaged_by_name(damaged: list[DamagedImage]) -> dict[str, DamagedImage]:
    return {variant.name: variant for variant in damaged}


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[LoopAttach]:
    """Factory: ``attach(image_or_path, read_only=False) -> '/dev/loopN'``.

    Attaches a private copy, so a test may write to the device without touching the shared
    corpus. Every device is detached at teardown.
    """
    if os.geteuid() != 0:
        pytest.fail("the loop_device fixture needs root (losetup); run the test suite as root")
    attached: list[str] = []

    def attach(image: Union[CorpusImage, DamagedImage, Path, str], read_only: bool = False) -> str:
        src = image.path if isinstance(image, (CorpusImage, DamagedImage)) else Path(image)
        copy = copy_image(src, tmp_path / f"loop{len(attached)}-{src.name}")
        argv = ["losetup", "--find", "--show", *(["--read-only"] if read_only else []), str(copy)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        device = proc.stdout.strip()
        attached.append(device)
        return device

    yield attach
    for device in reversed(attached):
        subprocess.run(["losetup", "-d", device], capture_output=True, text=True, check=True)


# --------------------------------------------------------------------------------------------
# Nothing may skip in CI: the test command installs every tool, so a skip there means a missing
# install step. Outside CI a skip is reported with its reason (addopts -ra) and allowed.
_skipped_in_ci: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and os.environ.get("CI"):
        _skipped_in_ci.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_in_ci:
        print(f"\nCI=true but {len(_skipped_in_ci)} test(s) skipped: "
              + ", ".join(_skipped_in_ci))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
