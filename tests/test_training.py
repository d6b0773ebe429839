from __future__ import annotations

import numpy as np
import pytest
import torch

from headstart import ImageClassifier, TrainConfig
from headstart.backbones.image import block_groups
from headstart.errors import DataError, HeadstartError


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, after) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def _fit_and_diff(folder, tiny_kwargs, monkeypatch, **overrides):
    """Train, capturing the backbone weights right after they are built."""
    import headstart.classifiers.image as image_mod

    captured = {}
    real = image_mod.run_image_recipe

    def spy(model, *args, **kwargs):
        captured["before"] = _snapshot(model.backbone)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(image_mod, "run_image_recipe", spy)
    clf = ImageClassifier(**{**tiny_kwargs, **overrides}).fit(folder)
    return clf, _changed(captured["before"], _snapshot(clf.model_.backbone))


def test_linear_probe_really_freezes_the_backbone(folder, tiny_kwargs, monkeypatch):
    clf, changed = _fit_and_diff(folder, tiny_kwargs, monkeypatch, recipe="linear-probe", epochs=3)
    assert changed == set()
    assert clf.history_ == []  # a linear head is solved, not trained by epochs
    assert clf.head_info_["kind"].startswith("logistic regression")


def test_fine_tune_changes_only_the_top_blocks_and_keeps_bn_statistics(folder, tiny_kwargs, monkeypatch):
    clf, changed = _fit_and_diff(folder, tiny_kwargs, monkeypatch, recipe="fine-tune", unfreeze_blocks=1, patience=None)
    groups = block_groups(clf.model_.backbone)
    top = set(groups[-1])
    assert changed, "the top block must train"
    assert {k for k in changed} <= top, f"frozen layers changed: {sorted(changed - top)[:5]}"
    assert not any(k.endswith(("running_mean", "running_var")) for k in changed)
    phases = [r["phase"] for r in clf.history_]
    assert phases[:2] == ["fine-tune"] * 2 and set(phases[2:]) == {"fine-tune refit"}  # held-out fold, then every row


def test_full_recipe_trains_the_lowest_layers_too(folder, tiny_kwargs, monkeypatch):
    clf, changed = _fit_and_diff(folder, tiny_kwargs, monkeypatch, recipe="full", epochs=1)
    assert set(block_groups(clf.model_.backbone)[0]) & changed


def test_learns_and_reports_metrics(folder, tiny_kwargs):
    # from random weights only training the whole network can learn; colours are easy
    trained = ImageClassifier(**{**tiny_kwargs, "epochs": 10, "lr": 1e-2}, recipe="full", label_smoothing=0.0).fit(folder)
    m = trained.val_metrics_
    assert m["n"] == 5 and set(m) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix", "labels"}
    assert m["accuracy"] >= 0.8  # chance is 1/3
    assert trained.classes_ == ["blue", "green", "red"]
    assert sum(map(sum, m["confusion_matrix"])) == 5


def test_same_seed_same_metrics(folder, tiny_kwargs):
    a = ImageClassifier(**tiny_kwargs, augment="classic", recipe="fine-tune").fit(folder)
    b = ImageClassifier(**tiny_kwargs, augment="classic", recipe="fine-tune").fit(folder)
    assert a.history_ and [r["val_loss"] for r in a.history_] == [r["val_loss"] for r in b.history_]
    assert a.val_metrics_["accuracy"] == b.val_metrics_["accuracy"]
    pa, pb = a.predict_proba(folder), b.predict_proba(folder)
    np.testing.assert_array_equal(pa, pb)


def test_early_stopping_restores_best_epoch(folder, tiny_kwargs):
    clf = ImageClassifier(**{**tiny_kwargs, "head_epochs": 0, "epochs": 30, "lr": 1e-6}, recipe="linear-probe", patience=2,
                          hidden=(8,), val_split=0.25)
    clf.fit(folder)
    # 1e-6 learns nothing measurable: stops after patience epochs, well before 30
    held_out = [r for r in clf.history_ if r["phase"] == "head"]
    assert len(held_out) < 30
    best = max(held_out, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert clf.val_metrics_["accuracy"] == pytest.approx(best["val_accuracy"])


def test_non_finite_loss_stops_with_a_message(folder, tiny_kwargs):
    with pytest.raises(HeadstartError, match="lower the learning rate"):
        ImageClassifier(**{**tiny_kwargs, "lr": 1e30}, optimizer="sgd", recipe="full").fit(folder)


def test_class_weight_balanced_and_head_layers(folder, tiny_kwargs):
    clf = ImageClassifier(**tiny_kwargs, class_weight="balanced", hidden=(16,), dropout=0.5, recipe="linear-probe")
    clf.fit(folder)
    linears = [m for m in clf.model_.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears][-1] == (16, 3)


def test_cache_views_and_flatten_pooling(folder, tiny_kwargs):
    clf = ImageClassifier(**{**tiny_kwargs, "epochs": 1}, cache_views=3, pooling="flatten", recipe="linear-probe")
    clf.fit(folder)
    assert clf.model_.backbone(torch.zeros(1, 3, 32, 32)).ndim == 4  # C x H x W, flattened by the head


def test_separate_validation_folder(folder, tmp_path, tiny_kwargs):
    from conftest import make_folder

    val = make_folder(tmp_path / "val", per_class=2, seed=7)
    clf = ImageClassifier(**tiny_kwargs).fit(folder, val)
    assert clf.val_metrics_["n"] == 6 and clf.data_summary_["train"]["n"] == 24


def test_single_class_and_empty_class_errors(tmp_path, tiny_kwargs):
    from headstart.errors import DataError

    from conftest import make_folder

    one = make_folder(tmp_path / "one", per_class=6, classes=("red",))
    with pytest.raises(DataError, match="only one class"):
        ImageClassifier(**tiny_kwargs).fit(one)
    two = make_folder(tmp_path / "two", per_class=6, classes=("red", "blue"))
    (two / "green").mkdir()
    with pytest.raises(DataError, match="'green'.*no training images"):
        ImageClassifier(**tiny_kwargs).fit(two)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"recipe": "magic"}, "recipe must be one of"), ({"epochs": 0}, "epochs must be > 0"),
     ({"augment": "heavy"}, "augment must be one of"), ({"val_split": 1.5}, "val_split"),
     ({"dropout": 1.0}, "dropout"), ({"class_weight": "auto"}, "class_weight")],
)
def test_config_validation(kwargs, match):
    with pytest.raises(HeadstartError, match=match):
        ImageClassifier(**kwargs)


def test_config_round_trips_json():
    import json

    cfg = TrainConfig(recipe="full", epochs=3, head={"hidden": [8], "dropout": 0.1, "pooling": "avg"})
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(HeadstartError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"epoch": 3})


def test_weight_average_swaps_in_and_out():
    from headstart.training.loop import WeightAverage

    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    avg = WeightAverage(layer, decay=0.5)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    avg.update()  # warm-up decay (1+1)/(10+1) = 0.18 < 0.5: shadow = 0.82
    with avg.applied():
        assert torch.allclose(layer.weight, torch.full_like(layer.weight, 1 - 2 / 11))
    assert torch.equal(layer.weight, torch.ones_like(layer.weight))


def test_ema_training_keeps_the_averaged_weights(folder, tiny_kwargs):
    clf = ImageClassifier(**tiny_kwargs, ema=0.9, recipe="linear-probe", hidden=(8,), val_split=0.25).fit(folder)
    assert clf.config.ema == 0.9
    best = max((r for r in clf.history_ if r["phase"] == "head"), key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert clf.val_metrics_["accuracy"] == pytest.approx(best["val_accuracy"])
    with pytest.raises(HeadstartError, match="ema must be in"):
        ImageClassifier(ema=1.0)


def test_few_photos_per_class_compare_prototypes_and_the_saved_model_round_trips(tmp_path, tiny_kwargs):
    from conftest import make_folder
    from headstart import load

    folder = make_folder(tmp_path / "data", per_class=6)
    clf = ImageClassifier(**tiny_kwargs).fit(folder)  # auto, 6 photos per class: no fine-tune
    assert [t["recipe"] for t in clf.tried_] == ["linear-probe", "prototype", "fine-tune"]
    assert "skipped" in clf.tried_[2] and clf.recipe_ in ("prototype", "linear-probe")
    assert sum(bool(t.get("kept")) for t in clf.tried_) == 1
    asked = ImageClassifier(**tiny_kwargs, recipe="prototype").fit(folder)
    assert asked.recipe_ == "prototype" and asked.protocol_["kind"] == "cross-validation"
    asked.save(tmp_path / "m")
    again = load(tmp_path / "m")
    images = sorted(folder.rglob("*.png"))[:5]
    np.testing.assert_allclose(again.predict_proba(images), asked.predict_proba(images), atol=1e-5)
    with pytest.raises(HeadstartError, match="prototype recipe is a linear head"):
        ImageClassifier(**tiny_kwargs, recipe="prototype", hidden=(8,)).fit(folder)


def test_one_photo_per_class_needs_a_validation_set_and_then_trains(tmp_path, tiny_kwargs):
    from conftest import make_folder
    from headstart.errors import DataError

    one = make_folder(tmp_path / "one", per_class=1)
    with pytest.raises(DataError, match="single training example.*--val"):
        ImageClassifier(**tiny_kwargs).fit(one)
    val = make_folder(tmp_path / "val", per_class=2, seed=4)
    clf = ImageClassifier(**tiny_kwargs).fit(one, val=val)  # C cannot be cross-validated: a fixed one
    assert clf.protocol_["kind"] == "given" and clf.val_metrics_["n"] == 6
    assert clf.recipe_ in ("prototype", "linear-probe")


def test_evaluation_keeps_what_it_measured_and_refuses_unreadable_data(trained, folder, tmp_path):
    from conftest import COLORS, make_image

    ev = trained.evaluation(folder)
    assert ev.metrics == trained.evaluate(folder)
    assert len(ev.items) == len(ev.labels) == len(ev.probs) == ev.metrics["n"]
    assert np.allclose(ev.probs, trained._probabilities(ev.logits)) and ev.unknown_scores is None
    broken = tmp_path / "broken"
    for name in trained.classes_:
        (broken / name).mkdir(parents=True)
        make_image(broken / name / "a.png", COLORS[name], seed=1)
        data = (broken / name / "a.png").read_bytes()
        (broken / name / "a.png").write_bytes(data[: len(data) // 3])  # a true header, the pixels cut off
    with pytest.raises(DataError, match="nothing to evaluate"):
        trained.evaluate(broken)


def test_the_optimizer_updates_every_parameter_in_one_fused_step_where_it_can():
    from headstart.training.loop import make_optimizer, param_groups

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    for name in ("adam", "adamw", "sgd"):
        opt = make_optimizer(name, param_groups(model.named_parameters(), 1e-2, 0.01))
        assert opt.defaults.get("fused") is True, name
        before = [p.detach().clone() for p in model.parameters()]
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
        opt.zero_grad()
    # the same updates as the one-tensor-at-a-time optimizer
    a, b = (torch.nn.Linear(4, 3) for _ in range(2))
    b.load_state_dict(a.state_dict())
    fused = make_optimizer("adamw", param_groups(a.named_parameters(), 1e-2, 0.01))
    plain = torch.optim.AdamW(param_groups(b.named_parameters(), 1e-2, 0.01), foreach=False)
    x = torch.randn(6, 4)
    for _ in range(3):
        for m, o in ((a, fused), (b, plain)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    torch.testing.assert_close(a.weight, b.weight, atol=1e-6, rtol=1e-5)
    # parameters the fused kernels cannot take (on the meta device): the plain optimizer
    meta = torch.nn.Linear(4, 2, device="meta")
    assert not make_optimizer("adamw", param_groups(meta.named_parameters(), 1e-2, 0.0)).defaults.get("fused")
