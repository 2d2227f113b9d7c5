"""The implicit stage's method step on a hand-made batch, without Ray or DeepSpeed: what it returns, that the
warm-up switch and the clip representation reach the losses, and that plain Adam steps on it learn."""

import dataclasses

import pytest
import torch

from cu_scale.config import ImplicitConfig
from cu_scale.method.implicit_model import ImplicitModel
from cu_scale.method.implicit_step import BATCH_FIELDS, epoch_losses, implicit_step
from cu_scale.method.losses import implicit_loss

SETTINGS = ImplicitConfig(hidden_dim=16, heads=2, dropout=0.0, gather_across_workers=False)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[1, 6:] = False  # a shorter video
    return {
        "features": torch.randn(4, 8, 6, generator=generator),
        "mask": mask,
        "words": torch.randn(4, 3, 5, generator=generator),
        "words_valid": torch.tensor([[True, True, True], [True, True, False], [True, True, True], [True, False, False]]),
        "anchor": torch.tensor([0.2, 0.5, 0.55, 0.8]),
        "partial_start": torch.tensor([0.2, 0.4, 0.55, 0.7]),
        "partial_end": torch.tensor([0.2, 0.6, 0.55, 0.9]),
        "clusters": torch.tensor([[0], [0], [1], [1]]),
        "full": torch.tensor([False, True, False, False]),
    }


def _model() -> ImplicitModel:
    torch.manual_seed(0)
    return ImplicitModel(SETTINGS.model(video_dim=6, word_dim=5)).eval()


def test_the_step_is_the_models_forward_pass_and_eq_3_to_8():
    batch, model = _batch(), _model()
    assert set(batch) == set(BATCH_FIELDS)
    losses = SETTINGS.losses()
    total, terms = implicit_step(model, batch, losses)
    out = model(batch["features"], batch["mask"], batch["words"], batch["words_valid"], batch["anchor"])
    expected, expected_terms = implicit_loss(
        losses, out.v_ev, out.v_bg, out.v_vd, out.q, None, batch["clusters"], out.start, out.end,
        batch["partial_start"], batch["partial_end"], steps=(out.video, out.mask, out.context, out.valid), full=batch["full"],
    )
    assert total.item() == pytest.approx(expected.item(), abs=1e-6) and terms["total"] == pytest.approx(total.item())
    assert {k: v for k, v in terms.items() if k != "event_width"} == pytest.approx(expected_terms, abs=1e-6)
    assert terms["event_width"] == pytest.approx(float((out.end - out.start).detach().mean()), abs=1e-6)


def test_the_warm_up_leaves_l_raun_out_and_the_clip_representation_reads_the_partial_clip():
    batch, model = _batch(), _model()
    losses = SETTINGS.losses()
    assert epoch_losses(losses, 0, raun_warmup_epochs=2).use_raun is False and epoch_losses(losses, 2, raun_warmup_epochs=2) == losses
    _, warm = implicit_step(model, batch, epoch_losses(losses, 0, raun_warmup_epochs=1))
    _, after = implicit_step(model, batch, epoch_losses(losses, 1, raun_warmup_epochs=1))
    assert warm["raun"] == 0 and after["raun"] > 0 and warm["raml"] == pytest.approx(after["raml"])
    _, event = implicit_step(model, batch, losses)
    _, clip = implicit_step(model, batch, dataclasses.replace(losses, representation="clip"))
    assert clip["erml"] != pytest.approx(event["erml"]) and clip["raml"] == pytest.approx(event["raml"])


def test_plain_adam_steps_lower_the_objective():
    batch, model = _batch(), _model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = SETTINGS.losses()
    first = None
    for _ in range(30):
        total, terms = implicit_step(model, batch, losses)
        first = terms["total"] if first is None else first
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert implicit_step(model.eval(), batch, losses)[1]["total"] < 0.8 * first
