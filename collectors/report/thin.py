"""What a run decides about thin provisioning once every image is analysed: which block
volumes to extend and by how much (collectors.report.extend, several volumes of one VG
together), and how fast each image grows and when it is full (collectors.report.growth).

Only top images count: backing layers are never written.
"""

from __future__ import annotations

from ..common.record import frozen_record, replace
from ..host.identity import identity_of_path
from .extend import DEFAULT_POLICY, ExtendPolicy, advise
from .growth import DiskSample, GrowthTracker
from .health import Policy
from .model import ImageRecord, ImageUsage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Sequence


@frozen_record
class Judging:
    """How a run judges its images: the health rules' states (None: their defaults), when to
    advise extending a volume, and where growth is tracked (None: no state kept)."""

    rules: Optional[Policy] = None
    extend: ExtendPolicy = DEFAULT_POLICY
    growth: Optional[GrowthTracker] = None


DEFAULT_JUDGING = Judging()


def _growing(record: ImageRecord) -> bool:
    return record.depth == 0 and record.usage is not None and record.path is not None \
        and record.error is None


@frozen_record
class Seen:
    """A top image as this run saw it: its path, identity (canonical path), usage and when."""

    path: str
    key: str
    usage: ImageUsage
    time: float


def decide_usages(images: Sequence[Seen], judging: Judging, now: float
                  ) -> tuple[list[ImageUsage], list[str]]:
    """Each image's usage with its extension advice and growth; notes about the run."""
    advice = advise([(image.path, image.usage) for image in images], judging.extend)
    usages = [replace(image.usage, extension=extension) if extension is not None
              else image.usage for image, extension in zip(images, advice)]
    if judging.growth is None:
        return usages, []
    samples: list[DiskSample] = []
    owners: list[int] = []
    for i, image in enumerate(images):
        identity = identity_of_path(image.path)
        if identity is not None:
            samples.append(DiskSample(image.key, list(identity), usages[i], image.time))
            owners.append(i)
    growths, notes = judging.growth.update(samples, now)
    for i, growth in zip(owners, growths):
        usages[i] = replace(usages[i], growth=growth)
    return usages, notes


def decide(records: Sequence[ImageRecord], times: Sequence[float], judging: Judging,
           now: float) -> tuple[list[ImageRecord], list[str]]:
    """`records` with their extension advice and growth; notes about the run. `times[i]` is
    when record i was analysed."""
    out = list(records)
    top = [i for i, record in enumerate(out) if _growing(record)]
    seen = [Seen(out[i].path or "", out[i].label_path, usage, times[i])
            for i in top if (usage := out[i].usage) is not None]
    usages, notes = decide_usages(seen, judging, now)
    for i, usage in zip(top, usages):
        out[i] = replace(out[i], usage=usage)
    return out, notes
