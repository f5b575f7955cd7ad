"""Budget repair and re-fill of a final structure (docs/search.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bipeft_core.types import ModuleSpec

__all__ = ["refill_to_budget", "repair_to_budget", "structure_count"]


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
        if spec.is_matrix and rank is not None:
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


def refill_to_budget(
    specs: Sequence[ModuleSpec], choices: Mapping[int, int | None], scores: Sequence[float], budget: int
) -> tuple[dict[int, int | None], list[str]]:
    """Add back what ``budget`` still holds: walk every module by score
    descending (the score is importance per parameter) and give it the
    largest candidate rank that fits in what is left: a module not in the
    structure is added (a vector module when its count fits), a kept matrix
    module is raised to a higher rank. One walk leaves room for nothing
    else, since what is left only shrinks. Returns the new choices and a
    log of every addition (empty if nothing fitted)."""
    out = dict(choices)
    count = structure_count(specs, out)
    log: list[str] = []
    for i in sorted(range(len(specs)), key=lambda j: (-scores[j], j)):
        room = budget - count
        if room <= 0:
            break
        spec = specs[i]
        if i in out:
            current = out[i]
            if not spec.is_matrix or current is None:
                continue
            now = spec.count(current)
            higher = [r for r in spec.ranks if r > current and spec.count(r) - now <= room]
            if higher:
                rank = max(higher)
                log.append(f"raised {spec.id} from rank {current} to {rank} (+{spec.count(rank) - now:,})")
                count += spec.count(rank) - now
                out[i] = rank
        elif spec.is_matrix:
            fits = [r for r in spec.ranks if spec.count(r) <= room]
            if fits:
                rank = max(fits)
                out[i] = rank
                count += spec.count(rank)
                log.append(f"added {spec.id} at rank {rank} (+{spec.count(rank):,})")
        elif spec.count(None) <= room:
            out[i] = None
            count += spec.count(None)
            log.append(f"added {spec.id} (+{spec.count(None):,})")
    return out, log
