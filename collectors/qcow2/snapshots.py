"""Which L1 tables a snapshot selector names: `active`, `inactive` (every snapshot), `all`, a
snapshot ID or a name, as qcow2-dump's `-s` takes them.

An ID or a name is resolved as qemu resolves the argument of `qemu-img snapshot -a/-d`:
find_snapshot_by_id_or_name() in block/qcow2-snapshot.c looks for the ID first
(find_snapshot_by_id_and_name(bs, id, NULL)) and only then for the name. qemu takes the first
match in table order; here a selector that several snapshots match at the level that decides
(two snapshots with that name, or two with that ID in a damaged table) is refused as
ambiguous, naming their IDs, so that a view never shows one snapshot for another. The three
keywords come before IDs and names: a snapshot named `all` is selected by its ID.
"""

from __future__ import annotations

from ..common.record import frozen_record
from .image import Qcow2Image, Snapshot

ACTIVE = "active"
INACTIVE = "inactive"
ALL = "all"
KEYWORDS = (ACTIVE, INACTIVE, ALL)
# IDs of the snapshots an error names (a table can hold 65536).
MAX_NAMED_IN_ERROR = 10


class SnapshotSelectorError(ValueError):
    """A selector that names no snapshot of the image, or several: a bad argument (the front
    ends exit 64)."""


@frozen_record
class SnapshotSelection:
    """The L1 tables a selector names: the active one (or not), and snapshots in table order."""

    selector: str
    active: bool
    snapshots: tuple[Snapshot, ...]

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(sn.id_str for sn in self.snapshots)


def _named(matches: list[Snapshot]) -> str:
    shown = ", ".join(sn.id_str for sn in matches[:MAX_NAMED_IN_ERROR])
    more = len(matches) - MAX_NAMED_IN_ERROR
    return shown + (f" and {more} more" if more > 0 else "")


def select_snapshots(image: Qcow2Image, selector: str) -> SnapshotSelection:
    """The selection `selector` names in `image` (see the module's docstring); raises
    SnapshotSelectorError for an unknown or ambiguous ID or name."""
    snapshots = image.snapshots()
    if selector == ACTIVE:
        return SnapshotSelection(selector, True, ())
    if selector in (INACTIVE, ALL):
        return SnapshotSelection(selector, selector == ALL, tuple(snapshots))
    # find_snapshot_by_id_or_name(): IDs first, then names.
    for what in ("ID", "name"):
        matches = [sn for sn in snapshots
                   if (sn.id_str if what == "ID" else sn.name) == selector]
        if len(matches) == 1:
            return SnapshotSelection(selector, False, (matches[0],))
        if matches:
            raise SnapshotSelectorError(
                f"snapshot {what} {selector!r} is ambiguous: snapshots with IDs "
                f"{_named(matches)} have it (select one by a unique ID, or use inactive)")
    known = "no snapshots" if not snapshots else \
        f"snapshot IDs {_named(snapshots)}"
    raise SnapshotSelectorError(
        f"no snapshot with ID or name {selector!r} in {image.filename} (it has {known}; "
        f"or use {', '.join(KEYWORDS)})")
