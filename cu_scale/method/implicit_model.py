"""The implicit-stage model (paper §II-A, §II-B): fusion, event detector Φ, plateau mask, Eq. 1–2.

Single-device PyTorch; no Ray, no DeepSpeed here. Time is *normalised* inside the model: 0 is the start
of the video and 1 the end of its valid feature steps, so one model serves videos of any length; callers
convert seconds with the video's duration.

- Fusion: one linear layer per modality to D, then two cross-modal Transformer layers: the video attends
  to the words (→ V ∈ R^{T×D}) and the words attend to the video (→ Q ∈ R^{M×D}); q is the masked mean of Q.
- Which features the contrasts pool (`contrast_features`). *Choice*, measured: the paper pools the fused V
  and contrasts it with q. But every fused step V_t has already attended to the query, so any span of V
  carries the query and S(v_ev, q) ≈ S(v_vd, q) wherever the event lies: on simulated Charades-STA L_raml sat
  at its margin α for whole runs, the detector got no signal from it, events grew to twice the true length
  and the pseudo-labels lost to the widened partial label (mIoU 48.8 against 61.2). With "unimodal"
  (default) each modality also goes through one self-attention layer of its own, and Eq. 2 pools those
  query-blind video features and contrasts them with the query-only q; the detector still reads the fused
  V. Then a span is query-like only if its content is, and L_raml rewards finding it (there, with β = 0.5
  and a cosine learning rate, pseudo-label mIoU 70.1 against 61.2). "fused" keeps the literal reading.
- Event detector Φ(V) → (δ, ℓ) around the anchor t_c (Eq. 1). *Choice* (the paper does not say how Φ reads
  V): anchor-conditioned attention pooling. Each step's V_t is joined with a sinusoidal code of its offset
  (t − t_c) from the anchor, scored, softmax-pooled over the valid steps, and an MLP gives δ = ½·tanh(·)
  (the centre may move by up to half the video) and ℓ = sigmoid(·) ∈ (0, 1). Then p = t_c + δ,
  ŝ = p − ℓ/2, ê = p + ℓ/2, both clamped to [0, 1] so the event stays inside the video.
- Plateau mask (Moltisanti et al. 2019): m_t = σ(κ(τ_t − ŝ)) · σ(κ(ê − τ_t)) at step centres τ_t, with a
  learnable steepness κ = softplus(κ_raw) (always positive), zero on padded steps.
- Eq. 2: v_ev = 1/T Σ m_t V_t, v_bg = 1/T Σ (1 − m_t) V_t, and v_vd = 1/T Σ V_t, T the valid steps.

Long videos with short moments: three settings. Here their defaults are the paper's reading, so that a
checkpoint written before they existed loads as it was trained; a run's defaults (`ImplicitConfig`) are
κ 1 per step, ρ = 1 and λ = 0.5. Measured on the demo's long world (`cu_scale.data.demo`, 1,000 videos of 2-7 minutes, moments of median 11 s, 4 % of the video;
T = 128, K = 32, B = 64, 8 epochs, hidden 64; pseudo-labels of the 4,153 training samples, mIoU, beside the
partial label widened to the mean moment length, 46.25, which a user of single frames does not know):
- `steepness_unit`: with κ per normalised time, κ = 30 makes a mask edge span 4.4/30 of the video, 40 s
  of a 270-s video, four times a moment: the mask of a 5-s event and of a 30-s one pool about the same
  steps, so the losses cannot tell the event's width (κ, one scalar under AdamW, moved from 30 to 30.1 in
  a run). Per feature step ("step"), κ = 1 gives edges of about four steps at any video length.
- `context_widths` (ρ): L_raun asks S(v_ev, v_vd) > S(v_ev, v_bg) + β. Over the whole video, a 4 % event
  leaves v_vd ≈ v_bg whatever it covers, so the hinge never closes and only pushes the event wider, by as
  much as the video allows; only the inter-sample contrasts (Eq. 6–7) push back, towards the anchor step
  alone. Per-term gradients on ℓ (trained model, 12 batches): L_raun −0.36, L_erml +0.22, L_erun +0.21,
  L_raml +0.03 (> 0 shrinks). With ρ the background and the video of Eq. 2 are the event's surroundings,
  ρ·ℓ on each side (`pool_event`'s context): the intra-sample losses then compare the event with what is
  around it, at any scale, and on a video where the event is a third or more of it nothing changes.
- `initial_width`: ℓ starts at 0.5 of the video (sigmoid(0)); a setting for runs that start smaller.
Measured (pseudo-label mIoU; median event length against 11.0 s):
    paper's reading (κ 30 per video, whole video)                           32.62   4.7 s
    κ 1 per step                                                            20.76   2.0 s
    κ 1 per step, inter-sample contrasts on the clip (representation: clip)  9.11  174.2 s
    κ 1 per step, ρ = 1                                                     43.31   7.4 s
    κ 2 per step, ρ = 1                                                     40.34   5.7 s
    κ 1 per step, ρ = 1, representation: clip                               30.96  43.3 s
    κ 1 per step, ρ = 1, λ = 0.5                                            45.71  12.6 s
Events sit on their anchor in every run (centres 0.5 s from it, true centres 3.6 s): the offset is what
is left to learn before pseudo-labels beat the widened label on long videos. On simulated Charades-STA
with glance labels, the last row's settings gave pseudo-label mIoU 72.96 (R@0.7 64.84) against 70.99
(57.64) for the paper's reading, and there the centres do move (2.4 s from the anchor, 1.3 s from the truth).

What the detector has not learned on long videos is to read the video at all: in the last row, predicted
and true lengths correlate at 0.03 (log lengths) and predicted and true centre offsets at 0.10, so the
events are one window of about the right size around the anchor, which is why they only tie the widened
label. The losses do point at the moments: on 16 training batches of that model every term is lower with
the mask on the true moment than on the predicted event (L_raml 0.047 against 0.084, L_raun 0.289 against
0.360, L_erml 0.550 against 0.746, L_erun 0.837 against 1.099). Two detectors tried on the same batches
(a plain PyTorch loop of this model and these losses), neither better:
- `offset_unit: width`, δ = ½·ℓ·tanh(·) so the anchor stays inside the event and δ has the event's scale:
  mIoU 43.74; centres move 1.9 s from the anchor but land 5.0 s from the true ones (3.6 s unmoved).
- Boundaries as soft choices of steps (a softmax over the steps before the anchor for ŝ, after it for ê,
  each scored from V_t and its offset code): mIoU 45.60 (R@0.5 38.45) after 8 epochs, 44.35 after 16, with
  length correlations of 0.09-0.10. Training drives the losses below their value at the true moments
  without finding them: the representation adapts to wherever the events are.
What does move them: `detector_similarity`. Φ reads, beside each V_t and its offset code, the step's
cosine similarity to q in the contrasts' own space (centred on the video's mean, detached so that the
losses alone shape that space): the quantity L_raml rewards, given to the detector as a map of where the
query's content is. Same batches and loop, 8 epochs: mIoU 48.01 (R@0.3/0.5/0.7 78.74 / 43.99 / 16.04)
against 45.71 and the widened label's 46.25 (37.42 R@0.5); centre offsets now correlate with the true ones
at 0.51 (0.10 before), centres land 3.2 s from the truth (3.6 s unmoved), median length 13.7 s against
11.0 s. Through the stage itself (Ray Train, DeepSpeed): 48.18 (R@0.5 44.86), median 12.9 s, centres
3.1 s from the truth. It is off by default until simulated Charades-STA has been rerun with it.

ActivityNet Captions (simulated, videos of about 2 minutes, moments of median 21 s): there the events
balloon to most of the video (median 101.8 s against 21.1 s after the 8 epochs of the first full run,
93 % of the video), and none of the settings above holds them. The cause is when L_raun starts to act.
In the first hundred steps, with a representation that has learned nothing (every term still at its
starting value), L_raun widens every event to the whole video (our reading: while every step's features
are alike, S(v_ev, v_vd) is largest when the event is the video). The trained model then fits the wide events (its
four terms are lower on them than on the true moments: L_erml 0.75 against 1.00, L_erun 0.78 against
1.09, L_raml 0.165 against 0.196). A plain loop of this model and these losses on 8 of the 59 shards
(7,635 training samples, K 256, hidden 128, the schedule of 16 epochs, stopped after 700 steps; with
`offset_unit: width` and `detector_similarity`), median event width after 100 steps and at the end,
pseudo-label mIoU and R@0.5 (the partial label widened to the true mean length, 35.4 s: 44.06 / 38.05),
median length against the true 20.8 s:
    all four terms from the start                         0.991 → 0.995   39.60  35.02   73.9 s
    ... ℓ starting at 0.1 of the video (initial_width)    0.999 → 0.998   40.08  35.68   73.4 s
    L_raun after 300 steps (raun_warmup_epochs)           0.385 → 0.301   45.64  42.46   34.3 s
Without L_raun the inter-sample contrasts first shrink the events to the frame (0.02 of the video at step
300), and when L_raun joins they grow to about a third of it: the first setting that beats the widened
label there. Through the stage, on the whole corpus, the 8-epoch run with `offset_unit: width` and
`detector_similarity` but no warm-up still had events of the whole video after its first epoch (median
0.9995 of the video); a shorter schedule (2 epochs of the subset) had hidden this, giving 43.92 because
its learning rate fell before the events grew. With `raun_warmup_epochs: 1` as well (stopped after two of
its 8 epochs): after epoch 1 the events had shrunk to the frame (0.0002 of the video); one epoch of L_raun
later they covered 0.84 of it (68.6 s against 23.7 s on 4 batches), although by then every term was lower
on the true moments (L_raun 0.334 against 0.382). So the warm-up gives a representation that points at
the moments, and the detector still overshoots them.
What L_raun does to the width was the cause, and the pooled cosine of Eq. 5 is what does it: a mean over
few noisy steps has a low cosine with anything, so an event that leaves its background a few edge steps
lowers S(v_ev, v_bg), and S(v_ev, v_vd) → 1 as the event becomes the video. Between steps centred on their
video's mean (`raun_similarity: steps`, the default; `cu_scale.method.losses.raun_steps_loss` has the runs) a
whole-video event gains nothing, the width is set by the losses rather than by where it started, and the
warm-up is no longer needed: on the same 8 shards (6 epochs, no warm-up, no `offset_unit: width` or
`detector_similarity`) 46.94 / 43.47 with events 1.64× the moments, 46.85 / 42.78 and 1.45× with λ = 1,
45.42 / 39.95 and 1.19× with λ = 1.5. Through the stage on the whole corpus (8 epochs, two workers, λ = 1):
50.95 / 51.12 against the widened label's 44.05 / 38.29, events of median 34.1 s against 21.1 s (1.62×),
centres 8.6 s from the anchor (true 8.8 s) and 10.3 s from the true centre (before: 26.2 s).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from cu_scale.method.layers import CrossModalLayer, offset_code, step_centres, steps_inside


CONTRAST_FEATURES = ("unimodal", "fused")
STEEPNESS_UNITS = ("video", "step")
OFFSET_UNITS = ("video", "width")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImplicitModelConfig:
    """The model's shape and its event parametrisation. A run builds it from its config
    (`cu_scale.config.ImplicitConfig.model`), which holds every default and says why; nothing here repeats them."""

    video_dim: int  # Dv
    word_dim: int  # Dq
    hidden_dim: int  # D
    heads: int
    dropout: float
    initial_steepness: float  # κ at start, per `steepness_unit`: the mask edge spans ~1/κ of that unit
    contrast_features: str  # what Eq. 2 pools and q is made of: "unimodal" or "fused" (see above)
    steepness_unit: str  # κ per normalised time ("video") or per feature step ("step")
    initial_width: float | None  # ℓ at start (the width head's bias); None: PyTorch's default init, ℓ ≈ 0.5
    context_widths: float | None  # background and video of Eq. 2 within this many event widths of the event; None: the whole video
    offset_unit: str  # δ = ½·tanh(·) of the video ("video") or ½·ℓ·tanh(·), inside the event's half-width ("width")
    detector_similarity: bool  # Φ also reads each step's cosine similarity to q in the contrasts' space (not back-propagated)
    offset_code_dim: int = 32  # size of the sinusoidal code of (t − t_c) the detector sees: part of the architecture, not a setting

    def __post_init__(self):
        if self.contrast_features not in CONTRAST_FEATURES:
            raise ValueError(f"contrast_features: must be one of {CONTRAST_FEATURES}, got {self.contrast_features!r}")
        if self.steepness_unit not in STEEPNESS_UNITS:
            raise ValueError(f"steepness_unit: must be one of {STEEPNESS_UNITS}, got {self.steepness_unit!r}")
        if self.offset_unit not in OFFSET_UNITS:
            raise ValueError(f"offset_unit: must be one of {OFFSET_UNITS}, got {self.offset_unit!r}")
        if self.initial_steepness <= 0:
            raise ValueError(f"initial_steepness: must be > 0, got {self.initial_steepness}")
        if self.initial_width is not None and not 0 < self.initial_width < 1:
            raise ValueError(f"initial_width: must be in (0, 1) (a fraction of the video), got {self.initial_width}")
        if self.context_widths is not None and self.context_widths <= 0:
            raise ValueError(f"context_widths: must be > 0 (event widths on each side), got {self.context_widths}")
        if self.hidden_dim % self.heads:
            raise ValueError(f"heads: hidden_dim {self.hidden_dim} must be divisible by heads {self.heads}")


def plateau_mask(centres: torch.Tensor, start: torch.Tensor, end: torch.Tensor, steepness: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """m_t = σ(κ(τ_t − ŝ)) · σ(κ(ê − τ_t)) on valid steps, 0 on padding. Shapes (B, T), (B,), (B,), (), (B, T)."""
    rise = torch.sigmoid(steepness * (centres - start[:, None]))
    fall = torch.sigmoid(steepness * (end[:, None] - centres))
    return rise * fall * valid.float()


def pool_event(features: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 2: (v_ev, v_bg, v_vd), each (B, D), averaged over the T valid steps. With a `context` (B, T)
    mask (≥ `mask`), the background and the video are those of the context: v_bg = 1/T Σ (c_t − m_t) V_t,
    v_vd = 1/T Σ c_t V_t; so v_vd = v_ev + v_bg either way."""
    steps = valid.float().sum(1, keepdim=True).clamp(min=1)
    around = valid.float() if context is None else context
    v_ev = (mask[..., None] * features).sum(1) / steps
    v_bg = ((around - mask)[..., None] * features).sum(1) / steps
    v_vd = (around[..., None] * features).sum(1) / steps
    return v_ev, v_bg, v_vd


def pool_clip(features: torch.Tensor, centres: torch.Tensor, valid: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The partial label's own feature (Table V's short-clip representation): the mean of its steps
    (`steps_inside`). (B, D)."""
    weights = steps_inside(centres, valid, start, end).float()[..., None]
    return (weights * features).sum(1) / weights.sum(1).clamp(min=1)


@dataclasses.dataclass
class ImplicitOutput:
    start: torch.Tensor  # ŝ (B,), normalised
    end: torch.Tensor  # ê (B,)
    offset: torch.Tensor  # δ (B,)
    width: torch.Tensor  # ℓ (B,)
    mask: torch.Tensor  # m (B, T)
    context: torch.Tensor  # the weights of Eq. 2's video (B, T): the context (≥ m) or the valid steps
    v_ev: torch.Tensor  # (B, D)
    v_bg: torch.Tensor
    v_vd: torch.Tensor
    q: torch.Tensor  # (B, D)
    video: torch.Tensor  # the per-step features Eq. 2 pooled (B, T, D), for other representations (Table V)
    centres: torch.Tensor  # τ (B, T)
    valid: torch.Tensor  # (B, T) bool


class ImplicitModel(nn.Module):
    def __init__(self, config: ImplicitModelConfig):
        super().__init__()
        self.config = config
        d = config.hidden_dim
        self.video_in = nn.Sequential(nn.Linear(config.video_dim, d), nn.Dropout(config.dropout))
        self.words_in = nn.Sequential(nn.Linear(config.word_dim, d), nn.Dropout(config.dropout))
        self.video_to_words = CrossModalLayer(d, config.heads, config.dropout)
        self.words_to_video = CrossModalLayer(d, config.heads, config.dropout)
        if config.contrast_features == "unimodal":
            self.video_encoder = nn.TransformerEncoderLayer(d, config.heads, 2 * d, config.dropout, batch_first=True, norm_first=True)
            self.words_encoder = nn.TransformerEncoderLayer(d, config.heads, 2 * d, config.dropout, batch_first=True, norm_first=True)
        detector_in = d + config.offset_code_dim + int(config.detector_similarity)
        self.detector_score = nn.Sequential(nn.Linear(detector_in, d), nn.Tanh(), nn.Linear(d, 1))
        self.detector_head = nn.Sequential(nn.Linear(detector_in, d), nn.GELU(), nn.Linear(d, 2))
        # κ = softplus(κ_raw); start at the configured steepness. Shape (1,), not (): DeepSpeed broadcasts
        # parameters as bytes and cannot view a 0-d tensor that way.
        self.steepness_raw = nn.Parameter(torch.tensor([math.log(math.expm1(config.initial_steepness))]))
        if config.initial_width is not None:
            with torch.no_grad():
                self.detector_head[-1].bias[1] = math.log(config.initial_width / (1 - config.initial_width))

    @property
    def steepness(self) -> torch.Tensor:
        return F.softplus(self.steepness_raw)[0]

    def forward(self, video, video_valid, words, words_valid, anchor) -> ImplicitOutput:
        """video (B, T, Dv), video_valid (B, T) bool, words (B, M, Dq), words_valid (B, M) bool, anchor t_c (B,) normalised."""
        v = self.video_in(video.float())
        w = self.words_in(words.float())
        fused_video = self.video_to_words(v, video_valid, w, words_valid)
        fused_words = self.words_to_video(w, words_valid, v, video_valid)
        if self.config.contrast_features == "unimodal":
            contrast_video = self.video_encoder(v, src_key_padding_mask=~video_valid)
            contrast_words = self.words_encoder(w, src_key_padding_mask=~words_valid)
        else:
            contrast_video, contrast_words = fused_video, fused_words
        word_weights = words_valid.float()[..., None]
        q = (contrast_words * word_weights).sum(1) / word_weights.sum(1).clamp(min=1)

        centres = step_centres(video_valid.sum(1), video.shape[1])
        code = offset_code((centres - anchor[:, None]).clamp(-1, 1), self.config.offset_code_dim)
        parts = [fused_video, code]
        if self.config.detector_similarity:
            similarity = F.cosine_similarity(contrast_video, q[:, None, :], dim=-1).detach() * video_valid
            mean = similarity.sum(1, keepdim=True) / video_valid.sum(1, keepdim=True).clamp(min=1)
            parts.append(((similarity - mean) * video_valid)[..., None])  # relative to the video's mean
        joined = torch.cat(parts, dim=-1)
        scores = self.detector_score(joined).squeeze(-1).masked_fill(~video_valid, float("-inf"))
        pooled = (torch.softmax(scores, dim=1)[..., None] * joined).sum(1)
        raw_offset, raw_width = self.detector_head(pooled).unbind(-1)
        offset, width = 0.5 * torch.tanh(raw_offset), torch.sigmoid(raw_width)  # Eq. 1
        if self.config.offset_unit == "width":  # |δ| < ℓ/2: the anchor stays inside the event
            offset = offset * width
        centre = anchor + offset
        start, end = (centre - width / 2).clamp(0, 1), (centre + width / 2).clamp(0, 1)

        steepness = self.steepness
        if self.config.steepness_unit == "step":  # per feature step: in normalised time, κ · n for n valid steps
            steepness = steepness * video_valid.sum(1, keepdim=True).float()
        mask = plateau_mask(centres, start, end, steepness, video_valid)
        context = None
        if self.config.context_widths is not None:  # the same plateau, widened by ρ·ℓ on each side (not clamped: it may run past the video)
            reach = self.config.context_widths * (end - start)
            context = torch.maximum(plateau_mask(centres, start - reach, end + reach, steepness, video_valid), mask)
        v_ev, v_bg, v_vd = pool_event(contrast_video, mask, video_valid, context)  # Eq. 2
        context = video_valid.float() if context is None else context
        return ImplicitOutput(start, end, offset, width, mask, context, v_ev, v_bg, v_vd, q, contrast_video, centres, video_valid)
