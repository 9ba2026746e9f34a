import pytest
import torch

from training import checkpoint, data, masks
from training.config import TrainConfig
from training.preprocess import prepare
from training.trainer import Trainer


def fit(tmp_path, autograd=False, **overrides):
    config = TrainConfig(name="wine", dataset="wine", **{"max_epochs": 8, **overrides})
    dataset = data.load("wine")
    prepared = prepare(dataset, config.seed, config.val_fraction, config.test_fraction)
    trainer = Trainer(config, prepared, dataset, tmp_path, progress=False)
    trainer.autograd = trainer.autograd or autograd
    return trainer, trainer.fit()


@pytest.mark.parametrize(("activation", "class_weights"), [("tanh", "none"), ("relu", "balanced")])
def test_cpu_training_is_autograds_bit_for_bit(tmp_path, monkeypatch, activation, class_weights):
    """On CPU gradients come from training/step.py and dropout masks from a helper thread (chunks small enough
    here to cut epochs into pieces): the same weights, history and final generator state as autograd with
    `nn.Dropout` drawing its own masks."""
    monkeypatch.setattr(masks, "CHUNK_DRAWS", 40 * 192)
    settings = {"batch_size": 32, "class_weights": class_weights, "model": {"activation": activation}}
    fast, fast_state = fit(tmp_path / "fast", **settings)
    fast_rng = torch.get_rng_state()
    reference, reference_state = fit(tmp_path / "autograd", autograd=True, **settings)
    assert fast_state.history == reference_state.history
    for key, tensor in reference.model.state_dict().items():
        assert torch.equal(fast.model.state_dict()[key], tensor), key
    assert torch.equal(fast_rng, torch.get_rng_state())


def test_same_seed_same_weights_and_history(tmp_path):
    a, state_a = fit(tmp_path / "a")
    b, state_b = fit(tmp_path / "b")
    assert state_a.history == state_b.history
    for key, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[key]), key
    c, _ = fit(tmp_path / "c", seed=1)
    assert not torch.equal(a.model.state_dict()["layers.0.weight"], c.model.state_dict()["layers.0.weight"])


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_every_optimizer_lowers_the_training_loss(tmp_path, optimizer):
    _, state = fit(tmp_path, optimizer=optimizer, lr=0.01, class_weights="balanced")
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]


def test_checkpoints_rebuild_the_model_alone_and_load_with_weights_only(tmp_path):
    trainer, state = fit(tmp_path)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "state", "rng", "config", "features", "classes", "scaler"} <= set(last)
    assert last["state"]["epoch"] == state.epoch == 8
    best = checkpoint.load(tmp_path / "best.pt")
    assert best["state"]["epoch"] == state.best_epoch
    classifier = checkpoint.rebuild_classifier(best)
    x = torch.randn(5, 13)
    with torch.no_grad():
        expected = torch.softmax(trainer.model.eval()(trainer_scale(trainer, x)), dim=1)
        assert torch.allclose(classifier(x), expected, atol=1e-6)


def trainer_scale(trainer, x):
    scaler = trainer.data.scaler
    return (x - torch.tensor(scaler.mean_, dtype=torch.float32)) / torch.tensor(scaler.scale_, dtype=torch.float32)


def test_early_stopping_stops_after_patience(tmp_path):
    _, state = fit(tmp_path, max_epochs=500, patience=3, lr=0.05)
    assert state.epoch < 500 and state.epoch - state.best_epoch == 3


def test_checkpoints_written_less_often_change_nothing(tmp_path, monkeypatch):
    """Writing `last.pt` at most once per interval is a speed choice only: every epoch (interval 0) or only the
    last one (an interval longer than the run) ends with the same weights, history and best checkpoint."""
    from training import trainer as trainer_module

    runs = {}
    for interval in (0.0, 3600.0):
        monkeypatch.setattr(trainer_module, "CHECKPOINT_INTERVAL_S", interval)
        runs[interval] = fit(tmp_path / str(interval), max_epochs=12, batch_size=32)
    (a, state_a), (b, state_b) = runs.values()
    assert state_a.history == state_b.history and state_a.best_epoch == state_b.best_epoch
    for key, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[key]), key
    best_a, best_b = (checkpoint.load(tmp_path / str(i) / "best.pt") for i in runs)
    assert best_a["state"] == best_b["state"] and best_a["state"]["epoch"] == state_a.best_epoch
    for key, tensor in best_a["model"].items():
        assert torch.equal(tensor, best_b["model"][key]), key
