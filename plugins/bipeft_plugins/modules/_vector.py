"""The shared type of the vector modules (BitFit, LNFit): one vector of the
target's output width, an on/off gate, no rank."""

from __future__ import annotations

from typing import ClassVar

from bipeft_core.interfaces import PeftModuleType
from bipeft_core.types import Shape


class VectorModuleType(PeftModuleType):
    kind = "vector"
    roles = ("target",)
    module_class: ClassVar[type]

    def shape(self, sites, **options):
        s = sites["target"]
        return Shape(in_features=s.in_features, out_features=s.out_features)

    def param_count(self, shape, rank, **options):
        return shape.out_features

    def supernet(self, spec, model):
        return self.module_class(spec)

    def discrete(self, spec, model, rank):
        return self.module_class(spec)
