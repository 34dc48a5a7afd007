"""Epsilon-prediction training steps (Ho et al. 2020) of the offline teacher's U-Net: noised latents, the
null prompt in ``cond_dropout`` of the samples, AdamW with a linear warm-up and a cosine decay, EMA weights."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WARMUP_STEPS = 100
MIN_LR_FACTOR = 0.1
EMA_DECAY = 0.999


class _EMA:
    """Exponential moving average of a module's weights, with the usual warm-up of the decay."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for average, current in zip(self.module.parameters(), module.parameters()):
            average.lerp_(current, 1 - decay)


def _lr_factor(step: int, progress: float) -> float:
    """Linear warm-up over WARMUP_STEPS, then a cosine decay to MIN_LR_FACTOR over the (time) budget."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    return warm * (MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class Trainer:
    """Epsilon-prediction training of the U-Net on precomputed latents and prompt states."""

    def __init__(
        self, unet, scheduler, latents, labels, states, *, batch_size, lr, cond_dropout, seed
    ) -> None:
        self.unet, self.scheduler = unet.train(), scheduler
        self.latents, self.labels = latents, labels
        self.states, self.mask = states
        self.null_row = len(states[0]) - 1
        self.batch_size, self.lr, self.cond_dropout = batch_size, lr, cond_dropout
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
        self.ema = _EMA(unet, EMA_DECAY)
        self.steps = scheduler.config.num_train_timesteps

    def _batch(self) -> tuple[Tensor, Tensor, Tensor]:
        g = self.generator
        rows = torch.randint(len(self.latents), (self.batch_size,), generator=g)
        dropped = torch.rand(self.batch_size, generator=g) < self.cond_dropout
        prompts = torch.where(dropped, self.null_row, self.labels[rows])
        return self.latents[rows], prompts, torch.randint(self.steps, (self.batch_size,), generator=g)

    def step(self, step: int, progress: float) -> float:
        clean, prompts, t = self._batch()
        noise = torch.randn(clean.shape, generator=self.generator)
        noisy = self.scheduler.add_noise(clean, noise, t)
        predicted = self.unet(
            noisy, t, encoder_hidden_states=self.states[prompts], encoder_attention_mask=self.mask[prompts]
        ).sample
        loss = F.mse_loss(predicted, noise)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * _lr_factor(step, progress)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.unet, step)
        return float(loss.detach())
