"""SIGA_R structure: shapes and parameter counts (SPEC §3.11, §13), the official name map, official
checkpoint files, the inference path (what it skips, early stop) and the TPS transfer of --tps_from."""
from __future__ import annotations

import pytest
import torch

from checkpoint import (OFFICIAL_IGNORED, atomic_save, convert_official_state_dict, load_model, load_official, load_tps,
                        official_name, training_state, upgraded_state_dict)
from config import make_config
from golden import official_rule_state_dict, official_shapes
from model import GlyphAttentionRecognizer, build_model
from modules.glyph_attention import ColumnContext
from modules.losses import segmentation_loss, training_loss
from tokenizer import Tokenizer

count = lambda module: sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_siga():
    torch.manual_seed(0)
    return build_model(make_config("paper", model="SIGA_R"))


def test_paper_shapes(paper_siga):
    model = paper_siga.train()
    ids, _ = Tokenizer("abcdefghijklmnopqrstuvwxyz1234567890").encode(["kumar", "the", "kishtwar", "a"])
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 128), ids[:, :-1], torch.rand(4, 1, 32, 128))
    assert out.logits.shape == (4, 26, 37) and out.attention.shape == (4, 32, 26)
    assert set(out.auxiliary_logits) == {"one_d", "trba", "position_low", "position_mid", "fusion_low", "fusion_mid"}
    assert all(v.shape == (4, 26, 37) for v in out.auxiliary_logits.values())
    assert out.seg_logits.shape == (4, 2, 32, 128) and out.rectified_mask.shape == (4, 1, 32, 128)
    assert out.glyph_logits_mid.shape == (4, 27, 8, 32) and out.glyph_logits_low.shape == (4, 27, 16, 64)
    model.eval()
    with torch.no_grad():
        greedy = model(torch.randn(2, 3, 32, 128), early_stop=False)
    assert greedy.logits.shape == (2, 26, 37) and greedy.auxiliary_logits["fusion_mid"].shape == (2, 26, 37)


def test_paper_parameter_counts(paper_siga):
    """SPEC §3.11 without the unused downsampler Linear(512→256) (131,328), which we omit (§7 #18)."""
    m = paper_siga
    assert count(m) == 46_598_019 - 131_328
    assert count(m.glyph) == 4_062_776
    assert count(m.glyph.sequence_low) + count(m.glyph.sequence_mid) == 2_368_000
    heads = m.siga
    assert count(heads.position_decoder_low) == count(heads.position_decoder_mid) == 807_717
    assert count(heads.fusion_decoder_low) == count(heads.fusion_decoder_mid) == 1_070_629
    assert count(heads.fusion) == 131_328 and count(heads.projection) == 131_584
    assert count(heads.final_decoder) == 2_654_245
    assert count(heads.alignment_decoder) == count(heads.trba_decoder) == 939_301
    frozen = build_model(make_config("paper", model="SIGA_R", freeze_tps=True))
    assert sum(p.numel() for p in frozen.parameters() if p.requires_grad) == 44_904_475 - 131_328
    assert count(build_model(make_config("paper", model="SIGA_R", charset="94", sensitive=True))) == 46_821_145 - 131_328


def test_name_map_covers_the_official_state_dict_exactly(paper_siga):
    ours = {official_name(key) for key in paper_siga.state_dict()}
    official = {key for key in official_shapes() if not key.startswith(OFFICIAL_IGNORED["SIGA_R"])}
    assert len(official_shapes()) == 586 and ours == official
    assert len(ours) == len(paper_siga.state_dict())  # one-to-one


def test_conversion_errors_list_the_keys(paper_siga):
    state = dict(official_rule_state_dict())
    del state["module.model_two.pw.bias"]
    state["module.model_two.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 missing keys \['model_two.pw.bias'\].*1 unexpected keys "
                                         r"\['model_two.extra.weight'\]"):
        convert_official_state_dict(paper_siga, state)
    state = dict(official_rule_state_dict())
    state["module.model_two.pw.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="model_two.pw.bias: official shape"):
        convert_official_state_dict(paper_siga, state)


def test_official_checkpoint_file_loads_in_test_and_demo(tmp_path):
    """The released format {'net': DDP state_dict, 'optimizer', 'iteration'} loads with no other input."""
    path = tmp_path / "SIGA_R.pth"
    atomic_save({"net": official_rule_state_dict(), "optimizer": {}, "iteration": 160000}, path)
    model, config = load_official(path)
    assert isinstance(model, GlyphAttentionRecognizer) and config.model == "SIGA_R"
    expected = official_rule_state_dict()["module.model_two.generator.generator.weight"]
    assert torch.equal(model.siga.final_decoder.generator.weight, expected)
    loaded, tokenizer, _ = load_model(path)
    assert not loaded.training and tokenizer.charset == "abcdefghijklmnopqrstuvwxyz1234567890"
    broken = tmp_path / "broken.pth"
    state = dict(official_rule_state_dict())
    del state["module.model_one.Prediction.generator.bias"]
    atomic_save({"net": state}, broken)
    with pytest.raises(ValueError, match=r"broken.pth: .*model_one.Prediction.generator.bias"):
        load_model(broken)


def test_official_checkpoint_of_another_variant_is_one_line(tmp_path):
    path = tmp_path / "released.pth"
    atomic_save({"net": official_rule_state_dict(), "optimizer": {}, "iteration": 160000}, path)
    for call in (lambda: load_official(path, variant="SIGA_S"), lambda: load_model(path, expected_model="SIGA_S")):
        with pytest.raises(ValueError, match=r"released.pth: an official SIGA_R checkpoint, not SIGA_S$") as error:
            call()
        assert "\n" not in str(error.value)
    assert load_model(path, expected_model="SIGA_R")[2].model == "SIGA_R"


def test_greedy_runs_only_the_needed_path():
    """SPEC §3.10 / §7 #17: no 1-D branch, TRBA decoder, 2-D heads or full-resolution seg head at test."""
    model = build_model(make_config("tiny", model="SIGA_R")).eval()
    called = set()
    for name in ("siga.alignment_sequence", "siga.alignment_decoder", "siga.trba_decoder", "siga.position_decoder_low",
                 "siga.position_decoder_mid", "glyph.seg_head", "glyph.up_seg", "siga.sequence", "siga.final_decoder"):
        model.get_submodule(name).register_forward_hook(lambda *_, name=name: called.add(name))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 128))
    assert called == {"siga.sequence"}  # final_decoder runs step by step through .step(), not forward()


class EndsAt(torch.nn.Module):
    """Wraps a generator so that sample b emits EOS from greedy step ``ends[b]`` on (counts its calls)."""

    def __init__(self, generator: torch.nn.Linear, ends: list[int]):
        super().__init__()
        self.generator, self.ends, self.calls = generator, torch.tensor(ends), 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.generator(hidden).clone()
        logits[:, Tokenizer.eos_id] += 100.0 * (self.ends <= self.calls)
        self.calls += 1
        return logits


def test_greedy_early_stop_matches_full_decode():
    torch.manual_seed(1)
    config = make_config("tiny", model="SIGA_R")
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer).eval()
    images, ends = torch.randn(4, 3, 32, 128), [2, 5, 3, 4]
    linear = model.siga.final_decoder.generator
    with torch.no_grad():
        model.siga.final_decoder.generator = EndsAt(linear, ends)
        early = model(images)
        model.siga.final_decoder.generator = EndsAt(linear, ends)
        full = model(images, early_stop=False)
    assert early.logits.shape[1] == 6 and full.logits.shape[1] == config.num_steps  # stops after the last EOS
    assert [len(t) for t in tokenizer.decode(early.logits)[0]] == ends
    assert tokenizer.decode(early.logits)[0] == tokenizer.decode(full.logits)[0]
    assert torch.allclose(early.logits, full.logits[:, :6], atol=1e-6)
    assert torch.allclose(early.auxiliary_logits["fusion_low"], full.auxiliary_logits["fusion_low"][:, :6], atol=1e-6)


def test_tps_from_loads_all_localisation_tensors_and_freezes(tmp_path):
    trba = build_model(make_config("tiny"))
    with torch.no_grad():
        for p in trba.transformation.parameters():
            p.normal_()
    atomic_save({"model": trba.state_dict(), "config": {}}, tmp_path / "trba.pth")
    config = make_config("tiny", model="SIGA_R", freeze_tps=True, freeze_tps_bn=True)
    siga = build_model(config)
    load_tps(siga, tmp_path / "trba.pth")
    source, target = trba.transformation.state_dict(), siga.transformation.state_dict()
    assert len(target) == 28 and all(torch.equal(source[k], target[k]) for k in target)
    assert not any(p.requires_grad for p in siga.transformation.parameters())
    assert any(p.requires_grad for p in siga.backbone.parameters())
    siga.train()
    assert not siga.transformation.localization.training and siga.backbone.training
    live = build_model(make_config("tiny", model="SIGA_R", freeze_tps=True)).train()
    assert live.transformation.localization.conv[1].training  # official: frozen TPS, live BN statistics (§7 #7)
    partial = {k: v for k, v in trba.state_dict().items() if "localization_fc2" not in k}
    atomic_save({"model": partial, "config": {}}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing TPS tensors.*localization_fc2"):
        load_tps(siga, tmp_path / "partial.pth")


def test_format_1_checkpoints_load_with_the_siga_heads_renamed(tmp_path):
    """Checkpoints written before the SIGA heads moved under ``siga.`` (no format_version) still load."""
    config = make_config("tiny", model="SIGA_R")
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer)
    state = training_state(model, config, tokenizer)
    flat = {key.removeprefix("siga."): value for key, value in state["model"].items()}
    assert flat.keys() != state["model"].keys()
    old = {"model": flat, "config": state["config"], "charset": tokenizer.charset}
    assert upgraded_state_dict(old).keys() == state["model"].keys()
    atomic_save(old, tmp_path / "old.pth")
    loaded, _, _ = load_model(tmp_path / "old.pth")
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in state["model"].items())


@pytest.mark.parametrize("name", ["SIGA_R", "SIGA_T"])
def test_trace_attention_is_that_of_the_fusion_decoders_by_slot(name):
    """The traced α are the first- and second-slot fusion decoders' own: teacher-forcing each decoder with the
    tokens it fed back itself gives the same α and logits (SIGA_T's first slot reads the mid-scale glyphs)."""
    torch.manual_seed(2)
    config = make_config("tiny", model=name)
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer).eval()
    images = torch.randn(3, 3, config.img_h, config.img_w)
    heads = model.siga
    with torch.no_grad():
        plain, trace = model(images, early_stop=False), model.trace(images)
        features = model.backbone(model.transformation(images)[0])
        glyph = model.glyph(features.levels, segmentation=False)
        contextual = heads.sequence(features.sequence)
        first, second = heads.glyph_slots(glyph)
        assert torch.equal(first, glyph.sequence_mid if name == "SIGA_T" else glyph.sequence_low)
        steps = trace.logits.shape[1]
        slots = [(heads.fusion_decoder_low, first, trace.attention, "fusion_low"),
                 (heads.fusion_decoder_mid, second, trace.attention_second, "fusion_mid")]
        for decoder, glyphs, attention, head in slots:
            tokens = plain.auxiliary_logits[head][:, : steps - 1].argmax(-1)
            text_in = torch.cat([torch.full((3, 1), tokenizer.sos_id), tokens], 1)
            forced = decoder(contextual, text_in, glyphs)
            assert torch.allclose(forced.attention, attention, atol=1e-5), head
            assert torch.allclose(forced.logits, plain.auxiliary_logits[head][:, :steps], atol=1e-5), head


def test_half_resolution_segmentation_skips_the_full_resolution_branch_and_trains():
    """--seg_resolution half (ours): segmentation logits at H/2 × W/2 from the low stage, no unpooling or F0 merge;
    L_seg compares them with the area-downsampled mask and the 1-D branch's coverage still reads F̂ at H × W."""
    config = make_config("tiny", model="SIGA_R", seg_resolution="half")
    tokenizer = Tokenizer.from_config(config)
    torch.manual_seed(0)
    model = build_model(config, tokenizer)
    assert model.glyph.up_seg is None
    images = torch.randn(2, 3, config.img_h, config.img_w)
    masks = (torch.rand(2, 1, config.img_h, config.img_w) > 0.5).float()
    ids, lengths = tokenizer.encode(["ab", "cde"])
    output = model(images, ids[:, :-1], masks)
    assert output.seg_logits.shape == (2, 2, config.img_h // 2, config.img_w // 2)
    loss = training_loss(output, ids[:, 1:], lengths, 0, config.siga, config.num_steps)
    assert torch.isfinite(loss.total) and loss.terms["seg"] > 0 and loss.terms["align"] > 0
    loss.total.backward()
    assert model.glyph.seg_merge[0].weight.grad.abs().sum() > 0
    full = build_model(make_config("tiny", model="SIGA_R"), tokenizer)
    assert full.glyph.up_seg is not None and full(images, ids[:, :-1], masks).seg_logits.shape[-2:] == (32, 128)
    with pytest.raises(ValueError, match="built for SIGA_R only"):
        build_model(make_config("tiny", model="SIGA_S", seg_resolution="half"))
    with pytest.raises(ValueError, match="seg_resolution must be one of"):
        build_model(make_config("tiny", model="SIGA_R", seg_resolution="quarter"))


def test_column_context_carries_every_column_to_every_other():
    """ColumnContext: the output keeps the map's shape, and a change in the first column reaches the last one
    in every row, which a 3×3 convolution stack reaches only after many layers."""
    torch.manual_seed(0)
    context = ColumnContext(8)
    x = torch.randn(2, 8, 3, 10)
    changed = x.clone()
    changed[..., 0] += 1.0
    out, out_changed = context(x), context(changed)
    assert out.shape == x.shape
    assert (out_changed[..., -1] - out[..., -1]).abs().amin(dim=1).gt(0).all()  # every sample, every row


@pytest.mark.parametrize("name", ["SIGA_R", "SIGA_S", "SIGA_T"])
def test_glyph_column_context_is_an_option_after_the_official_layers_and_trains(name):
    """--glyph_context columns (ours): the glyph network gets a ColumnContext registered after every official
    layer (the paper's keys and order unchanged, none without the option), and the glyph loss trains it."""
    config = make_config("tiny", model=name, glyph_context="columns")
    tokenizer = Tokenizer.from_config(config)
    torch.manual_seed(0)
    model = build_model(config, tokenizer)
    plain = build_model(make_config("tiny", model=name), tokenizer)
    names = [key for key, _ in model.glyph.named_parameters()]
    official = [key for key, _ in plain.glyph.named_parameters()]
    assert names[: len(official)] == official and all(key.startswith("column_context.") for key in names[len(official):])
    assert len(names) > len(official) and not any("column_context" in key for key in plain.state_dict())
    images = torch.randn(2, 3, config.img_h, config.img_w)
    masks = (torch.rand(2, 1, config.img_h, config.img_w) > 0.5).float()
    ids, lengths = tokenizer.encode(["ab", "cde"])
    loss = training_loss(model(images, ids[:, :-1], masks), ids[:, 1:], lengths, 0, config.siga, config.num_steps,
                         masks=masks)
    loss.total.backward()
    assert model.glyph.column_context.sequence.rnn.weight_ih_l0.grad.abs().sum() > 0


def test_glyph_context_needs_a_glyph_network_and_a_known_value():
    with pytest.raises(ValueError, match="needs a glyph attention network"):
        build_model(make_config("tiny", model="TRBA", glyph_context="columns"))
    with pytest.raises(ValueError, match="glyph_context must be one of"):
        build_model(make_config("tiny", model="SIGA_R", glyph_context="rows"))


def test_segmentation_loss_on_a_coarser_grid_reads_the_area_downsampled_mask():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1.0  # one full 2×2 block, one block three-quarters full, the rest empty
    mask[..., 2:, 2:] = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])  # confident foreground where the area mean > 0.5
    coarse, _ = segmentation_loss(logits, mask, 0)
    expected, _ = segmentation_loss(logits, torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]), 0)
    assert torch.equal(coarse, expected)
