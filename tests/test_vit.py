"""The ViT backbone of SIGA_T / VITBA (SPEC_SIGA_T §3.1–3.3) and loading DeiT-style ImageNet weights (§3.9)."""
from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from checkpoint import atomic_save, load_pretrained_vit
from config import make_config
from model import build_model
from modules.vit import ViTBackbone


def tiny_backbone(**overrides) -> ViTBackbone:
    args = dict(img_size=(32, 128), patch_size=4, dim=32, depth=4, heads=2, mlp_ratio=4.0, taps=(1, 2, 3, 4),
                tail_channels=16)
    return ViTBackbone(**{**args, **overrides}).eval()


def test_levels_and_sequence_shapes():
    features = tiny_backbone()(torch.rand(2, 3, 32, 128))
    assert [tuple(level.shape) for level in features.levels] == [(2, 32, 8, 32)] * 5
    assert tuple(features.sequence.shape) == (2, 32, 16)
    assert tiny_backbone(taps=())(torch.rand(1, 3, 32, 128)).levels == ()
    with pytest.raises(ValueError, match="taps"):
        tiny_backbone(taps=(0, 5))


def test_our_forward_is_timms_block_path():
    """The last level (Ẑ) is token_norm of timm's own forward_features (no final norm), CLS dropped; a tap is
    its LayerNorm of the tokens after that block."""
    backbone = tiny_backbone(taps=(2,))
    images = torch.rand(2, 3, 32, 128)
    with torch.no_grad():
        tokens = backbone.vit.forward_features(images)
        after_two = backbone.vit.blocks[:2](backbone.vit._pos_embed(backbone.vit.patch_embed(images)))
        tap, final = backbone(images).levels
    expected = backbone.token_norm(tokens)[:, 1:].transpose(1, 2).reshape(2, 32, 8, 32)
    torch.testing.assert_close(final, expected, rtol=1e-5, atol=1e-6)
    expected_tap = backbone.norm_seg[0](after_two)[:, 1:].transpose(1, 2).reshape(2, 32, 8, 32)
    torch.testing.assert_close(tap, expected_tap, rtol=1e-5, atol=1e-6)


def deit_state(dim: int, depth: int, heads: int) -> dict[str, torch.Tensor]:
    """A DeiT-shaped ImageNet state_dict (224×224, 16×16 patches, 1000 classes) with random values."""
    torch.manual_seed(0)
    deit = VisionTransformer(img_size=224, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads)
    return {k: torch.randn_like(v) for k, v in deit.state_dict().items()}


def test_deit_weights_load_into_the_blocks_and_class_token(tmp_path):
    config = make_config("tiny", model="SIGA_T", vit_depth=12, vit_taps=(2, 4, 6, 8))
    model = build_model(config)
    before = {k: v.clone() for k, v in model.backbone.vit.state_dict().items()}
    state = deit_state(config.vit_dim, 12, config.vit_heads)
    path = tmp_path / "deit.pth"
    atomic_save({"model": state}, path)
    assert load_pretrained_vit(model, path) == 1 + 12 * 12  # ViT-Base: the 145 tensors of SPEC_SIGA_T T-4
    after = model.backbone.vit.state_dict()
    for key, value in after.items():
        if key == "cls_token" or key.startswith("blocks."):
            assert torch.equal(value, state[key]), key
        else:  # patch embedding and position embedding: other patch size and grid, kept as initialised
            assert torch.equal(value, before[key]), key
    assert "norm.weight" in state and "head.weight" in state  # present in the file, not taken


def test_deit_mismatches_are_clear_errors(tmp_path):
    model = build_model(make_config("tiny", model="VITBA"))
    wide = tmp_path / "wide.pth"
    atomic_save(deit_state(48, 4, 2), wide)
    with pytest.raises(ValueError, match="shapes differ"):
        load_pretrained_vit(model, wide)
    shallow = tmp_path / "shallow.pth"
    atomic_save(deit_state(32, 2, 2), shallow)
    with pytest.raises(ValueError, match="missing keys"):
        load_pretrained_vit(model, shallow)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_pretrained_vit(model, tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="no ViT backbone"):
        load_pretrained_vit(build_model(make_config("tiny", model="TRBA")), wide)
