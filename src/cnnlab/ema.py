"""An exponential moving average of a network's weights, the copy that is validated and saved.

After each optimizer step every floating-point parameter and buffer (BatchNorm's running
statistics included) moves towards the trained network's: ``avg += (1 - d) * (w - avg)``, with
``d = min(decay, (1 + n) / (10 + n))`` after n updates, so the first steps are not averaged with
the random initial weights for long. Integer buffers (BatchNorm's batch counter) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """The average of ``model``, whose tensors it follows: ``update()`` after each step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        # state_dict() tensors share storage with the parameters and buffers, which training
        # updates in place: pair them once here rather than on every step.
        mine, theirs = self.module.state_dict(), model.state_dict()
        floating = {name for name, tensor in mine.items() if tensor.is_floating_point()}
        self._averaged = ([mine[n] for n in mine if n in floating], [theirs[n] for n in mine if n in floating])
        self._copied = [(mine[n], theirs[n]) for n in mine if n not in floating]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if self._averaged[0]:
            torch._foreach_lerp_(*self._averaged, 1.0 - decay)
        for avg, current in self._copied:
            avg.copy_(current)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["weights"])
