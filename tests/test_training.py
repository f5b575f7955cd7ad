"""The shared training loop: per-epoch checkpoints that let an interrupted
training continue to exactly the weights and metrics of an uninterrupted one,
and refuse a checkpoint of another training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bipeft_core.errors import TrainingError
from bipeft_core.spec import TrainSpec
from bipeft_core.training import train_model


class Stop(Exception):
    pass


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))


def examples():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g)
    y = x.sum(-1, keepdim=True)
    return [{"x": x[i], "y": y[i]} for i in range(40)]


def loss(model, batch):
    return nn.functional.mse_loss(model(batch["x"]), batch["y"])


def evaluate(model):
    model.eval()
    data = examples()
    with torch.no_grad():
        x = torch.stack([d["x"] for d in data])
        y = torch.stack([d["y"] for d in data])
        value = -float(nn.functional.mse_loss(model(x), y))
    return {"neg_mse": value}


def train(settings, checkpoint=None, on_epoch=None):
    model = make_model()
    torch.manual_seed(7)  # dropout
    out = train_model(model, list(model.parameters()), examples(), settings=settings,
                      collate=lambda f: {k: torch.stack([d[k] for d in f]) for k in f[0]}, loss=loss,
                      evaluate=evaluate, checkpoint=checkpoint, on_epoch=on_epoch)
    return model, out


SETTINGS = TrainSpec(epochs=4, batch_size=8, lr=1e-2, warmup_ratio=0.1, seed=3)


@pytest.mark.parametrize("cut_after", [0, 2])
def test_an_interrupted_training_continues_to_the_same_weights_and_metrics(tmp_path, cut_after):
    ref_model, ref = train(SETTINGS)
    ckpt = tmp_path / "ckpt.pt"

    def cut(epoch, record):
        if epoch == cut_after:
            raise Stop

    with pytest.raises(Stop):
        train(SETTINGS, ckpt, on_epoch=cut)
    assert ckpt.is_file()
    seen = []
    model, out = train(SETTINGS, ckpt, on_epoch=lambda e, r: seen.append(e))
    assert seen == list(range(cut_after + 1, SETTINGS.epochs))  # the finished epochs are not run again
    assert out["epochs"] == ref["epochs"] and out["best_epoch"] == ref["best_epoch"]
    assert out["steps"] == ref["steps"] == 4 * 5
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
    # a best epoch before the cut is restored from the checkpoint
    assert evaluate(model) == evaluate(ref_model)


def test_a_checkpoint_of_another_training_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Stop):
        train(SETTINGS, ckpt, on_epoch=lambda e, r: (_ for _ in ()).throw(Stop()))
    with pytest.raises(TrainingError, match=r"another training .*differs in lr.*delete it"):
        train(TrainSpec(epochs=4, batch_size=8, lr=5e-3, warmup_ratio=0.1, seed=3), ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match=r"corrupt or not bipeft's.*delete it"):
        train(SETTINGS, ckpt)


@pytest.mark.parametrize("first_eligible", [2, 4])
def test_only_an_eligible_epoch_is_kept_as_the_best(first_eligible):
    """A state that does not qualify (AdaLoRA before its rank budget is reached)
    is never restored, however good its metric; with no eligible epoch the
    last state stays."""
    model = make_model()
    calls, states = [], {}

    def falling(m):  # every epoch scores worse than the one before
        calls.append(1)
        return {"score": -float(len(calls))}

    def eligible(m):
        return len(calls) - 1 >= first_eligible

    def snapshot(epoch, record):
        states[epoch] = [p.detach().clone() for p in model.parameters()]

    out = train_model(model, list(model.parameters()), examples(), settings=SETTINGS,
                      collate=lambda f: {k: torch.stack([d[k] for d in f]) for k in f[0]}, loss=loss,
                      evaluate=falling, eligible=eligible, on_epoch=snapshot)
    expected = min(first_eligible, SETTINGS.epochs - 1)
    assert out["best_epoch"] == expected
    assert [r["eligible"] for r in out["epochs"]] == [e >= first_eligible for e in range(SETTINGS.epochs)]
    for a, b in zip(model.parameters(), states[expected]):
        assert torch.equal(a, b)
    if first_eligible < SETTINGS.epochs:  # without the check, epoch 0 (the best score) would be restored
        model2 = make_model()
        calls.clear()
        plain = train_model(model2, list(model2.parameters()), examples(), settings=SETTINGS,
                            collate=lambda f: {k: torch.stack([d[k] for d in f]) for k in f[0]}, loss=loss,
                            evaluate=falling)
        assert plain["best_epoch"] == 0
