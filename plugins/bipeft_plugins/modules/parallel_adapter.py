"""Parallel adapter (He et al. 2022): ``up(gelu(down(x_in)))``, fed with the
FFN block's input and added to its output (scale 1). One per block (roles
``ffn_in`` and ``ffn_out``; where a block has two ``ffn_in`` linears, as
Llama's gate and up projections, their shared input is used). Count
``r·d_in + r + r·d_out + d_out``."""

from __future__ import annotations

from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import PeftModuleType
from bipeft_core.modules import input_of
from bipeft_core.types import Shape
from bipeft_plugins.modules._bottleneck import BottleneckModule, bottleneck_count


class ParallelAdapterModule(BottleneckModule):
    def __init__(self, spec, ranks, **options) -> None:
        super().__init__(spec, ranks, spec.shape.in_features, spec.shape.out_features, **options)
        self._x = None

    def _register(self, model):
        def capture(_mod, args, kwargs):
            self._x = input_of(args, kwargs) if self.enabled else None
            return None

        def add(_mod, args, kwargs, output):
            x, self._x = self._x, None
            if not self.enabled or x is None:
                return None
            self.calls += 1
            return output + self._apply_gate(self.bottleneck(x), output)

        self._hook(model, self.spec.site("ffn_in"), capture, pre=True)
        self._hook(model, self.spec.site("ffn_out"), add)


class ParallelAdapter(PeftModuleType):
    name = "parallel_adapter"
    kind = "matrix"
    roles = ("ffn_in", "ffn_out")

    def shape(self, sites, **options):
        return Shape(in_features=sites["ffn_in"].in_features, out_features=sites["ffn_out"].out_features)

    def param_count(self, shape, rank, **options):
        return bottleneck_count(shape.in_features, shape.out_features, int(rank))

    def supernet(self, spec, model):
        return ParallelAdapterModule(spec, spec.ranks, **spec.option_dict())

    def discrete(self, spec, model, rank):
        return ParallelAdapterModule(spec, (rank,), **spec.option_dict())


@hookimpl
def bipeft_register_peft_modules(registry):
    registry.add(ParallelAdapter())
