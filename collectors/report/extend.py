"""When to extend a thin block volume, and by how much: oVirt/VDSM's policy, as advice.

A qcow2 written directly on a block device (an LVM volume, a SAN LUN) grows until it reaches
the device's end; then qemu pauses the VM (ENOSPC). VDSM extends such a volume when its free
space falls below ``chunk x (100 - utilization) / 100`` (defaults 1 GiB and 50 %: less than
512 MiB left) and grows it by one chunk. We never act: we say it, with the command an operator
would run (``lvextend -L +1G VG/LV`` for an LVM volume), rounded up to the device's
granularity (the VG's extent size when ``vgs`` tells it, else 1 MiB). Several volumes of one
VG are advised together: when the VG's free space cannot cover all of them, the advice says so.
"""

from __future__ import annotations

from ..common.record import frozen_record, replace
from ..common.units import human_size
from .model import ContainerKind, Extension, ImageUsage, PauseReason

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional, Sequence, TypeAlias

    from ..host import lvm

GiB = 1 << 30
DEFAULT_CHUNK = GiB
DEFAULT_UTILIZATION = 50  # percent
DEFAULT_GRANULARITY = 1 << 20  # a device whose extent size is unknown: whole MiB


@frozen_record
class ExtendPolicy:
    chunk: int = DEFAULT_CHUNK
    utilization: int = DEFAULT_UTILIZATION  # percent, 0..99

    @property
    def watermark(self) -> int:
        """Headroom below which a volume is to be extended."""
        return self.chunk * (100 - self.utilization) // 100

    def describe(self) -> str:
        return (f"watermark {human_size(self.watermark)}: chunk {human_size(self.chunk)} x "
                f"(100 - {self.utilization}%)")


DEFAULT_POLICY = ExtendPolicy()

VolumeGroups: TypeAlias = "Callable[[], tuple[dict[str, lvm.VolumeGroup], Optional[str]]]"


def needs_extension(usage: ImageUsage, policy: ExtendPolicy) -> bool:
    """A block volume whose headroom is below the watermark, or whose VM is already paused
    because the volume is full. A volume the image can never outgrow (its fully allocated
    size fits) needs none, however little headroom it has left."""
    if usage.container.kind != ContainerKind.BLOCK:
        return False
    if usage.pause is not None and usage.pause.reason == PauseReason.NOSPACE:
        return True
    fits = usage.fully_allocated_size <= usage.container.size
    return not fits and usage.container.headroom < policy.watermark


def _round_up(size: int, granularity: int) -> int:
    return -(-size // granularity) * granularity


def _advice(path: str, usage: ImageUsage, policy: ExtendPolicy,
            groups: Optional[dict[str, lvm.VolumeGroup]], why: Optional[str]) -> Extension:
    from ..host import lvm

    volume = lvm.logical_volume(path)
    group = groups.get(volume.vg) if volume is not None and groups is not None else None
    granularity = group.extent_size if group is not None and group.extent_size > 0 \
        else DEFAULT_GRANULARITY
    size = usage.container.size
    extend_to = _round_up(size + policy.chunk, granularity)
    note = None
    if volume is not None and group is None:
        note = (f"extent size and free space of VG {volume.vg} unknown "
                f"({why or 'vgs does not list it'}): rounded to 1 MiB")
    command = f"lvextend -L +{lvm.lvm_size(extend_to - size)} {volume.name}" \
        if volume is not None else None
    return Extension(
        watermark=policy.watermark, chunk=policy.chunk, extend_by=extend_to - size,
        extend_to=extend_to, granularity=granularity,
        volume=volume.name if volume is not None else None, command=command,
        vg_free=group.free if group is not None else None, note=note)


def advise(images: Sequence[tuple[str, ImageUsage]], policy: ExtendPolicy = DEFAULT_POLICY,
           groups: Optional[VolumeGroups] = None) -> list[Optional[Extension]]:
    """The advice for each (path, usage), None where no extension is needed. ``vgs`` (or
    `groups`) runs once, and only when an LVM volume needs extending."""
    wanted = [needs_extension(usage, policy) for _, usage in images]
    if not any(wanted):
        return [None] * len(images)
    from ..host import lvm  # only for volumes below their watermark: LVM or not


    known: Optional[dict[str, lvm.VolumeGroup]] = None
    why: Optional[str] = None
    if any(lvm.logical_volume(path) is not None
           for (path, _), want in zip(images, wanted) if want):
        known, why = (groups or lvm.volume_groups)()
    advice = [_advice(path, usage, policy, known, why) if want else None
              for (path, usage), want in zip(images, wanted)]
    needed: dict[str, int] = {}
    for item in advice:
        if item is not None and item.volume is not None and item.vg_free is not None:
            vg = item.volume.split("/")[0]
            needed[vg] = needed.get(vg, 0) + item.extend_by
    return [replace(item, vg_needed=needed[item.volume.split("/")[0]])
            if item is not None and item.volume is not None and item.vg_free is not None
            else item for item in advice]


def extension_text(extension: Extension) -> str:
    """What to do, in words: by how much, to what size, with which command."""
    text = (f"extend the volume by {human_size(extension.extend_by)} to "
            f"{human_size(extension.extend_to)}")
    if extension.command is not None:
        text += f" ({extension.command})"
    if extension.vg_short:
        assert extension.vg_free is not None and extension.vg_needed is not None
        vg = (extension.volume or "").split("/")[0]
        text += (f"; VG {vg} has only {human_size(extension.vg_free)} free for the "
                 f"{human_size(extension.vg_needed)} its volumes need: extend the VG first "
                 "(vgextend)")
    if extension.note is not None:
        text += f"; {extension.note}"
    return text
