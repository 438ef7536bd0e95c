"""SVTR-Large backbone (SPEC_SIGA_S §3.2): shapes, parameter count, official key names, the Local window mask,
drop-path rates and behaviour, and the attention/block maths against explicit float64 references."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from golden import SHARED, require
from modules.svtr import SVTRLarge, Attention, Block, DropPath, Stage, local_attention_mask

OFFICIAL_PREFIX = "model_one.FeatureExtraction."
SMALL = dict(img_size=(32, 64), embed_dims=(16, 24, 32), depths=(1, 2, 1), num_heads=(2, 3, 4),
             mixers=("Local", "Local", "Global", "Global"), local_window=(3, 5), out_channels=20)


@pytest.fixture(scope="module")
def paper_model() -> SVTRLarge:
    torch.manual_seed(0)
    return SVTRLarge().eval()


def visible_counts(mask: torch.Tensor) -> torch.Tensor:
    """Visible keys per query of an additive 0/−∞ mask [N, N]."""
    return (mask == 0).sum(1)


@pytest.mark.parametrize("batch", [1, 2])
def test_paper_shapes(paper_model, batch):
    with torch.no_grad():
        out = paper_model(torch.randn(batch, 3, 48, 160))
    assert [tuple(level.shape) for level in out.levels] == [(batch, 96, 24, 80), (batch, 192, 12, 40),
                                                            (batch, 256, 6, 40)]
    assert tuple(out.sequence.shape) == (batch, 40, 384)
    assert paper_model.out_channels == 384
    assert paper_model.feature_channels == (96, 192, 256)


def test_parameter_count(paper_model):
    assert sum(p.numel() for p in paper_model.parameters()) == 38_897_344


def test_state_dict_matches_official_keys(paper_model):
    shapes = json.loads(require(SHARED / "official_siga_s_state_dict.json").read_text())
    official = {key[len(OFFICIAL_PREFIX):]: shape for key, shape in shapes.items() if key.startswith(OFFICIAL_PREFIX)}
    state = paper_model.state_dict()
    assert set(state) == set(official)
    assert {key: list(value.shape) for key, value in state.items()} == official


def test_local_mask_window():
    mask = local_attention_mask(12, 40, (7, 11))
    assert mask.shape == (480, 480) and set(mask.unique().tolist()) == {0.0, float("-inf")}
    counts = visible_counts(mask).reshape(12, 40)
    assert counts[0, 0] == counts[11, 39] == 24
    assert counts[5, 20] == 77 and counts.max() == 77
    visible = (mask[5 * 40 + 20] == 0).reshape(12, 40).nonzero()
    assert visible[:, 0].tolist() == sorted(list(range(2, 9)) * 11)
    assert set(visible[:, 1].tolist()) == set(range(15, 26))
    assert visible_counts(local_attention_mask(6, 40, (7, 11))).max() == 66


def test_model_masks_per_stage(paper_model):
    locals_ = [block.mixer.local for stage in (paper_model.blocks1, paper_model.blocks2, paper_model.blocks3)
               for block in stage]
    assert locals_ == [True] * 10 + [False] * 11
    assert torch.equal(paper_model.blocks1.local_mask, local_attention_mask(12, 40, (7, 11)))
    assert torch.equal(paper_model.blocks2.local_mask, local_attention_mask(6, 40, (7, 11)))
    assert paper_model.blocks3.local_mask is None
    assert not any("mask" in key for key in paper_model.state_dict())


def test_global_blocks_unmasked():
    """A stage hands the mask to its Local blocks only: its Global block equals an unmasked block."""
    torch.manual_seed(1)
    blocks = [Block(16, 2, True, 2.0, 0.0), Block(16, 2, False, 2.0, 0.0)]
    stage = Stage(blocks, (4, 12), (3, 3)).double().eval()
    mask = local_attention_mask(4, 12, (3, 3)).double()
    x = torch.randn(2, 48, 16, dtype=torch.float64)
    with torch.no_grad():
        after_local = blocks[0](x, mask)
        expected = blocks[1](after_local, None)
        assert torch.equal(stage(x), expected)
        assert not torch.allclose(blocks[1](after_local, mask), expected)
        assert not torch.allclose(blocks[0](x, None), after_local)


def test_drop_path_rates(paper_model):
    rates = [block.drop_path.rate for stage in (paper_model.blocks1, paper_model.blocks2, paper_model.blocks3)
             for block in stage]
    assert len(rates) == 21 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1, abs=1e-15)
    assert torch.allclose(torch.tensor(rates, dtype=torch.float64),
                          torch.linspace(0, 0.1, 21, dtype=torch.float64), rtol=0, atol=1e-15)
    assert paper_model.blocks1[1].drop_path.rate == pytest.approx(0.005, abs=1e-15)


def test_drop_path_behaviour():
    x = torch.ones(256, 3, 5)
    assert torch.equal(DropPath(0.5).eval()(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)
    torch.manual_seed(2)
    out = DropPath(0.5).train()(x)
    per_sample = out.flatten(1)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)  # whole samples kept or dropped
    assert set(per_sample[:, 0].tolist()) == {0.0, 2.0}


def reference_attention(attention: Attention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Explicit SVTR attention: qkv viewed [B, N, 3, h, d], softmax(q·scale @ kᵀ + M) @ v, heads merged, proj."""
    batch, tokens, dim = x.shape
    heads = attention.num_heads
    qkv = (x @ attention.qkv.weight.T + attention.qkv.bias).reshape(batch, tokens, 3, heads, dim // heads)
    q, k, v = (qkv[:, :, s].transpose(1, 2) for s in range(3))  # [B, h, N, d]
    logits = (q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        logits = logits + mask
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, dim)
    return out @ attention.proj.weight.T + attention.proj.bias


@pytest.mark.parametrize("local", [True, False])
def test_attention_matches_explicit_reference(local):
    """Stage-1 sizes (D 192, 6 heads of 32, 12×40 tokens), float64: SDPA with pre-scaled q equals the
    explicit softmax to rounding."""
    torch.manual_seed(3)
    attention = Attention(192, 6, local).double()
    for parameter in attention.parameters():
        torch.nn.init.uniform_(parameter, -0.3, 0.3)
    x = torch.randn(2, 480, 192, dtype=torch.float64)
    mask = local_attention_mask(12, 40, (7, 11)) if local else None
    with torch.no_grad():
        out = attention(x, mask)
        expected = reference_attention(attention, x, None if mask is None else mask.double())
    assert out.dtype == torch.float64
    assert (out - expected).abs().max() <= 1e-14 * expected.abs().max()


def test_block_matches_explicit_reference():
    """Pre-LN residual block with LayerNorm eps 1e-6 and exact GELU, float64."""
    torch.manual_seed(4)
    block = Block(64, 2, True, 4.0, 0.0).double().eval()
    for parameter in block.parameters():
        if parameter.dim() == 1:
            torch.nn.init.uniform_(parameter, 0.5, 1.5)  # LayerNorm affine and biases away from 1/0
        else:
            torch.nn.init.normal_(parameter, 0, 0.1)
    x = torch.randn(2, 30, 64, dtype=torch.float64)
    mask = local_attention_mask(3, 10, (3, 3)).double()
    with torch.no_grad():
        normed = F.layer_norm(x, (64,), block.norm1.weight, block.norm1.bias, 1e-6)
        y = x + reference_attention(block.mixer, normed, mask)
        normed = F.layer_norm(y, (64,), block.norm2.weight, block.norm2.bias, 1e-6)
        hidden = F.gelu(normed @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
        expected = y + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
        assert (block(x, mask) - expected).abs().max() <= 1e-13 * expected.abs().max()


def test_layer_norm_eps(paper_model):
    assert {stage[i].norm1.eps for stage in (paper_model.blocks1, paper_model.blocks2, paper_model.blocks3)
            for i in range(len(stage))} == {1e-6}
    assert paper_model.norm.eps == 1e-6
    assert paper_model.sub_sample1.norm.eps == paper_model.sub_sample2.norm.eps == 1e-5


def test_wrong_input_size_raises(paper_model):
    with pytest.raises(ValueError, match=r"\(32, 128\).*\(48, 160\)"):
        paper_model(torch.randn(1, 3, 32, 128))


def test_small_variant_trains_in_float64():
    torch.manual_seed(5)
    model = SVTRLarge(**SMALL).double().train()
    assert model.feature_channels == (8, 16, 24) and model.out_channels == 20
    assert model.blocks1.local_mask.dtype == torch.float64
    out = model(torch.randn(3, 3, 32, 64, dtype=torch.float64))
    assert [tuple(level.shape) for level in out.levels] == [(3, 8, 16, 32), (3, 16, 8, 16), (3, 24, 4, 16)]
    assert tuple(out.sequence.shape) == (3, 16, 20)
    out.sequence.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_mixers_raise():
    with pytest.raises(ValueError, match="mixers"):
        SVTRLarge(**{**SMALL, "mixers": ("Local",) * 3})
    with pytest.raises(ValueError, match="mixers"):
        SVTRLarge(**{**SMALL, "mixers": ("Local", "Conv", "Global", "Global")})
