"""Reading an image a running qemu is writing, without figures from tables it has moved
(docs/qcow2-format.md §11).

When qemu outgrows its L1 or refcount table it writes a larger one elsewhere, then the header
that points to it, then frees the old one, whose clusters a later allocation may fill with data.
A reader that parsed the header before the move and reads the table after it reads garbage. qemu
writes the header last, so a read during which cluster 0 did not change read tables that the
header it parsed still named: such a read is kept, any other is made again.
"""

from __future__ import annotations

from ..common.errors import IO_ERROR, Qcow2Error
from ..common.record import TypeVar
from .image import Qcow2Image

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional

T = TypeVar("T")

# Reads of one figure before giving up on an image whose header never held still.
STEADY_READS = 5


def read_held_still(image: Qcow2Image, read: Callable[[Qcow2Image], T], attempts: int
                    ) -> tuple[Optional[T], int]:
    """`read` of the image parsed afresh from its open file, made again until cluster 0 reads
    the same after it as when it was parsed: (its result, the reads made), or (None, attempts)
    when qemu rewrote the header every time. An error raised while the header moved came from
    a stale table: that read is made again too; any other error is raised."""
    for made in range(1, attempts + 1):
        try:
            fresh = image.reopened()
        except Qcow2Error:
            continue  # cluster 0 read while qemu rewrote it
        with fresh:
            try:
                found = read(fresh)
            except Qcow2Error:
                if fresh.header_moved():
                    continue
                raise
            if not fresh.header_moved():
                return found, made
    return None, attempts


def read_steadily(image: Qcow2Image, read: Callable[[Qcow2Image], T],
                  attempts: int = STEADY_READS) -> T:
    """read_held_still(), raising when the header never held still."""
    found, _ = read_held_still(image, read, attempts)
    if found is None:
        raise moving_header(image, attempts)
    return found


def moving_header(image: Qcow2Image, attempts: int) -> Qcow2Error:
    """The error of an image whose header qemu rewrote during every read."""
    return Qcow2Error(
        f"qemu rewrote the header during each of {attempts} reads (it kept moving its "
        "tables): analyse it again", structure="header", offset=0, kind=IO_ERROR,
        filename=image.filename)
