"""Training losses: weighted cross-entropy, or the focal loss of Lin et al. (2017).

The focal loss is written here because torch has none for several classes (torchvision's
``sigmoid_focal_loss`` is one-vs-rest binary). With ``gamma = 0`` it is exactly the weighted
cross-entropy, which the tests check.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class FocalLoss(nn.Module):
    """``-w_y (1 - p_y)^gamma log p_y``, averaged with the class weights as cross-entropy does.

    Beats the model already gets right (most N beats) add little; the hard ones - S beats that
    look like N - carry the gradient. A remedy for imbalance that, unlike class weights, does not
    depend on how rare a class is in the training patients.
    """

    def __init__(self, gamma: float, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, group: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``group``: which of ``weight`` each piece takes, where weights are per group of
        pieces rather than per class (``train.weight_rhythms``); the target class by default."""
        log_p = functional.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is None:
            return loss.mean()
        w = self.weight[target if group is None else group]
        return (w * loss).sum() / w.sum()


def make_loss(
    kind: str, gamma: float, weight: torch.Tensor | None, grouped: bool = False
) -> nn.Module:
    """``grouped``: the loss takes a third argument, the weight group of each piece. Plain
    cross-entropy is then the focal loss with gamma 0; without groups torch's own is kept."""
    if kind == "focal":
        return FocalLoss(gamma, weight)
    if grouped:
        return FocalLoss(0.0, weight)
    return nn.CrossEntropyLoss(weight=weight)
