"""Model shapes and parameter counts (SPEC §13), TPS constants, initialisation and greedy decoding."""
from __future__ import annotations

import pytest
import torch

from config import make_config
from model import AttentionRecognizer, build_model
from modules.losses import recognition_loss
from modules.outputs import RecognitionOutput
from modules.transformation import tps_grid_basis
from tokenizer import Tokenizer, load_charset
from utils import channels_last_blocker, use_channels_last


@pytest.fixture(scope="module")
def paper_trba():
    torch.manual_seed(0)
    return build_model(make_config("paper"))


def test_trba_paper_shapes(paper_trba):
    model = paper_trba.eval()
    images, masks = torch.randn(4, 3, 32, 128), torch.rand(4, 1, 32, 128)
    with torch.no_grad():
        rectified, warped = model.transformation(images, masks)
        features = model.backbone(rectified)
        x = features.sequence
        h = model.sequence(x)
        ids, _ = Tokenizer(load_charset("36")).encode(["kumar", "the", "kishtwar", "a"])
        out = model(images, ids[:, :-1], masks)
    assert rectified.shape == (4, 3, 32, 128) and warped.shape == (4, 1, 32, 128)
    f0, f1, f2 = features.levels
    assert f0.shape == (4, 32, 32, 128)
    assert f1.shape == (4, 64, 16, 64)
    assert f2.shape == (4, 256, 8, 32)
    assert x.shape == (4, 32, 512) and h.shape == (4, 32, 256)
    assert isinstance(out, RecognitionOutput)
    assert out.logits.shape == (4, 26, 37) and out.attention.shape == (4, 32, 26)
    assert torch.allclose(out.attention.sum(1), torch.ones(4, 26), atol=1e-5)


def test_trba_parameter_counts(paper_trba):
    """TPS, ResNet-45, BiLSTM stack and attention decoder sizes of SPEC §3.1–3.4/§3.11."""
    count = lambda module: sum(p.numel() for p in module.parameters())
    assert count(paper_trba.transformation) == 1_693_544
    assert count(paper_trba.backbone) == 26_373_344
    assert count(paper_trba.sequence) == 2_892_288
    assert count(paper_trba.decoder) == 939_301
    assert count(paper_trba) == 1_693_544 + 26_373_344 + 2_892_288 + 939_301
    c95 = build_model(make_config("paper", charset="94", sensitive=True))
    assert c95.decoder.generator.out_features == 95 and c95.decoder.char_embeddings.num_embeddings == 96


def test_tps_constants_not_saved_and_exact_in_float64(paper_trba):
    keys = paper_trba.state_dict().keys()
    assert not any("basis" in k or "P_hat" in k for k in keys)
    assert sum(k.startswith("transformation.localization.") for k in keys) == 28  # SPEC §3.1: the 28 localisation tensors
    tps = build_model(make_config("tiny")).transformation.double()
    assert tps.grid_generator.basis.dtype == torch.float64
    assert torch.equal(tps.grid_generator.basis, tps_grid_basis(20, 32, 128))


def test_tps_identity_fiducials_give_identity_grid():
    """With C′ = C the TPS grid is the pixel-centre grid: a rectified image equals its input."""
    tps = build_model(make_config("tiny")).transformation.double()
    from modules.transformation import base_fiducials
    grid = tps.grid_generator(base_fiducials(20)[None])
    xs = (torch.arange(128, dtype=torch.float64) * 2 - 127) / 128
    assert torch.allclose(grid[0, 5, :, 0], xs, atol=1e-9)


def test_initialisation_rule():
    model = build_model(make_config("tiny"))
    fc2 = model.transformation.localization.localization_fc2
    assert torch.count_nonzero(fc2.weight) == 0 and fc2.bias.abs().sum() > 0
    assert torch.all(model.backbone.bn1.weight == 1)
    assert torch.all(model.decoder.attention_cell.h2h.bias == 0)
    assert model.decoder.generator.weight.std() > 0


def test_greedy_early_stop_matches_full_decode():
    torch.manual_seed(3)
    config = make_config("tiny")
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer).eval()
    with torch.no_grad():
        # a decoder whose EOS logit grows with time, so sequences end at different steps
        model.decoder.generator.bias[tokenizer.eos_id] = -2.0
        features = model.sequence(model.backbone(model.transformation(torch.randn(6, 3, 32, 128))[0]).sequence)
        early = model.decoder(features)
        full = model.decoder(features, early_stop=False)
    assert full.logits.shape[1] == config.num_steps
    assert tokenizer.decode(early.logits)[0] == tokenizer.decode(full.logits)[0]
    assert torch.allclose(early.logits, full.logits[:, : early.logits.shape[1]], atol=1e-6)


def test_greedy_stops_when_all_sequences_end():
    config = make_config("tiny")
    model = build_model(config).eval()
    with torch.no_grad():
        model.decoder.generator.bias[Tokenizer.eos_id] = 100.0  # EOS at the first step
        out = model(torch.randn(3, 3, 32, 128))
    assert out.logits.shape[1] == 1


@pytest.mark.parametrize("name", ["TRBA", "SIGA_R"])
def test_max_steps_decodes_a_prefix_of_the_full_greedy_decoding(name):
    torch.manual_seed(5)
    config = make_config("tiny", model=name)
    model = build_model(config).eval()
    images = torch.randn(3, 3, 32, 128)
    with torch.no_grad():
        full = model(images, early_stop=False)
        short = model(images, early_stop=False, max_steps=4)
    assert full.logits.shape[1] == config.num_steps and short.logits.shape[1] == 4
    assert torch.allclose(short.logits, full.logits[:, :4], atol=1e-6)
    for bad in (0, config.num_steps + 1):
        with pytest.raises(ValueError, match="max_steps"):
            model(images, max_steps=bad)


def test_channels_last_blocker_names_the_strided_1x1_convolutions_onednn_gets_wrong():
    assert channels_last_blocker(build_model(make_config("paper"))) is None
    assert channels_last_blocker(build_model(make_config("demo", model="SIGA_R"))) is None
    message = channels_last_blocker(build_model(make_config("tiny")))
    assert message.startswith("backbone.layer1.0.downsample.0: ") and "8 < 16" in message


def test_use_channels_last_modes():
    cpu = torch.device("cpu")
    tiny = build_model(make_config("tiny"))
    assert not use_channels_last(tiny, "auto", cpu, training=True)  # oneDNN's NHWC bug: stays NCHW
    assert tiny.backbone.conv1.weight.is_contiguous()
    with pytest.raises(ValueError, match="downsample"):
        use_channels_last(tiny, "on", cpu, training=True)
    assert not use_channels_last(tiny, "off", cpu, training=False)
    assert not use_channels_last(tiny, "auto", torch.device("cuda"), training=False)  # not measured on CUDA
    assert use_channels_last(tiny, "auto", cpu, training=False)  # inference has no weight gradient
    assert tiny.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="memory format"):
        use_channels_last(tiny, "nhwc", cpu, training=False)


@pytest.mark.parametrize("name", ["TRBA", "SIGA_R"])
def test_channels_last_training_step_is_as_accurate_as_nchw(name):
    """Gradients of a training step in channels_last are as close to a float64 reference as NCHW's, for a
    small model oneDNN trains correctly. Against float64 rather than each other: this tiny, batch-4
    problem is ill-conditioned enough that float32 gradients differ from the exact ones by up to ~1 %
    whatever the layout. The TPS is frozen: grid_sample's gradient jumps at pixel boundaries."""
    config = make_config("tiny", model=name, tps_channels=(16, 16, 16, 16), backbone_channels=(16, 16, 16, 16, 16, 32),
                         glyph_channels=16)
    tokenizer = Tokenizer.from_config(config)
    torch.manual_seed(0)
    reference = build_model(config, tokenizer)
    reference.transformation.freeze()  # at RARE's initial warp (config.freeze_tps would set the identity)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 128, generator=generator)
    masks = (torch.rand(4, 1, 32, 128, generator=generator) > 0.5).float()
    ids, _ = tokenizer.encode(["ab", "cde", "f", "ghij"])

    def gradients(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        model.train()
        torch.manual_seed(2)  # the same dropout masks
        output = model(images.to(dtype), ids[:, :6], masks.to(dtype))
        loss = output.logits.square().mean()
        if name == "SIGA_R":
            loss = loss + sum(v.square().mean() for v in output.auxiliary_logits.values())
            loss = loss + output.seg_logits.square().mean() + output.glyph_logits_low.square().mean()
        model.zero_grad()
        loss.backward()
        return {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}

    converted = build_model(config, tokenizer)
    converted.transformation.freeze()
    converted.load_state_dict(reference.state_dict())
    assert use_channels_last(converted, "auto", torch.device("cpu"), training=True)
    assert converted.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    nchw, nhwc = gradients(reference, torch.float32), gradients(converted, torch.float32)
    exact = gradients(reference.double(), torch.float64)
    assert nchw.keys() == nhwc.keys() == exact.keys()
    rounding = 1e-6 * torch.stack([value.norm() for value in exact.values()]).norm()  # e.g. biases before a BN: 0
    for key, value in exact.items():
        nchw_error, nhwc_error = (nchw[key] - value).norm(), (nhwc[key] - value).norm()
        assert nhwc_error <= 2 * nchw_error + rounding, (key, nhwc_error, nchw_error)


def test_recognition_loss_known_value():
    logits = torch.zeros(2, 3, 4)
    logits[0, 0, 1] = 2.0
    targets = torch.tensor([[1, 0, 0], [2, 3, 0]])
    lengths = torch.tensor([1, 3])
    ce = torch.nn.functional.cross_entropy
    expected = (ce(logits[0, :1], targets[0, :1], reduction="sum") + ce(logits[1], targets[1], reduction="sum")) / 4
    assert recognition_loss(logits, targets, lengths).item() == pytest.approx(expected.item())
    assert recognition_loss(logits, targets, torch.tensor([1, 1])).item() == pytest.approx(
        ((ce(logits[0, :1], targets[0, :1]) + ce(logits[1, :1], targets[1, :1])) / 2).item())


def test_unknown_model_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        build_model(make_config("tiny", model="CRNN"))
    assert isinstance(build_model(make_config("tiny")), AttentionRecognizer)


@pytest.mark.parametrize("name", ["TRBA", "SIGA_R", "TSBA", "SIGA_S", "VITBA", "SIGA_T"])
def test_trace_is_the_greedy_decoding_with_its_maps(name):
    """``trace`` returns the greedy logits unchanged, the decoder's α over the visual sequence's columns, the
    rectifier's grid (the one that made the rectified image; identity without a rectifier) and, for SIGA, the
    glyph logits of both scales."""
    torch.manual_seed(0)
    config = make_config("tiny", model=name)
    model = build_model(config).eval()
    images = torch.randn(3, 3, config.img_h, config.img_w)
    with torch.no_grad():
        plain = model(images)
        trace = model.trace(images)
        short = model.trace(images, max_steps=2)
        rectified, _ = model.transformation(images)
        features = model.backbone(rectified)
    steps = plain.logits.shape[1]
    assert torch.equal(trace.logits, plain.logits) and torch.equal(short.logits, plain.logits[:, :2])
    assert trace.attention.shape == (3, features.sequence.shape[1], steps)
    assert torch.allclose(trace.attention.sum(1), torch.ones(3, steps), atol=1e-5)
    assert short.attention.shape[2] == 2 and torch.allclose(short.attention, trace.attention[..., :2], atol=1e-6)
    assert trace.grid.shape == (3, config.img_h, config.img_w, 2)
    resampled = torch.nn.functional.grid_sample(images, trace.grid, padding_mode="border", align_corners=True)
    assert torch.allclose(resampled, rectified, atol=1e-4)  # float32 unnormalisation of the grid
    if name in ("VITBA", "SIGA_T"):
        assert torch.equal(trace.grid[0, 0, :, 0], torch.linspace(-1, 1, config.img_w))
        assert torch.equal(trace.grid[2, :, 0, 1], torch.linspace(-1, 1, config.img_h))
    else:
        assert not torch.allclose(trace.grid[..., 0], torch.linspace(-1, 1, config.img_w))  # RARE's initial warp
    if name.startswith("SIGA"):
        with torch.no_grad():
            glyph = model.glyph(features.levels, segmentation=False)
        assert torch.equal(trace.glyph_logits_low, glyph.logits_low) and torch.equal(trace.glyph_logits_mid,
                                                                                  glyph.logits_mid)
        assert trace.glyph_logits_low.shape[:2] == (3, config.max_label_length + 2)
        assert trace.attention_second.shape == trace.attention.shape
    else:
        assert not hasattr(trace, "glyph_logits_low")
