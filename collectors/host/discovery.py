"""Which images to look at: command-line specs and the images running qemu processes hold open.

Shared by every adapter so that "what is a target" is decided once. Nothing here parses qcow2
beyond the 4-byte magic: whether a named file really is a usable image is the core's verdict
(it reports ``not-qcow2`` with the offset), so explicitly named files are passed through
unchecked. Directory scans, glob matches and process scans filter on the magic, because there
the user did not name the files: a volume group's directory (``/dev/VG/``, symlinks to block
devices) or ``/dev/loop*`` holds disks of every kind, and only the qcow2 ones are targets.
"""

from __future__ import annotations

import os
import stat

from ..common.errors import IO_ERROR, Qcow2Error
from ..common.record import frozen_record
from ..common.units import counted
from ..qcow2.layout import QCOW_MAGIC as QCOW2_MAGIC
from ..qcow2.reader import has_qcow2_magic
from ..report.model import Target
from .identity import canonical_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Iterator, Optional, Sequence

# Names that identify a qemu process holding images: qemu-system-*, qemu-nbd, qemu-io,
# qemu-storage-daemon, qemu-kvm. The kernel truncates comm to 15 bytes, which still keeps "qemu".
_QEMU_MARKER = "qemu"


def _target_error(spec: str, message: str, kind: str = IO_ERROR) -> Target:
    return Target(spec, None, Qcow2Error(message, structure="target", kind=kind, filename=spec))


def _os_error(spec: str, exc: OSError) -> Target:
    return _target_error(spec, exc.strerror or str(exc))


def _qcow2_candidate(spec: str, path: str) -> Iterator[Target]:
    """`path` as a target if it is a regular file or block device starting with the magic.

    For paths the user did not name one by one (a directory's entries, a glob's matches).
    Symlinks are followed: ``/dev/VG/LV`` links to ``../dm-N``. A FIFO or socket is never
    opened (opening a FIFO blocks), nor is a character device: none of them holds an image.
    A file or device that cannot be opened is reported, not skipped: an image that the
    collector's user cannot read is a monitoring failure, not a non-image.
    """
    try:
        mode = os.stat(path).st_mode
        if (stat.S_ISREG(mode) or stat.S_ISBLK(mode)) and has_qcow2_magic(path):
            yield Target(spec, path)
    except FileNotFoundError:
        return  # deleted (or a dangling symlink) between listing and opening
    except OSError as exc:
        yield _os_error(path, exc)


def _directory_files(directory: str) -> tuple[list[str], list[OSError]]:
    """Every file name below `directory` (recursively, sorted), and the errors of the walk;
    symlinks to directories are not followed."""
    walk_errors: list[OSError] = []
    files: list[str] = []
    for root, dirs, names in os.walk(directory, onerror=walk_errors.append):
        dirs.sort()
        files += [os.path.join(root, name) for name in sorted(names)]
    return files, walk_errors


def _candidates(spec: str, files: Iterable[str], walk_errors: Iterable[OSError]
                ) -> Iterator[Target]:
    """The qcow2 images among a directory's files, then the errors of its walk."""
    for path in files:
        yield from _qcow2_candidate(spec, path)
    for walk_error in walk_errors:
        yield _os_error(walk_error.filename or spec, walk_error)


def _selection(spec: str, targets: Iterable[Target], none_found: str) -> Iterator[Target]:
    """The targets of a spec that selects rather than names (a directory, a glob); one that
    yields no image, and no error either, is a failed target saying `none_found`.

    The one rule for "nothing found": an empty or mistyped directory or pattern would otherwise
    make a run that reports nothing, which every adapter would show as all well (an empty
    table and exit 0, no series, no alert). Only --running may rightly find no image: no VM
    holds one open.
    """
    found = False
    for target in targets:
        found = True
        yield target
    if not found:
        yield _target_error(spec, none_found)


def _scan_directory(spec: str, directory: str) -> Iterator[Target]:
    """Every regular file and block device below `directory` (recursively, sorted) that starts
    with the magic; symlinks to them are followed, symlinks to directories are not."""
    files, walk_errors = _directory_files(directory)
    none_found = (f"no qcow2 image among the {counted(len(files), 'file')} in this directory "
                  "or below" if files else "no file in this directory or below")
    yield from _selection(spec, _candidates(spec, files, walk_errors), none_found)


# What makes a spec a pattern, as glob.has_magic() tells it.
_GLOB_MAGIC = frozenset("*?[")


def _glob_matches(spec: str, matches: Sequence[str]) -> Iterator[Target]:
    for match in matches:
        path = os.path.abspath(match)
        if os.path.isdir(path):
            yield from _candidates(spec, *_directory_files(path))
        else:
            yield from _qcow2_candidate(spec, path)


def _expand_glob(spec: str) -> Iterator[Target]:
    """The qcow2 images among the pattern's matches (directories among them are scanned).

    A pattern is a selection like a directory, so matches without the magic are left out
    (``/dev/loop*`` names idle and raw devices too), and one that selects no image at all is a
    failed target (:func:`_selection`), as a mistyped pattern would be.
    """
    import glob  # only for a pattern: a plain path needs none of it

    matches = sorted(glob.glob(spec))
    none_found = (f"no qcow2 image among the {counted(len(matches), 'path')} matching this "
                  "pattern" if matches else "no file matches this pattern")
    yield from _selection(spec, _glob_matches(spec, matches), none_found)


def _expand_one(spec: str) -> Iterator[Target]:
    # A literal file wins over glob interpretation: image names may contain '[' or '*'.
    if _GLOB_MAGIC.intersection(spec) and not os.path.lexists(spec):
        yield from _expand_glob(spec)
        return
    path = os.path.abspath(spec)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        yield _os_error(path, exc)
        return
    if stat.S_ISDIR(mode):
        yield from _scan_directory(spec, path)
    elif stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        yield Target(spec, path)  # named by the user: the core says whether it is qcow2
    else:
        yield _target_error(path, "not a regular file, block device or directory")


def dedupe_targets(targets: Iterable[Target]) -> list[Target]:
    """Keep the first target per real path (and per error spec), in order."""
    seen: set[str] = set()
    unique: list[Target] = []
    for target in targets:
        key = "path:" + canonical_path(target.path) if target.path else "spec:" + target.spec
        if key not in seen:
            seen.add(key)
            unique.append(target)
    return unique


def expand_targets(specs: Sequence[str]) -> list[Target]:
    """Turn command-line specs into targets.

    A spec is a regular file or block device (taken as named), a directory searched
    recursively for regular files and block devices starting with the qcow2 magic, or a glob
    whose matches are taken like a directory's entries. A directory or glob that yields no
    image is a failed target (:func:`_selection`). Targets are de-duplicated by disk
    (canonical_path), keeping the first occurrence.
    """
    return dedupe_targets(target for spec in specs for target in _expand_one(spec))


def _process_image_candidates(pid: int, open_files: Iterable[str]) -> Iterator[str]:
    yield from open_files
    # open_files() lists regular files only; block devices (LVM, iSCSI, loop) are found here.
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return
    for fd in fds:
        try:
            link = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if link.startswith("/dev/"):
            try:
                if stat.S_ISBLK(os.stat(link).st_mode):
                    yield link
            except OSError:
                continue


def _is_qemu(name: Optional[str], cmdline: Optional[Sequence[str]]) -> bool:
    if name and _QEMU_MARKER in name:
        return True
    # Only the executable, not the arguments: `pytest -k qemu` is not a qemu process.
    return _QEMU_MARKER in os.path.basename(cmdline[0]) if cmdline else False


@frozen_record
class RunningScan:
    """The images running qemu processes hold, and the qemu processes we may not inspect."""

    paths: list[str]
    uninspected: list[int]  # pids: without root, other users' processes cannot be read


def _libvirt_guest(cmdline: Optional[Sequence[str]]) -> Optional[str]:
    """The domain name libvirt gives its qemu: ``-name guest=NAME,...``."""
    args = list(cmdline or ())
    for flag, value in zip(args, args[1:]):
        if flag == "-name" and value.startswith("guest="):
            # qemu's option syntax doubles a literal comma
            return value[len("guest="):].replace(",,", "\0").split(",")[0].replace("\0", ",")
    return None


def scan_running(covered_guests: Iterable[str] = (),
                 covered_pids: Iterable[int] = ()) -> RunningScan:
    """Every qcow2 image (backing layers included) held open by a running qemu process.

    Sorted by path so that the output order, and anything derived from it, is stable between
    runs. A qemu we may not inspect is listed in `uninspected`, unless it is the process of a
    libvirt domain in `covered_guests` or a qemu in `covered_pids` (a live source has named
    its disks already).
    """
    import psutil  # imported here: the Nagios plugin imports this module and must stay light

    guests, pids = set(covered_guests), set(covered_pids)
    found: dict[str, str] = {}
    uninspected: list[int] = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if not _is_qemu(proc.info["name"], proc.info["cmdline"]):
                continue
            files = [f.path for f in proc.open_files()]
        except psutil.AccessDenied:
            covered = proc.info["pid"] in pids or _libvirt_guest(proc.info["cmdline"]) in guests
            if not covered:
                uninspected.append(proc.info["pid"])
            continue
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for path in _process_image_candidates(proc.info["pid"], files):
            real = os.path.realpath(path)
            if real in found:
                continue
            try:
                if has_qcow2_magic(path):
                    found[real] = path
            except OSError:
                continue  # closed meanwhile, or not ours to read: we cannot tell it is qcow2
    return RunningScan(sorted(found.values()), sorted(uninspected))


__all__ = [
    "QCOW2_MAGIC",
    "RunningScan",
    "Target",
    "dedupe_targets",
    "expand_targets",
    "has_qcow2_magic",
    "scan_running",
]
