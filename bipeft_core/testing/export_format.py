"""The contract of :class:`~bipeft_core.interfaces.ExportFormat`, as pytest
tests a plugin author subclasses::

    from bipeft_core.testing import ExportFormatContract

    class TestMyFormat(ExportFormatContract):
        export_format = MyFormat()
        plugins = (my_plugin_module,)  # what registers it, if anything

Each test exports three structures on a tiny random-weight BERT with trained-
looking weights (LoRA only, a mix of LoRA, Adapter-LR, BitFit and LNFit from
the ``s2`` space, and full fine-tuning): a structure the format refuses
must be refused by :meth:`~ExportFormat.prepare` too (with a
``StructureError``) and leave no folder behind; one it accepts must export,
list its weights file's checksum in ``export.json`` and, when the format is
read back (``weights_file`` set), load with ``load_peft`` to the same logits.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from bipeft_core.errors import StructureError
from bipeft_core.interfaces import ExportFormat
from bipeft_core.plugins import Plugins, load_plugins
from bipeft_core.registry import normalise_name
from bipeft_core.structure import PeftModel, Structure
from bipeft_core.targets import backbone_param_count, find_target_map
from bipeft_core.testing._common import expect
from bipeft_core.testing.fixtures import tiny_batch, tiny_model

__all__ = ["ExportFormatContract", "export_structures"]


def _trained_looking(pm: PeftModel, seed: int) -> PeftModel:
    g = torch.Generator().manual_seed(seed)
    params = dict(pm.model.named_parameters())
    trainable = list(pm.peft.parameters()) + [params[n] for n in pm.head_names]
    if pm.structure.full:
        trainable = [p for p in pm.model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in trainable:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return pm


def export_structures(plugins: Plugins, family: str = "bert") -> dict[str, PeftModel]:
    """Three trained-looking bipeft models on a tiny ``family`` model: ``lora``
    (LoRA at ranks 4, 1, 8), ``mixed`` (LoRA, Adapter-LR, BitFit, LNFit) and
    ``full`` (full fine-tuning)."""
    out: dict[str, PeftModel] = {}
    for i, kind in enumerate(("lora", "mixed", "full")):
        model = tiny_model(family)
        specs = plugins.spaces.get("s2").modules(model, find_target_map(model, plugins.target_maps),
                                                 plugins.peft_modules)
        by_type: dict[str, list[int]] = {}
        for s in specs:
            by_type.setdefault(s.type, []).append(s.index)
        if kind == "lora":
            choices: dict[int, int | None] = dict(zip(by_type["lora"][:3], (4, 1, 8)))
        elif kind == "mixed":
            choices = {by_type["lora"][0]: 4, by_type["adapter_lr"][0]: 4, by_type["bitfit"][1]: None,
                       by_type["lnfit"][0]: None}
        if kind == "full":
            structure = Structure(entries=(), full=True, backbone_params=backbone_param_count(model))
        else:
            structure = Structure.from_choices(specs, choices, space="s2")
        out[kind] = _trained_looking(structure.build(model, plugins.peft_modules), seed=i + 1)
    return out


def _logits(model: Any, batch: Any) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


class ExportFormatContract:
    """Subclass and set :attr:`export_format`; :attr:`plugins` are passed to
    ``load_plugins`` (the plugin that registers the format, if it is not
    installed through the ``bipeft`` entry point)."""

    export_format: ClassVar[Any] = None
    plugins: ClassVar[Iterable[object]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    """Packages the format needs (``("peft",)``): the tests are skipped without them."""
    atol: ClassVar[float] = 1e-5

    @pytest.fixture(scope="class")
    def loaded(self) -> Plugins:
        for package in self.requires:
            pytest.importorskip(package)
        return load_plugins(list(self.plugins))

    @pytest.fixture(scope="class")
    def fmt(self, loaded: Plugins) -> ExportFormat:
        fmt = self.export_format() if isinstance(self.export_format, type) else self.export_format
        expect(isinstance(fmt, ExportFormat), f"{self.export_format!r} is not a bipeft_core.ExportFormat")
        return fmt

    @pytest.fixture(scope="class")
    def structures(self, loaded: Plugins) -> dict[str, PeftModel]:
        return export_structures(loaded)

    def test_declares_a_name_and_its_card(self, fmt: ExportFormat, loaded: Plugins) -> None:
        name = normalise_name(fmt.name)
        expect(name != "auto", "an export format cannot be called 'auto': format='auto' chooses")
        expect(name in loaded.export_formats, f"format {name!r} is not registered by the plugins given")
        expect(fmt.auto_preference is None or isinstance(fmt.auto_preference, int),
               f"{name}.auto_preference is {fmt.auto_preference!r}, not an int or None")
        expect(isinstance(fmt.library_name, str) and fmt.library_name != "", f"{name}.library_name is empty")
        expect(all(isinstance(t, str) for t in fmt.card_tags), f"{name}.card_tags must be strings")

    @pytest.mark.parametrize("kind", ["lora", "mixed", "full"])
    def test_refusal_agrees_with_prepare_and_a_refused_export_writes_nothing(
            self, fmt: ExportFormat, loaded: Plugins, structures: dict[str, PeftModel], kind: str,
            tmp_path: Path) -> None:
        from bipeft_core.export import export

        pm = structures[kind]
        why = fmt.refusal(pm, loaded.peft_modules)
        expect(why is None or (isinstance(why, str) and why != ""),
               f"{fmt.name}.refusal returned {why!r}: give None or a sentence")
        if why is not None:
            with pytest.raises(StructureError):
                export(pm, tmp_path / "out", format=fmt.name, plugins=loaded)
            expect(not (tmp_path / "out").exists(), f"a refused {fmt.name} export wrote {tmp_path / 'out'}")
            return
        out = export(pm, tmp_path / "out", format=fmt.name, plugins=loaded)
        import json

        info = json.loads((out / "export.json").read_text())
        expect(info["format"] == fmt.name, f"export.json names format {info['format']!r}, not {fmt.name!r}")
        for name in info["files"]:
            expect((out / name).is_file(), f"export.json lists {name}, which the {fmt.name} export did not write")
        if fmt.weights_file is None:
            return
        expect(fmt.weights_file in info["files"],
               f"{fmt.name}.weights_file {fmt.weights_file!r} is not the weights file export.json checks")
        from bipeft_core.export import load_peft

        fresh = tiny_model("bert")
        loaded_back = load_peft(fresh, out, plugins=loaded)
        batch = tiny_batch(pm.model)
        torch.testing.assert_close(_logits(loaded_back, batch), _logits(pm, batch), atol=self.atol, rtol=0)
