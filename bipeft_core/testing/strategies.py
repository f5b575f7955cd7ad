"""Hypothesis strategies for property tests of module types and strategies:
candidate rank sets, shapes, specs of a module type at synthetic positions
(:func:`module_specs`), and small synthetic search spaces for selectors and
triggers (:func:`search_spaces`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from bipeft_core.interfaces import PeftModuleType
from bipeft_core.testing.fixtures import search_spec, synthetic_sites, synthetic_spec
from bipeft_core.types import ModuleSpec, Shape

__all__ = ["module_specs", "rank_sets", "search_spaces", "shapes"]


def _multiples(draw: Any, lo: int, hi: int, multiple_of: int) -> int:
    lo_k = max(1, -(-lo // multiple_of))
    hi_k = max(lo_k, hi // multiple_of)
    return multiple_of * draw(st.integers(lo_k, hi_k))


@st.composite
def rank_sets(draw: Any, *, min_rank: int = 1, max_rank: int = 16, min_size: int = 1,
              max_size: int = 4) -> tuple[int, ...]:
    """Valid candidate rank sets: distinct whole numbers in
    ``[min_rank, max_rank]``, sorted ascending."""
    if min_rank < 1:
        raise ValueError(f"candidate ranks are >= 1, got min_rank={min_rank}")
    max_size = min(max_size, max_rank - min_rank + 1)
    values = draw(st.lists(st.integers(min_rank, max_rank), min_size=min(min_size, max_size),
                           max_size=max_size, unique=True))
    return tuple(sorted(values))


@st.composite
def shapes(draw: Any, *, min_features: int = 1, max_features: int = 256, multiple_of: int = 1) -> Shape:
    """:class:`Shape` values (in and out features drawn independently, each
    a multiple of ``multiple_of``)."""
    return Shape(in_features=_multiples(draw, min_features, max_features, multiple_of),
                 out_features=_multiples(draw, min_features, max_features, multiple_of))


@st.composite
def module_specs(
    draw: Any, mtype: PeftModuleType, *, min_features: int = 1, max_features: int = 128,
    multiple_of: int = 1, min_rank: int = 1, max_rank: int = 16, max_ranks: int = 4,
    options: Mapping[str, Any] | None = None,
) -> ModuleSpec:
    """Specs of ``mtype`` at synthetic positions (see :func:`synthetic_sites`)
    with drawn widths and candidate ranks; counts from the type's own
    function."""
    d = _multiples(draw, min_features, max_features, multiple_of)
    inner = _multiples(draw, min_features, max_features, multiple_of)
    fin = _multiples(draw, min_features, max_features, multiple_of)
    fout = _multiples(draw, min_features, max_features, multiple_of)
    sites = synthetic_sites(mtype, d_model=d, inner=inner, in_features=fin, out_features=fout)
    ranks = draw(rank_sets(min_rank=min_rank, max_rank=max_rank, max_size=max_ranks)) if mtype.kind == "matrix" else ()
    return synthetic_spec(mtype, sites, ranks, options=options)


@st.composite
def search_spaces(draw: Any, *, min_modules: int = 1, max_modules: int = 12, max_rank: int = 16,
                  max_ranks: int = 4, max_features: int = 64) -> list[ModuleSpec]:
    """Small search spaces for the selector and trigger contracts: lists of
    :func:`~bipeft_core.testing.fixtures.search_spec` modules, matrix or
    vector, with drawn widths and candidate rank sets."""
    n = draw(st.integers(min_modules, max_modules))
    specs = []
    for index in range(n):
        kind = draw(st.sampled_from(("matrix", "vector")))
        fin = draw(st.integers(1, max_features))
        fout = draw(st.integers(1, max_features))
        ranks = draw(rank_sets(max_rank=max_rank, max_size=max_ranks)) if kind == "matrix" else ()
        specs.append(search_spec(index, kind, fin, fout, ranks))
    return specs
