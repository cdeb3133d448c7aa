"""The VQGAN's parts against their definitions: HDFB and MSConvFE, encoder/decoder, quantiser, losses, token prior."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsynth.losses.vqperceptual import adaptive_weight, feature_distance, hinge_discriminator_loss
from medsynth.models.hdfb import HDFB, DropPath, MSConvFE
from medsynth.models.patchgan import PatchDiscriminator
from medsynth.models.quantizer import VectorQuantizer, perplexity
from medsynth.models.token_prior import TokenPrior
from medsynth.models.vqgan import Downsample, ResBlock, Upsample, VQAutoencoder


def test_hdfb_is_its_input_plus_the_multiscale_branch():
    torch.manual_seed(0)
    block = HDFB(8, 8).eval()
    x = torch.randn(2, 8, 16, 16)
    assert isinstance(block.shortcut, nn.Identity)
    branch = block.msconvfe(block.act(block.norm2(block.conv(block.act(block.norm(x))))))
    assert torch.allclose(block(x), x + branch, atol=1e-6)
    for b in block.msconvfe.branches:  # without the branch, Y = X
        nn.init.zeros_(b.pointwise.weight), nn.init.zeros_(b.pointwise.bias)
    assert torch.equal(block(x), x)
    wider = HDFB(8, 16)
    assert wider(x).shape == (2, 16, 16, 16) and isinstance(wider.shortcut, nn.Conv2d)


def test_msconvfe_fuses_depthwise_branches_of_each_kernel_size():
    torch.manual_seed(0)
    fe = MSConvFE(4, kernel_sizes=(3, 7)).eval()
    assert [b.depthwise.kernel_size for b in fe.branches] == [(3, 3), (7, 7)]
    assert all(b.depthwise.groups == 4 for b in fe.branches)  # depth-wise: one filter per channel
    x = torch.randn(1, 4, 21, 21)
    h = fe.act(fe.mix(fe.norm(x)))
    assert torch.allclose(fe(x), fe.branches[0](h) + fe.branches[1](h), atol=1e-6)
    # After the (global) GroupNorm, an impulse reaches exactly 3 pixels away: the 7x7 branch's radius.
    impulse = torch.zeros(1, 4, 21, 21)
    impulse[..., 10, 10] = 1.0
    fused = sum(b(impulse) - b(torch.zeros_like(impulse)) for b in fe.branches)
    rows = (fused.abs().amax(dim=(0, 1, 3)) > 1e-7).nonzero().flatten()
    assert rows.min() == 7 and rows.max() == 13


def test_drop_path_drops_whole_samples_in_training_only():
    torch.manual_seed(0)
    drop = DropPath(0.5)
    x = torch.ones(400, 3, 2, 2)
    y = drop(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped or rescaled by 1 / keep
    assert (per_sample == per_sample[:, :1]).all()  # a sample is dropped as a whole
    assert 0.4 < float((per_sample[:, 0] == 0).float().mean()) < 0.6
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="rate"):
        DropPath(1.0)


@pytest.mark.parametrize("factor,side,tokens", [(2, 32, 4), (4, 64, 1), (4, 1024, 16)])
def test_three_downsamplings_by_the_stage_factor(factor, side, tokens):
    ae = VQAutoencoder("resblock", 8, (1, 2, 4, 4), 1, factor, codebook_size=16, codebook_dim=4)
    assert ae.downsampling == factor**3 and side // ae.downsampling == tokens
    downs = [m for m in ae.encoder.modules() if isinstance(m, Downsample)]
    ups = [m for m in ae.decoder.modules() if isinstance(m, Upsample)]
    assert len(downs) == len(ups) == 3
    assert all(len(d.convs) == len(u.convs) == factor.bit_length() - 1 for d, u in zip(downs, ups))
    if side <= 64:
        reconstruction, quantized = ae(torch.zeros(1, 1, side, side))
        assert reconstruction.shape == (1, 1, side, side) and quantized.indices.shape == (1, tokens, tokens)


def test_channels_grow_with_the_multipliers_and_the_block_choice_is_honoured():
    hdfb = VQAutoencoder("hdfb", 8, (1, 2, 4, 8), 1, 2, codebook_size=16, codebook_dim=4)
    plain = VQAutoencoder("resblock", 8, (1, 2, 4, 8), 1, 2, codebook_size=16, codebook_dim=4)
    widths = [m.conv.out_channels for m in hdfb.encoder.body if isinstance(m, HDFB)]
    assert widths == [8, 16, 32, 64, 64, 64]  # four levels, then two middle blocks
    assert not any(isinstance(m, ResBlock) for m in hdfb.modules())
    assert not any(isinstance(m, HDFB) for m in plain.modules())
    assert hdfb.decoder.last_layer is hdfb.decoder.conv_out.weight


def test_quantizer_picks_the_entry_of_largest_cosine_similarity():
    torch.manual_seed(0)
    vq = VectorQuantizer(size=8, dim=4)
    z = torch.randn(2, 4, 3, 3)
    first = vq(z).indices
    assert torch.equal(vq(z * 7.5).indices, first)  # scale does not matter, direction does
    similarity = torch.einsum("bdhw,nd->bnhw", F.normalize(z, dim=1), F.normalize(vq.codebook.weight, dim=1))
    assert torch.equal(first, similarity.argmax(dim=1))
    out = vq(z)
    assert torch.allclose(out.z_q, vq.lookup(out.indices), atol=1e-6)
    assert torch.allclose(out.z_q.norm(dim=1), torch.ones(2, 3, 3), atol=1e-5)


def test_straight_through_gradients_and_the_two_quantiser_losses():
    torch.manual_seed(0)
    vq = VectorQuantizer(size=8, dim=4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    # Straight through: the gradient of z_q reaches z as if z_q were the unit-length z.
    weights = torch.randn_like(out.z_q)
    (grad_via_quantizer,) = torch.autograd.grad((out.z_q * weights).sum(), z)
    (grad_direct,) = torch.autograd.grad((F.normalize(z, dim=1, eps=1e-6) * weights).sum(), z)
    assert torch.allclose(grad_via_quantizer, grad_direct, atol=1e-6)
    # The codebook loss moves only the codebook; the commitment loss only the encoder output.
    out = vq(z)
    assert torch.autograd.grad(out.codebook_loss, z, allow_unused=True)[0] is None
    assert torch.autograd.grad(out.commitment_loss, vq.codebook.weight, allow_unused=True)[0] is None
    assert float(out.codebook_loss.detach()) == pytest.approx(float(out.commitment_loss.detach()))


def test_perplexity_and_usage_measure_how_many_entries_are_used():
    assert float(perplexity(torch.arange(16), 16)) == pytest.approx(16.0)
    assert float(perplexity(torch.zeros(16, dtype=torch.long), 16)) == pytest.approx(1.0)
    vq = VectorQuantizer(size=10, dim=2)
    vq.record(torch.tensor([1, 2, 2]), step=0)
    assert vq.usage(0) == vq.usage(99) == pytest.approx(0.2)
    vq.record(torch.tensor([3]), step=150)
    assert vq.usage(150) == pytest.approx(0.1)  # entries 1 and 2 were last used 150 steps ago


def test_dead_entries_are_revived_from_encoder_outputs_and_live_ones_kept():
    torch.manual_seed(0)
    vq = VectorQuantizer(size=6, dim=3)
    before = vq.codebook.weight.detach().clone()
    vq.record(torch.tensor([0, 1]), step=4)
    latents = F.normalize(torch.randn(1, 3, 2, 2), dim=1)
    assert vq.revive(latents, step=4, after=5) == 0  # nobody is 5 steps old yet
    assert vq.revive(latents, step=5, after=5) == 4
    after = vq.codebook.weight.detach()
    assert torch.equal(after[:2], before[:2])
    pool = latents.permute(0, 2, 3, 1).reshape(-1, 3)
    assert all(any(torch.equal(row, p) for p in pool) for row in after[2:])
    assert vq.born.tolist() == [0, 0, 5, 5, 5, 5]
    assert vq.revive(latents, step=9, after=5) == 2  # entries 0 and 1 went unused since step 4
    assert vq.revive(latents, step=9, after=0) == 0  # 0 switches revival off


def test_hinge_loss_and_adaptive_weight_follow_their_formulas():
    loss, real, fake = hinge_discriminator_loss(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0]))
    assert float(real) == pytest.approx(0.25) and float(fake) == pytest.approx(0.5)
    assert float(loss) == pytest.approx(0.375)
    last = nn.Parameter(torch.tensor([1.0, 2.0]))
    nll = (3 * last).sum()  # gradient (3, 3): norm 4.243
    adversarial = (last**2).sum()  # gradient (2, 4): norm 4.472
    weight = adaptive_weight(nll, adversarial, last)
    assert float(weight) == pytest.approx(18**0.5 / (20**0.5 + 1e-4)) and not weight.requires_grad
    assert float(adaptive_weight(nll, 0 * last.sum(), last)) == pytest.approx(1e4)  # clamped


def test_feature_distance_is_zero_for_equal_features_and_ignores_their_scale():
    torch.manual_seed(0)
    a = [torch.randn(2, 5, 4, 4), torch.randn(2, 3, 2, 2)]
    assert float(feature_distance(a, [x.clone() for x in a])) == 0.0
    assert float(feature_distance(a, [3 * x for x in a])) == pytest.approx(0.0, abs=1e-6)
    opposite = float(feature_distance(a, [-x for x in a]))
    assert opposite == pytest.approx(4.0, rel=1e-4)  # unit vectors pointing away: |a - b|^2 = 4


def test_patch_discriminator_scores_patches_and_exposes_its_stage_activations():
    disc = PatchDiscriminator(channels=8, layers=3)
    logits, features = disc.activations(torch.zeros(2, 1, 64, 64))
    assert logits.shape == (2, 1, 6, 6) and len(features) == 4
    assert [f.shape[1] for f in features] == [8, 16, 32, 64]


def test_prior_is_causal_and_its_cached_sampling_matches_the_full_pass():
    torch.manual_seed(0)
    prior = TokenPrior(vocab=10, length=6, dim=16, layers=2, heads=2).eval()
    tokens = torch.randint(0, 10, (3, 6))
    logits, _ = prior(prior.inputs(tokens))
    changed = tokens.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 10
    logits_changed, _ = prior(prior.inputs(changed))
    assert torch.allclose(logits[:, :4], logits_changed[:, :4], atol=1e-6)  # position 4 is the first to see token 3
    assert not torch.allclose(logits[:, 4:], logits_changed[:, 4:])
    # Step-by-step logits with the key/value cache equal those of one causal pass.
    cache, steps = None, []
    inputs = prior.inputs(tokens)
    for position in range(6):
        step_logits, cache = prior(inputs[:, position : position + 1], cache, position)
        steps.append(step_logits)
    assert torch.allclose(torch.cat(steps, dim=1), logits, atol=1e-5)
    first = prior.sample(4, torch.Generator().manual_seed(3))
    assert first.shape == (4, 6) and first.max() < 10
    assert torch.equal(prior.sample(4, torch.Generator().manual_seed(3)), first)
