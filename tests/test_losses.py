"""Every equation of the implicit stage against a hand-computed value on a tiny case (paper Eq. 1–8)."""

import dataclasses
import math

import pytest
import torch

from cu_scale.config import ImplicitConfig
from cu_scale.method.implicit_model import ImplicitModel, plateau_mask, pool_clip, pool_event, step_centres
from cu_scale.method.losses import (
    centred_units,
    grounding_loss,
    implicit_loss,
    inter_sample_losses,
    raml_loss,
    raun_loss,
    raun_steps_loss,
    same_cluster,
    step_pair_similarity,
)

# The settings these tests compute by hand: the paper's reading (κ 30 per video, Eq. 2 over the whole video,
# L_raun between pooled features, λ 1, one worker), changed per test. A run builds both objects the same way.
PAPER_READING = ImplicitConfig(
    steepness_unit="video", initial_steepness=30.0, context_widths=None, lam=1.0, raun_similarity="pooled", gather_across_workers=False, dropout=0.0
)


def LossConfig(**changes):
    return dataclasses.replace(PAPER_READING.losses(), **changes)


def ImplicitModelConfig(video_dim: int, word_dim: int, **changes):
    return dataclasses.replace(PAPER_READING.model(video_dim, word_dim), **changes)


sigmoid = lambda x: 1 / (1 + math.exp(-x))


def test_plateau_mask_is_a_product_of_two_sigmoids():
    centres = torch.tensor([[0.1, 0.5, 0.9, 1.3]])
    valid = torch.tensor([[True, True, True, False]])
    mask = plateau_mask(centres, torch.tensor([0.25]), torch.tensor([0.75]), torch.tensor(10.0), valid)
    # m(0.1) = σ(10·(0.1−0.25))·σ(10·(0.75−0.1)) = σ(−1.5)·σ(6.5); m(0.5) = σ(2.5)²; padding → 0.
    expected = [sigmoid(-1.5) * sigmoid(6.5), sigmoid(2.5) ** 2, sigmoid(-1.5) * sigmoid(6.5), 0.0]
    assert mask[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[:2] == pytest.approx([0.182152, 0.854038], abs=1e-6)


def test_step_centres_are_normalised_by_the_valid_steps():
    assert step_centres(torch.tensor([4]), 5)[0].tolist() == pytest.approx([0.125, 0.375, 0.625, 0.875, 1.125])


def test_event_background_and_video_features_eq2():
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
    valid = torch.tensor([[True, True, False]])  # T = 2 valid steps
    mask = torch.tensor([[1.0, 0.5, 0.0]])
    v_ev, v_bg, v_vd = pool_event(features, mask, valid)
    # v_ev = (1·[1,0] + 0.5·[0,1]) / 2; v_bg = (0·[1,0] + 0.5·[0,1]) / 2; v_vd = ([1,0] + [0,1]) / 2
    assert v_ev[0].tolist() == [0.5, 0.25] and v_bg[0].tolist() == [0.0, 0.25] and v_vd[0].tolist() == [0.5, 0.5]


def test_raml_eq4():
    v_vd = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    v_ev = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    q = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    # Row 1: S(vd,q) = 3/√10, S(ev,q) = 1/√5 → 3/√10 − 1/√5 + 0.2 = 0.701470. Row 2: 0 − 1/√2 + 0.2 < 0 → 0.
    assert raml_loss(v_ev, v_vd, q, alpha=0.2).item() == pytest.approx((3 / math.sqrt(10) - 1 / math.sqrt(5) + 0.2) / 2, abs=1e-6)


def test_raun_eq5():
    v_ev, v_bg, v_vd = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    # S(ev,bg) = 1/√2, S(ev,vd) = 0 → 1/√2 + 0.1
    assert raun_loss(v_ev, v_bg, v_vd, beta=0.1).item() == pytest.approx(1 / math.sqrt(2) + 0.1, abs=1e-6)


def test_step_pair_similarity_leaves_out_a_step_with_itself():
    # Unit steps u1 = [1,0], u2 = [0,1], u3 = [1,0] (features of any length: they are normalised).
    units = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]] * 2), dim=-1)
    mask, context = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.5, 0.0]]), torch.ones(2, 3)
    # Hard mask {1, 2}, ring {3}: pairs (1,3) cos 1 and (2,3) cos 0 → 1/2. Event × video, s ≠ t: (1,2) 0,
    # (1,3) 1, (2,1) 0, (2,3) 0 → 1/4. Soft mask m = (1, ½, 0), ring c − m = (0, ½, 1): pairs (1,2) w ½ cos 0,
    # (1,3) w 1 cos 1, (2,3) w ½ cos 0 → 1/2; event × video: (1,2) w 1, (1,3) w 1 cos 1, (2,1) w ½, (2,3) w ½ → 1/3.
    assert step_pair_similarity(units, mask, context - mask).tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert step_pair_similarity(units, mask, context).tolist() == pytest.approx([0.25, 1 / 3], abs=1e-6)

def test_raun_between_centred_steps_by_hand():
    # Steps [1,0], [0,2], [3,0]: their mean is [4/3, 2/3], so centred they are [−1,−2]/3, [−4,4]/3, [5,−2]/3,
    # and their cosines c12 = −1/√10, c13 = −1/√145, c23 = −7/√58.
    features = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]] * 2)
    units = centred_units(features, torch.ones(2, 3, dtype=torch.bool))
    by_hand = [-1 / math.sqrt(5), -2 / math.sqrt(5), -1 / math.sqrt(2), 1 / math.sqrt(2), 5 / math.sqrt(29), -2 / math.sqrt(29)]
    assert units[0].flatten().tolist() == pytest.approx(by_hand, abs=1e-6)
    c12, c13, c23 = -1 / math.sqrt(10), -1 / math.sqrt(145), -7 / math.sqrt(58)
    mask, context = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.5, 0.0]]), torch.ones(2, 3)
    # Hard mask {1, 2}: background pairs (1,3), (2,3); video pairs (1,2), (1,3), (2,1), (2,3).
    hard = (c13 + c23) / 2 - (2 * c12 + c13 + c23) / 4 + 0.1
    # Soft mask (1, ½, 0), ring (0, ½, 1): background pairs (1,2) w ½, (1,3) w 1, (2,3) w ½; video pairs
    # (1,2) w 1, (1,3) w 1, (2,1) w ½, (2,3) w ½.
    soft = (0.5 * c12 + c13 + 0.5 * c23) / 2 - (1.5 * c12 + c13 + 0.5 * c23) / 3 + 0.1
    assert hard > 0 and soft > 0
    valid = torch.ones(2, 3, dtype=torch.bool)
    assert raun_steps_loss(features, mask, context, valid, beta=0.1).item() == pytest.approx((hard + soft) / 2, abs=1e-6)
    # A padded step takes no part: the same video with a fourth, invalid step gives the same loss.
    padded = torch.cat([features, torch.full((2, 1, 2), 9.0)], dim=1)
    pad = lambda x: torch.cat([x, torch.zeros(2, 1)], dim=1)  # noqa: E731
    valid4 = torch.cat([valid, torch.zeros(2, 1, dtype=torch.bool)], dim=1)
    assert raun_steps_loss(padded, pad(mask), pad(context), valid4, beta=0.1).item() == pytest.approx((hard + soft) / 2, abs=1e-6)


def _synthetic_video(width: float, seed: int, steps: int = 128, dim: int = 64):
    """Step features with a shared direction, noise smoothed over 7 steps, and a moment of `width` (a fraction
    of the video, centred) that adds its own direction: the shape of a short moment in a long video."""
    generator = torch.Generator().manual_seed(seed)
    common, moment = (torch.nn.functional.normalize(torch.randn(dim, generator=generator), dim=0) for _ in range(2))
    noise = torch.randn(steps + 6, dim, generator=generator).unfold(0, 7, 1).mean(-1) * 2.6 * 3 / math.sqrt(dim)
    centres = step_centres(torch.tensor([steps]), steps)
    inside = ((centres - 0.5).abs() <= width / 2).float()[0]
    return (common + noise + inside[:, None] * moment)[None], centres


@pytest.mark.parametrize("width", [0.04, 0.1])
def test_between_steps_the_true_moment_costs_less_than_the_whole_video(width):
    """Why `raun_similarity: steps` exists: with the cosine of pooled features, an event of the whole video
    (the clamped event and a context of ρ = 1 that runs past both ends) scores lower L_raun than the true
    moment; between steps it scores higher, on every seed."""
    valid = torch.ones(1, 128, dtype=torch.bool)
    steepness = torch.tensor(128.0)  # κ = 1 per feature step

    def losses(features, centres, start, end):
        start, end = torch.tensor([max(start, 0.0)]), torch.tensor([min(end, 1.0)])
        mask = plateau_mask(centres, start, end, steepness, valid)
        reach = end - start
        context = torch.maximum(plateau_mask(centres, start - reach, end + reach, steepness, valid), mask)
        pooled = raun_loss(*pool_event(features, mask, valid, context), beta=0.5).item()
        return pooled, raun_steps_loss(features, mask, context, valid, beta=0.5).item()

    for seed in range(4):
        features, centres = _synthetic_video(width, seed)
        true_pooled, true_steps = losses(features, centres, 0.5 - width / 2, 0.5 + width / 2)
        whole_pooled, whole_steps = losses(features, centres, 0.0, 1.0)
        assert whole_pooled < true_pooled and true_steps < whole_steps


V = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
Q = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
CLUSTERS = torch.tensor([[0], [0], [1]])


def test_erml_eq6():
    erml, _ = inter_sample_losses(V, Q, CLUSTERS, tau=1.0)
    # Normalised: v1·q = [1,1,0], v2·q = [0,0,1], v3·q = [1/√2]*3; positives: samples 1,2 (cluster 0), 3 alone.
    row1 = -math.log(2 * math.e / (2 * math.e + 1))
    row2 = -math.log(2 / (2 + math.e))
    row3 = math.log(3)
    assert erml.item() == pytest.approx((row1 + row2 + row3) / 3, abs=1e-5)
    assert erml.item() == pytest.approx(0.708586, abs=1e-5)


def test_erun_eq7_leaves_self_out():
    _, erun = inter_sample_losses(V, Q, CLUSTERS, tau=1.0)
    # Sample 1: keys v2 (positive, cos 0) and v3 (negative, cos 1/√2) → log(1 + e^{1/√2}); sample 2 alike;
    # sample 3 has no other positive: left out of the mean.
    assert erun.item() == pytest.approx(math.log(1 + math.exp(1 / math.sqrt(2))), abs=1e-5)


def test_temperature_scales_the_logits():
    _, erun = inter_sample_losses(V, Q, CLUSTERS, tau=0.5)
    assert erun.item() == pytest.approx(math.log(1 + math.exp(2 / math.sqrt(2))), abs=1e-5)


def test_multiple_memberships_make_positives():
    clusters = torch.tensor([[0, 5], [1, 5], [2, 3]])
    assert same_cluster(clusters, clusters).tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_grounding_eq8():
    start, end = torch.tensor([0.3, 0.3, 0.3]), torch.tensor([0.6, 0.6, 0.6])
    partial_start, partial_end = torch.tensor([0.4, 0.2, 0.65]), torch.tensor([0.4, 0.7, 0.65])
    # max(t_e − ê, ŝ − t_s, 0): 0; max(0.1, 0.1) = 0.1; max(0.05, −0.35) = 0.05
    assert grounding_loss(start, end, partial_start, partial_end).item() == pytest.approx(0.05, abs=1e-6)


def test_a_full_label_holds_the_event_from_both_sides_with_match():
    # events [0.3, 0.6]; labels: a full moment [0.4, 0.5] inside the event, a full moment [0.2, 0.7] around it,
    # a single frame 0.65 past its end. Eq. 8: 0, 0.1, 0.05. The mirror, max(ê − t_e, t_s − ŝ, 0), on full
    # labels only: max(0.1, 0.1) = 0.1 for the first (the event overshoots the moment), max(−0.1, −0.1) → 0.
    start, end = torch.tensor([0.3, 0.3, 0.3]), torch.tensor([0.6, 0.6, 0.6])
    partial_start, partial_end = torch.tensor([0.4, 0.2, 0.65]), torch.tensor([0.5, 0.7, 0.65])
    full = torch.tensor([True, True, False])
    assert grounding_loss(start, end, partial_start, partial_end, full).item() == pytest.approx((0.1 + 0.1 + 0.05) / 3, abs=1e-6)
    batch = dict(start=start, end=end, partial_start=partial_start, partial_end=partial_end)
    v = torch.tensor([[1.0, 0.0]] * 3)
    for grounding, expected in (("match", (0.1 + 0.1 + 0.05) / 3), ("cover", 0.15 / 3)):
        _, terms = implicit_loss(LossConfig(full_label_grounding=grounding), v, v, v, v, None, CLUSTERS, **batch, full=full)
        assert terms["grnd"] == pytest.approx(expected, abs=1e-6), grounding
    _, terms = implicit_loss(LossConfig(full_label_grounding="match"), v, v, v, v, None, CLUSTERS, **batch)  # no full labels
    assert terms["grnd"] == pytest.approx(0.15 / 3, abs=1e-6)


def _terms(config):
    v_ev, v_bg, v_vd = V, torch.tensor([[1.0, 1.0]] * 3), torch.tensor([[0.0, 1.0]] * 3)
    return implicit_loss(
        config, v_ev, v_bg, v_vd, Q, None, CLUSTERS,
        start=torch.tensor([0.3] * 3), end=torch.tensor([0.6] * 3),
        partial_start=torch.tensor([0.4, 0.2, 0.65]), partial_end=torch.tensor([0.4, 0.7, 0.65]),
    )


def test_total_eq3_plus_gamma_eq8_and_switches():
    config = LossConfig(alpha=0.2, beta=0.1, tau=1.0, lam=0.5, gamma=2.0)
    total, terms = _terms(config)
    assert terms["cont"] == pytest.approx(terms["raml"] + terms["raun"] + 0.5 * (terms["erml"] + terms["erun"]), abs=1e-6)
    assert terms["total"] == pytest.approx(terms["cont"] + 2.0 * 0.05, abs=1e-6) and total.item() == pytest.approx(terms["total"])
    assert terms["erml"] == pytest.approx(0.708586, abs=1e-5)
    # Table II, row A3: L_raml and L_erml only.
    _, a3 = _terms(LossConfig(alpha=0.2, beta=0.1, tau=1.0, lam=0.5, gamma=2.0, use_raun=False, use_erun=False))
    assert a3["raun"] == 0 and a3["erun"] == 0 and a3["erml"] == pytest.approx(terms["erml"])
    assert a3["cont"] == pytest.approx(terms["raml"] + 0.5 * terms["erml"], abs=1e-6)


def test_representation_pair_swaps_the_inter_sample_features():
    _, video = _terms(LossConfig(tau=1.0, representation="video"))
    _, event = _terms(LossConfig(tau=1.0))
    assert video["erml"] != pytest.approx(event["erml"])
    with pytest.raises(ValueError, match="needs the partial clip"):
        _terms(LossConfig(representation="clip"))
    with pytest.raises(ValueError, match="representation: must be one of"):
        LossConfig(representation="frame")


def test_clip_feature_is_the_mean_of_the_steps_the_partial_label_covers():
    features = torch.tensor([[[1.0], [2.0], [4.0], [8.0]]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    centres = step_centres(valid.sum(1), 4)  # 0.125, 0.375, 0.625, 0.875; half a step is 0.125
    # A single frame at 0.5 reaches the centres within half a step: 0.375 and 0.625.
    assert pool_clip(features, centres, valid, torch.tensor([0.5]), torch.tensor([0.5])).item() == pytest.approx(3.0)
    # A single frame at 0.1 covers the first step only; a clip from 0.3 to 0.9 covers the last three.
    assert pool_clip(features, centres, valid, torch.tensor([0.1]), torch.tensor([0.1])).item() == pytest.approx(1.0)
    assert pool_clip(features, centres, valid, torch.tensor([0.3]), torch.tensor([0.9])).item() == pytest.approx(14 / 3)


@pytest.mark.parametrize("contrast_features, query_blind", [("unimodal", True), ("fused", False)])
def test_only_unimodal_contrast_features_are_blind_to_the_query(contrast_features, query_blind):
    torch.manual_seed(0)
    model = ImplicitModel(ImplicitModelConfig(video_dim=12, word_dim=10, hidden_dim=16, heads=2, dropout=0.0, contrast_features=contrast_features)).eval()
    video, valid = torch.randn(2, 9, 12), torch.ones(2, 9, dtype=torch.bool)
    words_valid, anchor = torch.ones(2, 5, dtype=torch.bool), torch.tensor([0.3, 0.6])
    one = model(video, valid, torch.randn(2, 5, 10), words_valid, anchor)
    other = model(video, valid, torch.randn(2, 5, 10), words_valid, anchor)
    # v_vd pools every step with weight 1: it changes with the query only if the steps have seen the query.
    assert torch.allclose(one.v_vd, other.v_vd) == query_blind
    assert not torch.allclose(one.start, other.start)  # the detector reads the fused features either way
    with pytest.raises(ValueError, match="contrast_features: must be one of"):
        ImplicitModelConfig(video_dim=1, word_dim=1, contrast_features="both")


def test_gradients_reach_offset_width_and_mask_steepness():
    torch.manual_seed(0)
    model = ImplicitModel(ImplicitModelConfig(video_dim=12, word_dim=10, hidden_dim=16, heads=2, dropout=0.0))
    batch, steps, words = 4, 9, 5
    video_valid = torch.ones(batch, steps, dtype=torch.bool)
    video_valid[0, 6:] = False
    out = model(torch.randn(batch, steps, 12), video_valid, torch.randn(batch, words, 10), torch.ones(batch, words, dtype=torch.bool), torch.tensor([0.2, 0.4, 0.6, 0.8]))
    out.offset.retain_grad()
    out.width.retain_grad()
    assert ((out.start >= 0) & (out.end <= 1) & (out.start <= out.end)).all()
    assert (out.mask[0, 6:] == 0).all()
    total, terms = implicit_loss(LossConfig(), out.v_ev, out.v_bg, out.v_vd, out.q, None, torch.tensor([[0], [0], [1], [1]]),
                                 out.start, out.end, torch.tensor([0.1, 0.5, 0.6, 0.9]), torch.tensor([0.3, 0.5, 0.6, 0.9]))
    total.backward()
    assert out.offset.grad.abs().sum() > 0 and out.width.grad.abs().sum() > 0
    assert model.steepness_raw.grad is not None and model.steepness_raw.grad.abs() > 0
    assert all(isinstance(v, float) for v in terms.values())
    assert torch.equal(out.context, video_valid.float())  # no context_widths: Eq. 2's video is the valid steps
    steps_config = LossConfig(raun_similarity="steps")
    args = (out.v_ev, out.v_bg, out.v_vd, out.q, None, torch.tensor([[0], [0], [1], [1]]), out.start, out.end, torch.tensor([0.1, 0.5, 0.6, 0.9]), torch.tensor([0.3, 0.5, 0.6, 0.9]))
    _, between_steps = implicit_loss(steps_config, *args, steps=(out.video, out.mask, out.context, out.valid))
    assert between_steps["raun"] == pytest.approx(raun_steps_loss(out.video, out.mask, out.context, out.valid, 0.5).item())
    with pytest.raises(ValueError, match="needs the steps"):
        implicit_loss(steps_config, *args)


def _gathered_loss_on_rank(rank, world_size, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    v, q = torch.randn(8, 6), torch.randn(8, 6)
    clusters = torch.tensor([[0], [0], [1], [1], [2], [2], [0], [1]])
    local = slice(4 * rank, 4 * rank + 4)
    v_local = v[local].clone().requires_grad_(True)
    erml, erun = inter_sample_losses(v_local, q[local], clusters[local], tau=0.5, rank=rank, world_size=world_size, gather=True)
    (erml + erun).backward()
    torch.save({"erml": erml.item(), "erun": erun.item(), "grad": v_local.grad}, f"{out_dir}/rank{rank}.pt")
    dist.barrier()  # neither process may leave while the other's last collective is still in flight (gloo aborts)
    dist.destroy_process_group()


def test_contrasts_across_two_workers_equal_one_worker_on_the_whole_batch(tmp_path):
    """Two gloo processes, each with half the batch and gather=True, give the one-process losses and gradients."""
    import torch.multiprocessing as mp

    mp.spawn(_gathered_loss_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    v, q = torch.randn(8, 6), torch.randn(8, 6)
    clusters = torch.tensor([[0], [0], [1], [1], [2], [2], [0], [1]])
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # Every row has a positive among the 8, so the full-batch mean is the mean of the two halves' means.
    v_all = v.clone().requires_grad_(True)
    erml, erun = inter_sample_losses(v_all, q, clusters, tau=0.5)
    assert (ranks[0]["erml"] + ranks[1]["erml"]) / 2 == pytest.approx(erml.item(), abs=1e-5)
    assert (ranks[0]["erun"] + ranks[1]["erun"]) / 2 == pytest.approx(erun.item(), abs=1e-5)
    # The gradient, averaged over the ranks as data parallelism does, is the one-process gradient: each key
    # also receives the gradient of the other rank's anchors.
    (erml + erun).backward()
    averaged = torch.cat([ranks[0]["grad"], ranks[1]["grad"]]) / 2
    assert torch.allclose(averaged, v_all.grad, atol=1e-6)


def test_steepness_per_feature_step_scales_with_the_valid_steps():
    # κ = 2 per step: on a video of 4 valid steps that is κ = 8 per normalised time, on one of 8 steps κ = 16.
    torch.manual_seed(0)
    config = dict(video_dim=6, word_dim=5, hidden_dim=8, heads=2, dropout=0.0, initial_steepness=2.0)
    per_step = ImplicitModel(ImplicitModelConfig(**config, steepness_unit="step")).eval()
    per_video = ImplicitModel(ImplicitModelConfig(**config, steepness_unit="video")).eval()
    per_video.load_state_dict(per_step.state_dict())
    video, valid = torch.randn(2, 8, 6), torch.ones(2, 8, dtype=torch.bool)
    valid[0, 4:] = False
    args = (video, valid, torch.randn(2, 3, 5), torch.ones(2, 3, dtype=torch.bool), torch.tensor([0.4, 0.6]))
    out, same_weights = per_step(*args), per_video(*args)
    for row, kappa in ((0, 8.0), (1, 16.0)):
        expected = plateau_mask(out.centres[row : row + 1], out.start[row : row + 1], out.end[row : row + 1], torch.tensor(kappa), valid[row : row + 1])
        assert torch.allclose(out.mask[row], expected[0], atol=1e-6)
    assert torch.allclose(same_weights.start, out.start)  # the unit changes the mask only
    with pytest.raises(ValueError, match="steepness_unit: must be one of"):
        ImplicitModelConfig(video_dim=1, word_dim=1, steepness_unit="second")


def test_initial_width_sets_the_width_head_at_start():
    torch.manual_seed(0)
    model = ImplicitModel(ImplicitModelConfig(video_dim=6, word_dim=5, hidden_dim=8, heads=2, dropout=0.0, initial_width=0.05)).eval()
    torch.nn.init.zeros_(model.detector_head[-1].weight)  # the head's output is its bias alone
    out = model(torch.randn(3, 7, 6), torch.ones(3, 7, dtype=torch.bool), torch.randn(3, 2, 5), torch.ones(3, 2, dtype=torch.bool), torch.tensor([0.2, 0.5, 0.8]))
    assert out.width.tolist() == pytest.approx([0.05] * 3, abs=1e-6)


def test_offset_per_width_keeps_the_anchor_inside_the_event():
    # offset_unit "width": δ = ½·ℓ·tanh(·). With the offset output saturated at +1, δ = ℓ/2 and the event
    # starts at the anchor; with "video" the same output moves the centre by half the video.
    torch.manual_seed(0)
    config = dict(video_dim=6, word_dim=5, hidden_dim=8, heads=2, dropout=0.0, initial_width=0.1)
    args = (torch.randn(2, 8, 6), torch.ones(2, 8, dtype=torch.bool), torch.randn(2, 3, 5), torch.ones(2, 3, dtype=torch.bool), torch.tensor([0.3, 0.5]))
    outs = {}
    for unit in ("width", "video"):
        model = ImplicitModel(ImplicitModelConfig(**config, offset_unit=unit)).eval()
        torch.nn.init.zeros_(model.detector_head[-1].weight)
        with torch.no_grad():
            model.detector_head[-1].bias[0] = 20.0  # tanh → 1
        outs[unit] = model(*args)
    assert outs["width"].start.tolist() == pytest.approx([0.3, 0.5], abs=1e-5)
    assert outs["width"].end.tolist() == pytest.approx([0.4, 0.6], abs=1e-5)
    assert outs["video"].offset.tolist() == pytest.approx([0.5, 0.5], abs=1e-5)



def test_detector_similarity_is_the_centred_cosine_and_carries_no_gradient():
    # With detector_similarity the detector's last input column is cos(V_t, q) of the contrasts' space minus
    # its mean over the valid steps (0 on padding), and it is detached: the losses train that space, Φ reads it.
    torch.manual_seed(0)
    model = ImplicitModel(ImplicitModelConfig(video_dim=6, word_dim=5, hidden_dim=8, heads=2, dropout=0.0, detector_similarity=True)).eval()
    assert model.detector_score[0].in_features == 8 + 32 + 1
    valid = torch.ones(1, 5, dtype=torch.bool)
    valid[0, 3:] = False
    seen = {}
    model.detector_score.register_forward_hook(lambda module, inputs, output: seen.update(joined=inputs[0]))
    out = model(torch.randn(1, 5, 6), valid, torch.randn(1, 2, 5), torch.ones(1, 2, dtype=torch.bool), torch.tensor([0.5]))
    cos = torch.nn.functional.cosine_similarity(out.video[0, :3], out.q[0][None, :], dim=-1)
    column = seen["joined"][0, :, -1]
    assert torch.allclose(column[:3], cos - cos.mean(), atol=1e-6)
    assert column[3:].tolist() == [0.0, 0.0]
    grads = torch.autograd.grad(out.width.sum(), model.video_encoder.parameters(), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)  # ℓ does not reach the contrast encoder
