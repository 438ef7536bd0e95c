"""The SIGA heads shared by every backbone (SPEC §3.3–§3.10, SPEC_SIGA_S §3.6–3.9, SPEC_SIGA_T §3.6):
the 1-D alignment branch whose attention supervises the glyph maps, model_two's TRBA branch, the two
position-aligned heads, the two fusion decoders with gated fusion and the final generator.

A backbone provides the visual sequence X and a glyph attention network the glyph sequences; everything
here is parameterised by their widths, so SIGA_R, SIGA_S and SIGA_T differ only in those sizes, the final
width and which glyph scale feeds the first fusion decoder.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from modules.decoders import AttentionDecoder, FusionDecoder, PositionAlignedDecoder, greedy_steps
from modules.fusion import GatedBimodal
from modules.glyph_attention import GlyphOutput
from modules.sequence import bilstm_stack

#: the auxiliary heads of the teacher-forced path, in the order of SPEC §4.6's CE sum
AUXILIARY_HEADS = ("one_d", "trba", "position_low", "position_mid", "fusion_low", "fusion_mid")


class SigaHeads(nn.Module):
    """Every SIGA decoder over X [B, T, sequence_size] and the glyph sequences [B, ≥S, hidden].

    ``final_size`` is the width of the projected fusion and the final generator (SIGA_R/T: 2 × hidden,
    SIGA_S: 384); ``mid_first`` feeds the mid-scale glyph sequence to the first position head and fusion
    decoder (SIGA_T's order) instead of the low-scale one (SIGA_R, SIGA_S). Heads are named by the slot
    they occupy ("low" = first, "mid" = second), as in the official state_dict.
    """

    def __init__(self, sequence_size: int, hidden_size: int, final_size: int, num_classes: int, num_steps: int,
                 sos_id: int, eos_id: int, dropout: float, mid_first: bool = False, num_embeddings: int | None = None):
        super().__init__()
        tokens = dict(sos_id=sos_id, num_embeddings=num_embeddings)
        attention = dict(num_classes=num_classes, num_steps=num_steps, sos_id=sos_id, eos_id=eos_id,
                         num_embeddings=num_embeddings)
        self.num_steps, self.sos_id, self.eos_id, self.mid_first = num_steps, sos_id, eos_id, mid_first
        self.alignment_sequence = bilstm_stack(sequence_size, hidden_size)
        self.alignment_decoder = AttentionDecoder(hidden_size, hidden_size, **attention)
        self.sequence = bilstm_stack(sequence_size, hidden_size)
        self.trba_decoder = AttentionDecoder(hidden_size, hidden_size, **attention)
        self.position_decoder_low = PositionAlignedDecoder(hidden_size, hidden_size, num_classes, hidden_size, **tokens)
        self.position_decoder_mid = PositionAlignedDecoder(hidden_size, hidden_size, num_classes, hidden_size, **tokens)
        self.fusion_decoder_low = FusionDecoder(hidden_size, hidden_size, **attention)
        self.fusion_decoder_mid = FusionDecoder(hidden_size, hidden_size, **attention)
        self.fusion = GatedBimodal(hidden_size)
        self.projection = nn.Linear(hidden_size, final_size)
        self.final_decoder = PositionAlignedDecoder(final_size, final_size, num_classes, hidden_size, **tokens)
        self.dropout = nn.Dropout(dropout)

    def glyph_slots(self, glyph: GlyphOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """The glyph sequences for the first and second slot, after dropout (SPEC §3.10)."""
        first, second = glyph.sequence_low, glyph.sequence_mid
        if self.mid_first:
            first, second = second, first
        return self.dropout(first), self.dropout(second)

    def teacher_forced(self, sequence: torch.Tensor, glyph: GlyphOutput, text_in: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Every head on ``text_in`` [B, S]: (final logits [B, S, C], the 1-D attention A [B, T, S], the
        auxiliary logits by name)."""
        one_d = self.alignment_decoder(self.alignment_sequence(sequence), text_in)
        contextual = self.sequence(sequence)
        trba = self.trba_decoder(contextual, text_in)
        glyphs_low, glyphs_mid = self.glyph_slots(glyph)
        fusion_low = self.fusion_decoder_low(contextual, text_in, glyphs_low)
        fusion_mid = self.fusion_decoder_mid(contextual, text_in, glyphs_mid)
        complementary = self.dropout(self.projection(self.fusion(fusion_low.fused, fusion_mid.fused)))
        auxiliary = {
            "one_d": one_d.logits, "trba": trba.logits,
            "position_low": self.position_decoder_low(glyphs_low, text_in),
            "position_mid": self.position_decoder_mid(glyphs_mid, text_in),
            "fusion_low": fusion_low.logits, "fusion_mid": fusion_mid.logits,
        }
        return self.final_decoder(complementary, text_in), one_d.attention, auxiliary

    def greedy(self, sequence: torch.Tensor, glyph: GlyphOutput, early_stop: bool = True,
               max_steps: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Only what the final prediction needs (SPEC §3.10): the fusion decoders (each feeding back its own
        argmax) and the final generator, in lockstep. Returns (final logits, fusion logits by name)."""
        final, auxiliary, _ = self._decode(sequence, glyph, early_stop, max_steps, keep_attention=False)
        return final, auxiliary

    def traced_greedy(self, sequence: torch.Tensor, glyph: GlyphOutput, max_steps: int | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``greedy`` (with early stop) that also returns the first- and second-slot fusion decoders' attention
        α [B, T, S'], which ``greedy`` does not keep."""
        final, auxiliary, attention = self._decode(sequence, glyph, True, max_steps, keep_attention=True)
        return final, auxiliary, attention

    def _decode(self, sequence: torch.Tensor, glyph: GlyphOutput, early_stop: bool, max_steps: int | None,
                keep_attention: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        """The lockstep greedy loop of ``greedy``; the fusion decoders' α per step only when ``keep_attention``
        (else the last element is empty)."""
        contextual = self.sequence(sequence)
        glyphs = self.glyph_slots(glyph)
        decoders = (self.fusion_decoder_low, self.fusion_decoder_mid)
        starts = [decoder.start(contextual) for decoder in decoders]
        states = [state for state, _ in starts]
        batch = sequence.shape[0]
        sos = torch.full((batch,), self.sos_id, dtype=torch.long, device=sequence.device)
        tokens, final_token, final_state = [sos, sos], sos, None
        ended = torch.zeros(batch, dtype=torch.bool, device=sequence.device)
        logits: list[list[torch.Tensor]] = [[], [], []]
        alphas: list[list[torch.Tensor]] = [[], []]
        for s in range(greedy_steps(self.num_steps, max_steps)):
            fused = []
            for i, decoder in enumerate(decoders):
                states[i], step_logits, alpha, step_fused = decoder.step(states[i], contextual, starts[i][1],
                                                                         tokens[i], glyphs[i][:, s])
                tokens[i] = step_logits.argmax(1)
                logits[i].append(step_logits)
                fused.append(step_fused)
                if keep_attention:
                    alphas[i].append(alpha)
            complementary = self.dropout(self.projection(self.fusion(*fused)))
            final_state, step_logits = self.final_decoder.step(final_state, complementary, final_token)
            final_token = step_logits.argmax(1)
            logits[2].append(step_logits)
            ended |= final_token == self.eos_id
            if early_stop and bool(ended.all()):
                break
        low, mid, final = (torch.stack(step_logits, 1) for step_logits in logits)
        attention = tuple(torch.stack(step_alphas, 2) for step_alphas in alphas) if keep_attention else ()
        return final, {"fusion_low": low, "fusion_mid": mid}, attention
