"""Backbones and heads: shapes for CNN and ViT tokens, local pretrained weights, clear errors."""

import pytest
import timm
import torch

from fastmlic.config import ModelConfig
from fastmlic.models import build_model


@pytest.mark.parametrize("backbone,size", [("test_resnet", 64), ("test_vit", 160), ("test_convnext", 64)])
@pytest.mark.parametrize("head", ["linear", "label_attention"])
def test_heads_on_cnn_and_vit_backbones(backbone, size, head):
    model = build_model(ModelConfig(backbone=backbone, head=head, embed_dim=32, heads=4), 7)
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(3, 3, size, size).to(memory_format=torch.channels_last)
    out = model(images, return_attention=True)
    assert out["logits"].shape == (3, 7)
    h, w = out["grid"]
    if head == "label_attention":
        features, attn = out["label_features"], out["attention"]
        assert features.shape == (3, 7, 32)
        assert attn.shape == (3, 7, h * w)  # one weight per cell of the feature grid
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, 7))
    loss = out["logits"].sum() + (out["label_features"].sum() if "label_features" in out else 0)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("head."))


def test_backbone_loads_weights_from_a_local_file(tmp_path):
    source = timm.create_model("test_resnet", num_classes=11)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model = build_model(ModelConfig(backbone="test_resnet", pretrained_path=str(tmp_path / "weights.pth")), 5)
    loaded = model.backbone.model.state_dict()
    for name, value in source.state_dict().items():
        if not name.startswith("fc."):  # the classifier is replaced by ours
            torch.testing.assert_close(loaded[name], value)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model(ModelConfig(backbone="test_resnet", pretrained_path=str(tmp_path / "missing.pth")), 5)


def test_unknown_backbone_names_close_ones():
    with pytest.raises(ValueError, match="resnet50x.*not a timm model; similar: .*resnet50"):
        build_model(ModelConfig(backbone="resnet50x"), 5)


def test_features_keep_the_grid_of_a_non_square_map():
    model = build_model(ModelConfig(backbone="test_resnet", head="label_attention", embed_dim=32, heads=4), 5)
    images = torch.randn(2, 3, 64, 160).to(memory_format=torch.channels_last)
    features = model.backbone(images)
    fmap = model.backbone.model.forward_features(images)  # [B, D, H, W]
    assert features.grid == tuple(fmap.shape[-2:]) and features.grid[0] != features.grid[1]
    torch.testing.assert_close(features.as_map(), fmap)  # tokens are the map, row-major, no copy needed
    out = model(images, return_attention=True)
    assert out["grid"] == features.grid and out["attention"].shape == (2, 5, fmap.shape[-2] * fmap.shape[-1])
