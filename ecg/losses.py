"""Training losses: weighted cross-entropy, or the focal loss of Lin et al. (2017).

The focal loss is written here because torch has none for several classes (torchvision's
``sigmoid_focal_loss`` is one-vs-rest binary). With ``gamma = 0`` it is exactly the weighted
cross-entropy, which the tests check.

Label smoothing is written here too, although torch's cross-entropy has it: with class weights,
torch weights the smoothed part of each beat's target by every class's weight, so under 1/n
weights an N beat's best prediction is no longer N (measured on DS1's counts: p(F) 0.53, p(N)
0.18 at smoothing 0.1). Here a beat's whole smoothed loss takes its own class's weight.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class FocalLoss(nn.Module):
    """``w_y (1 - p_y)^gamma (-(1 - s) log p_y - s mean_k log p_k)``, averaged with the weights as
    cross-entropy does; ``s`` is the label smoothing (0: none).

    Beats the model already gets right (most N beats) add little; the hard ones - S beats that
    look like N - carry the gradient. A remedy for imbalance that, unlike class weights, does not
    depend on how rare a class is in the training patients.
    """

    def __init__(self, gamma: float, weight: torch.Tensor | None = None, smoothing: float = 0.0):
        super().__init__()
        self.gamma = gamma
        self.smoothing = smoothing
        self.register_buffer("weight", weight)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, group: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``group``: which of ``weight`` each piece takes, where weights are per group of
        pieces rather than per class (``train.weight_rhythms``); the target class by default."""
        log_probs = functional.log_softmax(logits, dim=1)
        log_p = log_probs.gather(1, target[:, None])[:, 0]
        nll = -log_p
        if self.smoothing:
            nll = (1 - self.smoothing) * nll - self.smoothing * log_probs.mean(dim=1)
        loss = (1 - log_p.exp()) ** self.gamma * nll
        if self.weight is None:
            return loss.mean()
        w = self.weight[target if group is None else group]
        return (w * loss).sum() / w.sum()


def make_loss(
    kind: str,
    gamma: float,
    weight: torch.Tensor | None,
    grouped: bool = False,
    label_smoothing: float = 0.0,
) -> nn.Module:
    """``grouped``: the loss takes a third argument, the weight group of each piece. Plain
    cross-entropy with groups or label smoothing is the focal loss with gamma 0; otherwise
    torch's own is kept."""
    if kind == "focal":
        return FocalLoss(gamma, weight, label_smoothing)
    if grouped or label_smoothing:
        return FocalLoss(0.0, weight, label_smoothing)
    return nn.CrossEntropyLoss(weight=weight)
