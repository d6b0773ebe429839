from __future__ import annotations

import pytest
import torch

from headstart.backbones.image import create_backbone, list_backbones, read_state_dict, resolve_spec
from headstart.errors import BackboneError


def test_registry_lists_embedded_offline_backbones():
    names = {s.name: s for s in list_backbones()}
    for i, size in enumerate((224, 240, 260)):
        spec = names[f"efficientnet_lite{i}"]
        assert spec.offline and spec.preprocessing.input_size == size
        assert spec.preprocessing.mean == (0.5, 0.5, 0.5) and spec.preprocessing.interpolation == "bicubic"


def test_unknown_backbone_error():
    with pytest.raises(BackboneError, match="unknown backbone 'resnet9000'.*efficientnet_lite0"):
        resolve_spec("resnet9000")


def test_any_timm_name_resolves_with_its_preprocessing():
    spec = resolve_spec("resnet18")
    assert spec.arch == "resnet18" and spec.preprocessing.input_size == 224 and not spec.offline


def test_weights_file_by_name_and_by_position(tmp_path):
    from safetensors.torch import save_file

    spec = resolve_spec("tiny-cnn")
    src = create_backbone(spec, "none")
    sd = src.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    a = create_backbone(spec, str(tmp_path / "w.safetensors"))
    assert all(torch.equal(a.state_dict()[k], sd[k]) for k in sd)
    # other names, same order and shapes (how the embedded Lite files are stored) + a classifier
    renamed = {f"_m{i}": v for i, v in enumerate(sd.values())}
    renamed["_fc.weight"] = torch.zeros(10, 4)
    torch.save(renamed, tmp_path / "w.pth")
    b = create_backbone(spec, str(tmp_path / "w.pth"))
    assert all(torch.equal(b.state_dict()[k], sd[k]) for k in sd)


def test_weights_that_do_not_fit_name_the_mismatch(tmp_path):
    spec = resolve_spec("tiny-cnn")
    torch.save({"conv_stem.weight": torch.zeros(1, 1, 1, 1)}, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="do not fit this architecture"):
        create_backbone(spec, str(tmp_path / "bad.pth"))
    with pytest.raises(BackboneError, match="does not exist"):
        create_backbone(spec, str(tmp_path / "missing.pth"))


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(BackboneError, match="plain state dict"):
        read_state_dict(tmp_path / "evil.pth")


def test_no_network_no_weights_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="--weights FILE.*--weights none"):
        create_backbone(resolve_spec("resnet18"))
