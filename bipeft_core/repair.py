"""Budget repair and re-fill of a final structure (docs/search.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bipeft_core.types import ModuleSpec

__all__ = ["refill_to_budget", "repair_to_budget", "smallest_addition", "structure_count"]


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


def smallest_addition(specs: Sequence[ModuleSpec], choices: Mapping[int, int | None]) -> int | None:
    """The fewest parameters any single addition to the structure would
    take: a module not in it at its smallest candidate rank (a vector module
    at its count), or a kept matrix module raised to its next rank. ``None``
    when the whole space is already in the structure at its largest ranks.
    After :func:`refill_to_budget` this is larger than what the budget has
    left, so it says why a structure stops short of its budget."""
    sizes: list[int] = []
    for i, spec in enumerate(specs):
        if i in choices:
            current = choices[i]
            if spec.is_matrix and current is not None:
                now = spec.count(current)
                sizes += [spec.count(r) - now for r in spec.ranks if r > current]
        elif spec.is_matrix:
            sizes += [spec.count(r) for r in spec.ranks]
        else:
            sizes.append(spec.count(None))
    return min(sizes) if sizes else None
