"""What a run decides about thin provisioning once every image is analysed: which block
volumes to extend and by how much (collectors.report.extend, several volumes of one VG
together), and how fast each image grows and when it is full (collectors.report.growth).

Only top images count: backing layers are never written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

from ..host.live import identity_of_path
from .extend import DEFAULT_POLICY, ExtendPolicy, advise
from .growth import DiskSample, GrowthTracker
from .health import Policy
from .metrics import ImageRecord


@dataclass(frozen=True)
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


def decide(records: Sequence[ImageRecord], times: Sequence[float], options: Judging,
           now: float) -> tuple[list[ImageRecord], list[str]]:
    """`records` with their extension advice and growth; notes about the run. `times[i]` is
    when record i was analysed."""
    out = list(records)
    top = [i for i, record in enumerate(out) if _growing(record)]
    items = [(out[i].path or "", out[i].usage) for i in top]
    advice = advise([(path, usage) for path, usage in items if usage is not None],
                    options.extend)
    for i, extension in zip(top, advice):
        usage = out[i].usage
        if extension is not None and usage is not None:
            out[i] = replace(out[i], usage=replace(usage, extension=extension))
    if options.growth is None:
        return out, []
    samples: list[DiskSample] = []
    owners: list[int] = []
    for i in top:
        record, usage = out[i], out[i].usage
        identity = identity_of_path(record.path or "")
        if usage is None or identity is None:
            continue
        samples.append(DiskSample(record.label_path, list(identity), usage, times[i]))
        owners.append(i)
    growths, notes = options.growth.update(samples, now)
    for i, growth in zip(owners, growths):
        usage = out[i].usage
        assert usage is not None
        out[i] = replace(out[i], usage=replace(usage, growth=growth))
    return out, notes
