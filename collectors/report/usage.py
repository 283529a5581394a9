"""The fast usage figures of an image and of its whole backing chain."""

from __future__ import annotations

from ..common.errors import Qcow2Error
from ..common.record import TypeVar, replace
from ..host.container import container_of
from ..host.sources import no_live_source_note
from ..qcow2 import layout as L
from ..qcow2.chain import visit
from ..qcow2.image import Qcow2Image
from ..qcow2.prealloc import fully_allocated_size
from ..qcow2.reader import held_for_writing
from ..qcow2.refcount import end_and_free_below
from ..qcow2.steady import read_steadily
from .model import (
    DEFAULT_MAX_DEPTH,
    ChainLayer,
    EndOffsetSource,
    ImageUsage,
    LayerStatus,
    UsageResult,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional, Protocol

    from ..host.live import LiveView

    class Guard(Protocol):
        """How the per-image work is shielded: `work` run for the image at `filename`,
        anything unexpected raised as a Qcow2Error of that image (report/collect.py's
        guard)."""

        def __call__(self, work: Callable[[], T], filename: str) -> T: ...

T = TypeVar("T")


def end_offset(image: Qcow2Image, in_use: Optional[bool] = None
               ) -> tuple[int, EndOffsetSource, tuple[str, ...], Optional[int]]:
    """The image end offset, where it came from, notes for the operator, and the free bytes
    below the end (None when the on-disk refcounts are untrusted). On an image held for
    writing (`in_use`, probed when not given), from a read during which qemu moved no table:
    the refcount table it outgrew may hold data by then (collectors/qcow2/steady.py)."""
    h = image.header
    if in_use is None:
        in_use = held_for_writing(image.file)
    if h.dirty:
        from ..check.checker import image_end_offset_by_walk  # numpy: only on this rare path

        return (image_end_offset_by_walk(image), EndOffsetSource.CHECK,
                ("dirty bit set: on-disk refcounts untrusted, image end offset taken from a "
                 "full metadata walk",), None)
    if in_use:
        end, free = read_steadily(image, end_and_free_below)
    else:
        end, free = end_and_free_below(image)
    return end, EndOffsetSource.REFCOUNTS, (), free


def image_usage(image: Qcow2Image, live: Optional[LiveView] = None) -> ImageUsage:
    h = image.header
    in_use = held_for_writing(image.file)
    end, source, notes, free_below_end = end_offset(image, in_use)
    live_disk = live.lookup(image.file.stat) if live is not None else None
    live_end = live_disk.end_offset if live_disk is not None else None
    container = container_of(image.file, max(end, live_end or 0))
    notes += tuple(image.name_problems())
    if live_disk is not None and live_disk.end_offset > end:
        notes += (f"live end offset {live_disk.end_offset} ({live_disk.source}: "
                  f"{live_disk.domain} {live_disk.disk}) is {live_disk.end_offset - end} bytes "
                  "ahead of the on-disk figure: qemu has not yet written back its metadata",)
    elif in_use and live_disk is None:
        notes += ("held for writing by a running qemu: on-disk metadata may lag behind the "
                  "guest until its next flush; "
                  + no_live_source_note(live.libvirt_note if live is not None else None),)
    bitmaps = image.bitmaps_extension
    return ImageUsage(
        filename=image.filename,
        image_end_offset=end,
        image_end_offset_source=source,
        container=container,
        usage_ratio=container.usage_ratio,
        fully_allocated_size=fully_allocated_size(image),
        virtual_size=h.size,
        cluster_size=h.cluster_size,
        qcow_version=h.version,
        in_use=in_use,
        dirty=h.dirty,
        corrupt=h.corrupt,
        lazy_refcounts=h.lazy_refcounts,
        refcounts_trusted=not h.dirty,
        encrypted=h.crypt_method != L.CRYPT_NONE,
        backing_filename=image.backing_filename,
        backing_format=image.backing_format,
        external_data_file=image.data_file_name,
        snapshots=h.nb_snapshots,
        bitmaps=bitmaps.nb_bitmaps if bitmaps is not None else 0,
        notes=notes,
        live_end_offset=live_end,
        domain=live_disk.domain if live_disk is not None else None,
        disk=live_disk.disk if live_disk is not None else None,
        pause=live_disk.pause if live_disk is not None else None,
        free_below_end=free_below_end,
    )


def unguarded(work: Callable[[], T], filename: str) -> T:
    return work()


def analyze_image(path: str, live: Optional[LiveView] = None) -> ImageUsage:
    """Usage of one image (with its live figure when `live` covers it); raises Qcow2Error."""
    with Qcow2Image.open(path) as image:
        try:
            return image_usage(image, live)
        except Qcow2Error as exc:
            raise exc.with_filename(path) from None


def analyze_usage(path: str, *, chain: bool = True, max_depth: int = DEFAULT_MAX_DEPTH,
                  live: Optional[LiveView] = None, guard: Guard = unguarded) -> UsageResult:
    """Usage of the image at `path` and (by default) its backing chain, each image's work run
    through `guard`. Never raises for a bad image: the error is carried in the result."""

    def read(image: Qcow2Image, layer: ChainLayer) -> Optional[ImageUsage]:
        # Without `chain` the layers are still opened by the walker (headers only): a missing
        # or broken backing file keeps the VM from starting, and finding that out is cheap.
        # Only their usage figures are left out.
        if not chain and layer.depth > 0:
            return None
        return guard(lambda: image_usage(image, live), layer.filename)

    layers: list[ChainLayer] = []
    for visited in visit(path, read, max_depth=max_depth):
        layer = replace(visited.layer, usage=visited.value)
        if layer.error is not None and layer.depth == 0:
            return UsageResult(path, None, (), layer.error)
        layers.append(layer)
        if layer.status != LayerStatus.OK:
            break
    top, *below = layers
    return UsageResult(path, top.usage, tuple(below), None)
