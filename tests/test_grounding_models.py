"""The explicit-stage models: the span IoU by hand, the DETR matching, and both models overfitting a tiny
batch through their own loss (plain PyTorch; the Ray Train + DeepSpeed path is in test_pipeline.py)."""

import math

import pytest
import torch

from cu_scale.method.grounding_models import BoundaryRegressor, GroundingOutput, SpanDETR, ranked_spans, span_iou


def test_span_iou_and_generalised_iou_by_hand():
    # [0.2, 0.6] vs [0.4, 0.8]: inter 0.2, union 0.6 → IoU 1/3; enclosing 0.6 = union → gIoU 1/3.
    # [0.0, 0.2] vs [0.5, 0.7]: disjoint, union 0.4, enclosing 0.7 → IoU 0, gIoU −0.3/0.7.
    # [0.1, 0.5] vs the single frame [0.3, 0.3]: union 0.4 → IoU 0; enclosing 0.4 → gIoU 0.
    iou, giou = span_iou(torch.tensor([0.2, 0.0, 0.1]), torch.tensor([0.6, 0.2, 0.5]), torch.tensor([0.4, 0.5, 0.3]), torch.tensor([0.8, 0.7, 0.3]))
    assert iou.tolist() == pytest.approx([1 / 3, 0.0, 0.0], abs=1e-6)
    assert giou.tolist() == pytest.approx([1 / 3, -0.3 / 0.7, 0.0], abs=1e-6)


def test_detr_matches_the_candidate_of_least_cost_and_weights_the_others_down():
    model = SpanDETR(8, 8, hidden_dim=16, heads=2, layers=1, num_queries=3, no_object_weight=0.1)
    # Three candidates (centre, width) for one query whose target is [0.4, 0.6]: the second is exact.
    spans = torch.tensor([[[0.2, 0.2], [0.5, 0.2], [0.9, 0.1]]])
    logits = torch.tensor([[0.0, 0.0, 0.0]])
    l1, giou, cls = model._set_loss(spans, logits, torch.tensor([0.4]), torch.tensor([0.6]))
    assert float(l1) == pytest.approx(0.0, abs=1e-6) and float(giou) == pytest.approx(0.0, abs=1e-6)
    # BCE with logit 0 is ln 2 for every candidate; weights 1 (matched) + 0.1 + 0.1.
    assert float(cls) == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)


def test_regressor_calibration_pulls_the_attention_onto_the_target_steps_by_hand():
    # Four steps centred at 1/8, 3/8, 5/8, 7/8 with attention 0.1, 0.2, 0.3, 0.4; the answer equals the target,
    # so L1 is 0 and gIoU 1, and the loss is calibration × −Σ m_t log a_t / Σ m_t.
    model = BoundaryRegressor(8, 8, hidden_dim=16, heads=2, layers=1, calibration=2.0)
    attention = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 2)
    centres = torch.tensor([[0.125, 0.375, 0.625, 0.875]] * 2)
    extras = {"attention": attention, "centres": centres, "valid": torch.ones(2, 4, dtype=torch.bool)}
    # [0.3, 0.7] holds the centres 3/8 and 5/8; the single frame 0.4 (a zero-length target) marks its own step, 3/8.
    start, end = torch.tensor([0.3, 0.4]), torch.tensor([0.7, 0.4])
    total, terms = model.loss(GroundingOutput(start, end, extras), start, end)
    by_hand = (-(math.log(0.2) + math.log(0.3)) / 2 - math.log(0.2)) / 2
    assert terms["calibration"] == pytest.approx(by_hand, abs=1e-6)
    assert terms["l1"] == pytest.approx(0.0, abs=1e-6)
    # The single frame's gIoU against itself is 0 (a zero-length union), so its gIoU loss is 1: (0 + 1) / 2.
    assert terms["giou"] == pytest.approx(0.5, abs=1e-6)
    assert float(total) == pytest.approx(0.5 + 2.0 * by_hand, abs=1e-5)


def test_regressor_calibrates_on_the_inside_span_and_regresses_onto_the_target_by_hand():
    # The pseudo source: the span is the pseudo-label [0.3, 0.7], the attention is held to the partial label
    # 0.6 (a single frame, inside the moment), which marks the step centred at 5/8 alone.
    model = BoundaryRegressor(8, 8, hidden_dim=16, heads=2, layers=1, calibration=1.0)
    extras = {"attention": torch.tensor([[0.1, 0.2, 0.3, 0.4]]), "centres": torch.tensor([[0.125, 0.375, 0.625, 0.875]]), "valid": torch.ones(1, 4, dtype=torch.bool)}
    answer = GroundingOutput(torch.tensor([0.2]), torch.tensor([0.7]), extras)
    total, terms = model.loss(answer, torch.tensor([0.3]), torch.tensor([0.7]), torch.tensor([0.6]), torch.tensor([0.6]))
    assert terms["calibration"] == pytest.approx(-math.log(0.3), abs=1e-6)
    assert terms["l1"] == pytest.approx(0.1, abs=1e-6)  # |0.2 − 0.3| + |0.7 − 0.7|
    assert terms["giou"] == pytest.approx(1 - 0.4 / 0.5, abs=1e-6)  # the answer encloses the target: gIoU = IoU
    # Without an inside span the target's steps (3/8 and 5/8) are the ones calibrated on.
    _, terms = model.loss(answer, torch.tensor([0.3]), torch.tensor([0.7]))
    assert terms["calibration"] == pytest.approx(-(math.log(0.2) + math.log(0.3)) / 2, abs=1e-6)


@pytest.mark.parametrize("cls", [BoundaryRegressor, SpanDETR])
def test_each_model_overfits_a_tiny_batch(cls):
    torch.manual_seed(0)
    batch, steps, words = 8, 12, 5
    video, text = torch.randn(batch, steps, 16), torch.randn(batch, words, 12)
    video_valid = torch.ones(batch, steps, dtype=torch.bool)
    video_valid[:2, 9:] = False  # two shorter videos
    words_valid = torch.ones(batch, words, dtype=torch.bool)
    target_start = torch.rand(batch) * 0.5
    target_end = target_start + 0.1 + torch.rand(batch) * 0.4
    model = cls(16, 12, hidden_dim=32, heads=2, layers=1, dropout=0.0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        out = model(video, video_valid, text, words_valid)
        loss, terms = model.loss(out, target_start, target_end)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        out = model(video, video_valid, text, words_valid)
    assert isinstance(out, GroundingOutput) and out.start.shape == (batch,)
    assert bool(((out.start >= 0) & (out.start <= out.end) & (out.end <= 1)).all())
    iou, _ = span_iou(out.start, out.end, target_start, target_end)
    assert float(iou.mean()) > 0.85, (cls.__name__, iou)
    assert set(terms) >= {"total", "l1", "giou"}


def test_the_readme_example_model_follows_the_interface():
    """The worked example of a user's own model in the README runs as the explicit stage runs models."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    source = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "class MeanPoolRegressor" in block)
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)
    model = namespace["MeanPoolRegressor"](16, 12, hidden_dim=8, heads=2, layers=1, dropout=0.1)
    video_valid = torch.ones(3, 5, dtype=torch.bool)
    out = model(torch.randn(3, 5, 16), video_valid, torch.randn(3, 4, 12), torch.ones(3, 4, dtype=torch.bool))
    total, terms = model.loss(out, torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.4, 0.5, 0.9]), torch.tensor([0.2, 0.3, 0.4]), torch.tensor([0.2, 0.3, 0.4]))
    total.backward()
    assert out.start.shape == (3,) and set(terms) == {"total"}


def test_ranked_spans_are_detrs_candidates_by_foreground_probability_and_the_regressors_one_span():
    torch.manual_seed(0)
    video, valid = torch.randn(3, 12, 8), torch.ones(3, 12, dtype=torch.bool)
    words, words_valid = torch.randn(3, 4, 6), torch.ones(3, 4, dtype=torch.bool)
    detr = SpanDETR(8, 6, hidden_dim=16, heads=2, layers=1, num_queries=7).eval()
    out = detr(video, valid, words, words_valid)
    start, end, score = ranked_spans(out, 5)
    assert start.shape == (3, 5) and (score[:, :-1] >= score[:, 1:]).all() and (start <= end).all()
    torch.testing.assert_close(start[:, 0], out.start)  # the best-scored candidate is the answer
    torch.testing.assert_close(end[:, 0], out.end)
    assert ranked_spans(out, 50)[0].shape == (3, 7)  # no more than its candidates
    # Logits past ~17 round to a probability of exactly 1: the ranking still follows the logits.
    with torch.no_grad():
        detr.class_head.bias.fill_(40.0)
        detr.class_head.weight.mul_(10.0)
    out = detr(video, valid, words, words_valid)
    start, end, score = ranked_spans(out, 5)
    assert (score[:, 0] == 1).all()
    torch.testing.assert_close(start[:, 0], out.start)
    torch.testing.assert_close(end[:, 0], out.end)
    regressor = BoundaryRegressor(8, 6, hidden_dim=16, heads=2, layers=1).eval()
    r_out = regressor(video, valid, words, words_valid)
    r_start, r_end, r_score = ranked_spans(r_out, 5)
    assert r_start.shape == (3, 1) and (r_score == 1).all()
    torch.testing.assert_close(r_start[:, 0], r_out.start)
