"""Algorithm I of paper 002 (UNet-P, adaptive model partitioning): cut a layer list into consecutive sub-models by
cumulative complexity.

``papers/002_55a0f2308920d63a.txt``, Sect. 3.2, Algorithm I: target = total complexity / number of partitions; walk
the layers adding each layer's complexity; when the running sum exceeds the target, record the current layer's index
as a cut and start again; sub-model ``j`` is ``layers[cut_j : cut_{j+1}]``. Read literally, the algorithm has three
defects, fixed here (``docs/partitioning.md``):

1. it resets the running sum to 0 at a cut although the current layer starts the next sub-model: here the new
   sub-model's sum starts with that layer's complexity;
2. its other cut condition, "or ``current_partition`` exceeds the maximum number of partitions", would cut at every
   later layer once the count is exceeded: here cutting stops after ``max_partitions - 1`` cuts, so there are never
   more than ``max_partitions`` sub-models (the last one takes the rest);
3. its final index is "the index of the last layer" with an exclusive end, which drops the last layer: here the last
   sub-model ends after the last layer, and a cut never makes an empty sub-model.

One more rule keeps sub-models meaningful: a cut is made only before a layer of nonzero complexity. (The running sum
can only exceed the target at a zero-complexity layer - pooling, concatenation - when one layer alone already
exceeded it; cutting there would make a sub-model of no complexity, e.g. a lone pooling layer.)

Result: consecutive, non-empty, covering ranges, at most ``max_partitions`` of them, and every sub-model except the
last has a complexity <= target or exceeds it through a single layer (its only layer of nonzero complexity).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["partition_points"]


def partition_points(complexities: Sequence[float], max_partitions: int) -> list[tuple[int, int]]:
    """Algorithm I: half-open ``(start, end)`` layer ranges, consecutive and covering ``range(len(complexities))``.

    Args:
        complexities: per-layer complexity (parameters or MACs), >= 0, in layer order.
        max_partitions: the paper's ``max_partitions`` (also its "number of partitions" for the target), between 1
            and the number of layers. Fewer sub-models come out when the complexity is concentrated in few layers.

    Raises:
        ValueError: naming the bad value, for an empty or negative/non-finite ``complexities`` or a
            ``max_partitions`` that is not an integer in ``[1, len(complexities)]``.
    """
    n = len(complexities)
    if n == 0:
        raise ValueError("complexities is empty: there are no layers to partition.")
    if isinstance(max_partitions, bool) or not isinstance(max_partitions, int) or not 1 <= max_partitions <= n:
        raise ValueError(
            f"max_partitions must be an integer between 1 and the number of layers ({n}), "
            f"got max_partitions={max_partitions!r}."
        )
    bad = [(i, c) for i, c in enumerate(complexities) if not (math.isfinite(c) and c >= 0)]
    if bad:
        raise ValueError(f"layer complexities must be finite and >= 0, got (index, value) {bad[:3]}.")
    target = sum(complexities) / max_partitions
    cuts = [0]
    current = 0.0
    for i, complexity in enumerate(complexities):
        if complexity > 0 and current + complexity > target and i > cuts[-1] and len(cuts) < max_partitions:
            cuts.append(i)
            current = 0.0
        current += complexity
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:]))
