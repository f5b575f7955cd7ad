"""Serial adapter (Houlsby et al. 2019) on the FFN block's output:
``out + up(gelu(down(out)))``. The searched rank is the bottleneck width
``r``; count ``2·r·d + r + d``. Down projection small normal, up projection
and biases zero (output unchanged at initialisation)."""

from __future__ import annotations

from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import PeftModuleType
from bipeft_core.types import Shape
from bipeft_plugins.modules._bottleneck import BottleneckModule, bottleneck_count


class SerialAdapterModule(BottleneckModule):
    def __init__(self, spec, ranks, **options) -> None:
        d = spec.shape.out_features
        super().__init__(spec, ranks, d, d, **options)

    def delta(self, x, output):
        return self.bottleneck(output)


class SerialAdapter(PeftModuleType):
    name = "serial_adapter"
    kind = "matrix"
    roles = ("target",)
    site_kind = "linear"

    def shape(self, sites, **options):
        d = sites["target"].out_features
        return Shape(in_features=d, out_features=d)

    def param_count(self, shape, rank, **options):
        return bottleneck_count(shape.out_features, shape.out_features, int(rank))

    def supernet(self, spec, model):
        return SerialAdapterModule(spec, spec.ranks, **spec.option_dict())

    def discrete(self, spec, model, rank):
        return SerialAdapterModule(spec, (rank,), **spec.option_dict())


@hookimpl
def bipeft_register_peft_modules(registry):
    registry.add(SerialAdapter())
