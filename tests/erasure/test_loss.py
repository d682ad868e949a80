import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from erasure.training.data import region_mask
from erasure.training.loss import diffusion_loss, min_snr_weights, region_weights

WATERMARK = [{"name": "watermark", "score": 1.0, "box": [0.0, 0.0, 16.0, 16.0]}]  # top-left quarter of 32 px


def test_region_mask_maps_the_box_to_latent_positions():
    mask = region_mask(WATERMARK, 32, 32, latent_size=4)
    expected = torch.zeros(1, 4, 4)
    expected[0, :2, :2] = 1
    assert torch.equal(mask, expected)


@pytest.mark.parametrize(
    ("alpha", "inside", "outside"),
    [
        # T = 16 positions, K = 4 inside: T / (K + α(T − K)) inside, αT / (K + α(T − K)) outside.
        (0.5, 16 / (4 + 0.5 * 12), 0.5 * 16 / (4 + 0.5 * 12)),
        (0.1, 16 / (4 + 0.1 * 12), 0.1 * 16 / (4 + 0.1 * 12)),
        (1.0, 1.0, 1.0),
    ],
)
def test_region_weights_by_hand(alpha, inside, outside):
    mask = region_mask(WATERMARK, 32, 32, latent_size=4)[None]
    weights = region_weights(mask, alpha)
    assert weights[0, 0, :2, :2] == pytest.approx(torch.full((2, 2), inside))
    assert weights[0, 0, 2:, :] == pytest.approx(torch.full((2, 4), outside))
    assert weights.mean().item() == pytest.approx(1.0)


def test_images_without_boxes_get_plain_weights():
    assert torch.equal(region_weights(torch.zeros(2, 1, 4, 4), 0.3), torch.ones(2, 1, 4, 4))


def test_loss_counts_the_error_inside_the_box_with_its_weight():
    mask = region_mask(WATERMARK, 32, 32, latent_size=4)[None]
    target = mask.expand(1, 4, 4, 4).clone()  # an error of 1 only inside the box, in every channel
    loss = diffusion_loss(torch.zeros_like(target), target, mask, alpha=0.5)
    assert loss.item() == pytest.approx(4 * 1.6 / 16)


def test_alpha_one_is_plain_mse():
    prediction, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 1:3] = 1
    assert diffusion_loss(prediction, target, mask, 1.0).item() == pytest.approx(F.mse_loss(prediction, target).item())


@pytest.mark.parametrize(("prediction_type", "offset"), [("epsilon", 0.0), ("v_prediction", 1.0)])
def test_min_snr_weights(prediction_type, offset):
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    timesteps = torch.tensor([1, 500, 999])
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    expected = torch.clamp(snr, max=5.0) / (snr + offset)
    assert torch.allclose(min_snr_weights(scheduler, timesteps, 5.0), expected)
