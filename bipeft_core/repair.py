"""Budget repair of a final structure (ALGORITHM.md §8)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bipeft_core.space import ModuleSpec

__all__ = ["repair_to_budget", "structure_count"]


def structure_count(specs: Sequence[ModuleSpec], choices: Mapping[int, int | None]) -> int:
    return sum(specs[i].count(r) for i, r in choices.items())


def repair_to_budget(
    specs: Sequence[ModuleSpec], choices: Mapping[int, int | None], scores: Sequence[float], budget: int
) -> tuple[dict[int, int | None], list[str]]:
    """Bring a structure within ``budget``: walk the kept modules by score
    ascending and lower a matrix module to the largest smaller candidate rank
    that suffices, else remove it, until the count fits. Returns the new
    choices and a log of what changed (empty if nothing did)."""
    out = dict(choices)
    count = structure_count(specs, out)
    log: list[str] = []
    for i in sorted(out, key=lambda j: (scores[j], j)):
        if count <= budget:
            break
        spec, rank = specs[i], out[i]
        excess = count - budget
        lowered = None
        if spec.is_matrix:
            now = spec.count(rank)
            for r in sorted((r for r in spec.ranks if r < rank), reverse=True):
                if now - spec.count(r) >= excess:
                    lowered = r
                    break
        if lowered is not None:
            count -= spec.count(rank) - spec.count(lowered)
            out[i] = lowered
            log.append(f"lowered {spec.id} from rank {rank} to {lowered}")
        else:
            count -= spec.count(rank)
            del out[i]
            log.append(f"removed {spec.id}")
    return out, log
