"""pix2pix objectives: conditional GAN loss + lambda * L1, and an optional matte term.

Each function returns a dict of named scalar terms plus "total", the one to back-propagate, so
logging every term costs nothing. Losses are computed in float32 whatever autocast chose for
the networks' outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import SEG_LOSSES, TrainConfig


def gan_loss(logits: torch.Tensor, real: bool, kind: str) -> torch.Tensor:
    """How far D's patch logits ([B, 1, P, P]) are from saying `real` everywhere.

    bce: the paper's vanilla GAN (sigmoid cross-entropy); lsgan: least squares on the logits.
    """
    logits = logits.float()
    wanted = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, wanted)
    if kind == "lsgan":
        return F.mse_loss(logits, wanted)
    raise ValueError(f"unknown --gan-loss {kind!r}; choose bce or lsgan")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """D's loss on real pairs (photo, target) and fake pairs (photo, G(photo)).

    Halved as in pix2pix, which slows D relative to G.
    """
    real = gan_loss(real_logits, True, kind)
    fake = gan_loss(fake_logits, False, kind)
    return {"d_real": real, "d_fake": fake, "total": 0.5 * (real + fake)}


def segmentation_loss(output: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Matte vs mask. output: [B, 1, S, S] G's tanh output in [-1, 1]; mask: [B, 1, S, S] in [0, 1].

    bce: per-pixel cross-entropy of the matte (G + 1) / 2; dice: 1 - soft Dice, per image, averaged,
    which weighs small people as much as large ones; dice-people: the same, averaged over the
    images that show somebody only (0 for a batch with nobody), so views with nobody in them are
    left to L1.
    """
    # binary_cross_entropy refuses to run under CUDA autocast; the matte is tiny, so run in fp32.
    with torch.autocast(device_type=output.device.type, enabled=False):
        alpha = (output.float() + 1.0) / 2.0
        mask = mask.float()
        if kind == "bce":
            return F.binary_cross_entropy(alpha.clamp(1e-6, 1 - 1e-6), mask)
        if kind in ("dice", "dice-people"):
            overlap = (alpha * mask).sum((1, 2, 3))
            total = alpha.sum((1, 2, 3)) + mask.sum((1, 2, 3))
            per_image = 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)
            if kind == "dice":
                return per_image.mean()
            # On an empty mask the Dice term is 1 - 1/(S + 1) for S = the matte's sum, so its
            # gradient near S = 0 is about 1 per pixel: thousands of times L1's, for the faintest
            # guess anywhere in the view. Views with nobody (--p-empty, --p-plate) may then teach
            # the net to blank a whole photo when unsure: the bundled model's matte is all zero on 5
            # of coco's 30 val photos. Trained this way from it, 2 (README, the bundled model).
            shows_people = (mask.sum((1, 2, 3)) > 0).float()
            return (per_image * shows_people).sum() / shows_people.sum().clamp(min=1.0)
    raise ValueError(f"unknown --seg-loss {kind!r}; choose {', '.join(SEG_LOSSES)}")


def generator_loss(fake_logits: torch.Tensor | None, output: torch.Tensor, target: torch.Tensor,
                   mask: torch.Tensor, config: TrainConfig) -> dict[str, torch.Tensor]:
    """G's loss: fool D (fake_logits: D on (photo, output)) and stay near the target (L1).

    output, target: [B, C, S, S] in [-1, 1]; mask: [B, 1, S, S] in [0, 1], for the matte term.
    fake_logits None: no GAN term (config.lambda_gan == 0, D is not run).
    """
    terms = {"g_l1": F.l1_loss(output.float(), target.float())}
    total = config.lambda_l1 * terms["g_l1"]
    if fake_logits is not None:
        terms["g_gan"] = gan_loss(fake_logits, True, config.gan_loss)
        total = total + config.lambda_gan * terms["g_gan"]
    if config.seg_loss != "none":
        terms["g_seg"] = segmentation_loss(output, mask, config.seg_loss)
        total = total + config.seg_weight * terms["g_seg"]
    terms["total"] = total
    return terms
