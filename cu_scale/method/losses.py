"""The implicit-stage losses (paper Eq. 3–8). Plain PyTorch: no Ray, no DeepSpeed.

    L_raml = max(S(v_vd, q) − S(v_ev, q) + α, 0)                                    (Eq. 4)
    L_raun = max(S(v_ev, v_bg) − S(v_ev, v_vd) + β, 0)                              (Eq. 5)
    L_erml = −log Σ_{m∈Ψ⁺_i} exp(v_i·q_m/τ) / Σ_{j∈Ψ⁺_i∪Ψ⁻_i} exp(v_i·q_j/τ)             (Eq. 6)
    L_erun = −log Σ_{m∈Ψ⁺_i} exp(v_i·v_m/τ) / Σ_{j∈Ψ⁺_i∪Ψ⁻_i} exp(v_i·v_j/τ)             (Eq. 7)
    L_cont = (L_raml + L_raun) + λ (L_erml + L_erun)                                 (Eq. 3)
    L_grnd = max(t_e − ê, ŝ − t_s, 0)                                                 (Eq. 8)
             + [full label, `full_label_grounding: match`] max(ê − t_e, t_s − ŝ, 0)
    L      = L_cont + γ L_grnd

S is cosine similarity and "·" the normalised dot product (also a cosine). Choices where the paper is silent:
- Each loss is averaged over the samples of the batch (the paper writes Σ_i): the scale of λ and γ then
  does not depend on the batch size.
- Ψ⁺_i are the samples sharing at least one cluster with i (a sample may belong to several clusters).
  In Eq. 6 the keys are the batch's queries, i's own query included (it is in i's cluster). In Eq. 7 the
  keys are the *other* samples' event features: i itself is left out of both sums (v_i·v_i/τ would be a
  trivial positive), and a sample with no other positive in the batch is left out of the mean.
- Across workers (`gather=True`): keys (queries, event features) and cluster ids of all ranks' batches
  are gathered, as open_clip's ClipLoss does with gather_with_grad: through autograd, so each key also gets
  the gradient of the other ranks' anchors. After the data-parallel gradient average, W workers with B/W
  samples each then compute exactly the gradient of one worker on all B. (Treating the other ranks' keys
  as constants loses that part: on simulated Charades-STA two workers reached pseudo-label mIoU 66.0
  against 69.0–70.1 for one.)
- Representation pair (Table V): the inter-sample contrasts (Eq. 6–7) use the event feature v_ev by
  default, or the partial clip's feature, or the whole video's v_vd. The intra-sample losses keep v_ev:
  they are defined by the event/background/video split itself.
- L_grnd is computed on normalised time (fractions of the video), like the detector.
- A full label (mixed supervision: the whole moment is known) is the tightest partial label. Eq. 8 alone
  holds the event to cover it; with `full_label_grounding: match` its mirror also holds the event inside
  it, so the event is held to the moment from both sides and the detector learns the scale of events from
  the samples that show it (`cu_scale.config.ImplicitConfig` has the measurements).
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn import functional as F

REPRESENTATIONS = ("event", "clip", "video")
RAUN_SIMILARITIES = ("pooled", "steps")
FULL_LABEL_GROUNDINGS = ("cover", "match")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
    """The settings of Eq. 3–8. A run builds them from its config (`cu_scale.config.ImplicitConfig.losses`),
    which holds every default and says why; nothing here repeats them."""

    alpha: float  # margin of L_raml
    beta: float  # margin of L_raun
    tau: float  # temperature of L_erml, L_erun
    lam: float  # λ: weight of the inter-sample contrasts
    gamma: float  # γ: weight of L_grnd
    use_raml: bool
    use_raun: bool
    use_erml: bool
    use_erun: bool
    representation: str  # what Eq. 6–7 contrast: "event", "clip" or "video" (Table V)
    gather_across_workers: bool
    raun_similarity: str  # S of Eq. 5: cosine of the pooled features ("pooled") or mean cosine between their centred steps ("steps")
    full_label_grounding: str  # a full label in Eq. 8: the event covers it ("cover") or is held to it from both sides ("match")

    def __post_init__(self):
        if self.full_label_grounding not in FULL_LABEL_GROUNDINGS:
            raise ValueError(f"full_label_grounding: must be one of {FULL_LABEL_GROUNDINGS}, got {self.full_label_grounding!r}")
        if self.raun_similarity not in RAUN_SIMILARITIES:
            raise ValueError(f"raun_similarity: must be one of {RAUN_SIMILARITIES}, got {self.raun_similarity!r}")
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"representation: must be one of {REPRESENTATIONS}, got {self.representation!r}")
        if self.tau <= 0:
            raise ValueError(f"tau: must be > 0, got {self.tau}")


def raml_loss(v_ev: torch.Tensor, v_vd: torch.Tensor, q: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 4, averaged over the batch."""
    return F.relu(F.cosine_similarity(v_vd, q, dim=-1) - F.cosine_similarity(v_ev, q, dim=-1) + alpha).mean()


def raun_loss(v_ev: torch.Tensor, v_bg: torch.Tensor, v_vd: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 5, averaged over the batch."""
    return F.relu(F.cosine_similarity(v_ev, v_bg, dim=-1) - F.cosine_similarity(v_ev, v_vd, dim=-1) + beta).mean()


def step_pair_similarity(units: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean cosine over the pairs of distinct steps (s ≠ t) between two weightings of one video's steps:
    Σ_{s≠t} a_s b_t u_s·u_t / Σ_{s≠t} a_s b_t = (A·B − Σ_t a_t b_t) / (Σa Σb − Σ_t a_t b_t), with A = Σ a_t u_t,
    B = Σ b_t u_t, for unit step features `units` (B, T, D) and weights a, b (B, T). (B,)"""
    sum_a, sum_b = (a[..., None] * units).sum(1), (b[..., None] * units).sum(1)
    self_pairs = (a * b).sum(1)
    return ((sum_a * sum_b).sum(-1) - self_pairs) / (a.sum(1) * b.sum(1) - self_pairs).clamp(min=1e-6)


def centred_units(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each step's features (B, T, D) minus its video's mean step over the `valid` (B, T) steps, at unit length."""
    weights = valid.float()[..., None]
    mean = (weights * features).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
    return F.normalize(features - mean, dim=-1)


def raun_steps_loss(features: torch.Tensor, mask: torch.Tensor, context: torch.Tensor, valid: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 5 with S between sets of steps (`raun_similarity: steps`, the default), averaged over the batch:
    max(S(ev, bg) − S(ev, vd) + β, 0), S the mean cosine between an event step and a background step
    (weights m and c − m) or a video step (weights c), never a step with itself, each step's features
    centred on its video's mean step first (`centred_units`). `features` (B, T, D) are the steps Eq. 2 pools,
    `mask` m and `context` c (B, T) its weights (c is the valid steps without a context), `valid` (B, T).

    *Choice* (the paper pools first, then takes one cosine), measured on three corpora: simulated
    ActivityNet Captions (moments of median 21 s in 2-minute videos), the demo's long world (11 s in
    4 minutes) and simulated Charades-STA (8 s in 30 s), glance labels, pseudo-label mIoU / R@0.5 and the
    median event against the true median, in the plain loop of `benchmarks/implicit_plain_loop.py` (ActivityNet
    on 8 of its shards for 6 epochs):
    - Pooled ("pooled"): the cosine of a mean over few noisy steps is low against anything, and L_raun
      rewards a low S(v_ev, v_bg); an event of the whole video leaves a background of a few edge steps, and
      S(v_ev, v_vd) → 1 as the event becomes the video. So events balloon wherever the background can be
      made small: on ActivityNet 40.38 / 35.85 with events 3.30× the moments, against 44.06 / 38.05 for the
      partial label widened to the true mean length. (On synthetic videos, tests/test_losses.py, the pooled
      L_raun is lower for the whole video than for the true moment.)
    - Between steps, not centred: the step features share a large common direction, so every cosine sits
      near 1 and L_raun hardly moves (0.493 → 0.486 over the ActivityNet run); the events keep the width
      the other terms leave them (1.12× there, 2.85× with λ 0.25 and `detector_similarity`).
    - Between centred steps: S compares how steps differ from their video's mean, from −1 to 1, whatever
      the event's size; a whole-video event costs about β (event and video are the same steps) and a
      moment that stands out from its surroundings costs less. The width is then the losses' own: on
      ActivityNet events started at 0.05 of the video or at 0.5 end at the same 0.33 of it (0.035 on the
      long world); L_raun falls 0.47 → 0.39. ActivityNet 46.94 / 43.47 (1.64×), the long world 47.10 /
      41.51 against 46.25 / 37.42 (0.75×), Charades-STA 73.95 (1.18×) against 61.17 for the widened label.
      How long the events come out then depends on λ (`cu_scale.config.ImplicitConfig`). Through the stage,
      with the shipped configs: the long world 50.67 / 47.94 (λ 0.25, events 1.01× the moments),
      ActivityNet Captions 50.95 / 51.12 against 44.05 / 38.29 (λ 1, 1.62×), Charades-STA 74.23 / 88.27.
    With ρ = 1 the hinge stays active (closing it takes S(ev, ev) − S(ev, bg) > about 3β), so β only
    shifts the loss."""
    units = centred_units(features, valid)
    return F.relu(step_pair_similarity(units, mask, context - mask) - step_pair_similarity(units, mask, context) + beta).mean()


def same_cluster(anchors: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, K) bool: anchor i and key j share at least one cluster. Memberships are (B, m) and (K, m) ids."""
    return (anchors[:, None, :, None] == keys[None, :, None, :]).any(-1).any(-1)


def _info_nce(similarity: torch.Tensor, positive: torch.Tensor, keep: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over rows of −log Σ_pos exp(s/τ) / Σ_keep exp(s/τ); rows without a positive are skipped."""
    logits = (similarity / tau).masked_fill(~keep, float("-inf"))
    numerator = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    denominator = torch.logsumexp(logits, dim=1)
    has_positive = (positive & keep).any(1)
    if not has_positive.any():
        return similarity.sum() * 0.0
    return (denominator - numerator)[has_positive].mean()


def gather_with_grad(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """All ranks' `x` concatenated in rank order. A float `x` is gathered through autograd: the gradient
    every rank's loss puts on a key flows back to the rank that owns the key (ids are gathered plainly)."""
    import torch.distributed as dist

    if x.is_floating_point():
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x.contiguous()))
    parts = [torch.zeros_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def inter_sample_losses(
    v: torch.Tensor,
    q: torch.Tensor,
    clusters: torch.Tensor,
    tau: float,
    rank: int = 0,
    world_size: int = 1,
    gather: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_erml, L_erun) of Eq. 6–7 for visual features `v` (B, D), queries `q` (B, D), clusters (B, m)."""
    v_n, q_n = F.normalize(v, dim=-1), F.normalize(q, dim=-1)
    keys_q, keys_v, key_clusters = q_n, v_n, clusters
    if gather and world_size > 1:
        keys_q = gather_with_grad(q_n, rank, world_size)
        keys_v = gather_with_grad(v_n, rank, world_size)
        key_clusters = gather_with_grad(clusters, rank, world_size)
    offset = rank * v.shape[0] if gather and world_size > 1 else 0
    positive = same_cluster(clusters, key_clusters)
    everything = torch.ones_like(positive)
    not_self = everything.clone()
    not_self[torch.arange(v.shape[0]), offset + torch.arange(v.shape[0])] = False
    erml = _info_nce(v_n @ keys_q.T, positive, everything, tau)
    erun = _info_nce(v_n @ keys_v.T, positive & not_self, not_self, tau)
    return erml, erun


def grounding_loss(
    start: torch.Tensor, end: torch.Tensor, partial_start: torch.Tensor, partial_end: torch.Tensor, match: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 8: the partial label must lie inside the predicted event; averaged over the batch. Where `match`
    (B,) is True (a full label, `full_label_grounding: match`), the event must also lie inside the label."""
    loss = F.relu(torch.maximum(partial_end - end, start - partial_start))
    if match is not None:
        loss = loss + match.float() * F.relu(torch.maximum(end - partial_end, partial_start - start))
    return loss.mean()


def implicit_loss(
    config: LossConfig,
    v_ev: torch.Tensor,
    v_bg: torch.Tensor,
    v_vd: torch.Tensor,
    q: torch.Tensor,
    v_clip: torch.Tensor | None,
    clusters: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    partial_start: torch.Tensor,
    partial_end: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
    steps: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    full: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3 + γ·Eq. 8 with the switches of Table II; returns the total and every term as a plain float.
    `steps` (features, mask, context of Eq. 2 and the valid steps) is needed for `raun_similarity: steps`;
    `full` (B,) marks the samples whose label is a full moment (mixed supervision)."""
    zero = v_ev.sum() * 0.0
    if not config.use_raun:
        raun = zero
    elif config.raun_similarity == "steps":
        if steps is None:
            raise ValueError("raun_similarity 'steps' needs the steps Eq. 2 pools, their weights and the valid steps (steps=)")
        raun = raun_steps_loss(*steps, config.beta)
    else:
        raun = raun_loss(v_ev, v_bg, v_vd, config.beta)
    terms = {"raml": raml_loss(v_ev, v_vd, q, config.alpha) if config.use_raml else zero, "raun": raun}
    if config.use_erml or config.use_erun:
        visual = {"event": v_ev, "clip": v_clip, "video": v_vd}[config.representation]
        if visual is None:
            raise ValueError("representation 'clip' needs the partial clip's features (v_clip)")
        erml, erun = inter_sample_losses(visual, q, clusters, config.tau, rank, world_size, config.gather_across_workers)
        terms["erml"] = erml if config.use_erml else zero
        terms["erun"] = erun if config.use_erun else zero
    else:
        terms["erml"] = terms["erun"] = zero
    terms["cont"] = terms["raml"] + terms["raun"] + config.lam * (terms["erml"] + terms["erun"])
    match = full if full is not None and config.full_label_grounding == "match" else None
    terms["grnd"] = grounding_loss(start, end, partial_start, partial_end, match)
    total = terms["cont"] + config.gamma * terms["grnd"]
    return total, {name: float(value.detach()) for name, value in {**terms, "total": total}.items()}
