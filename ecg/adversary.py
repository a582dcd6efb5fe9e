"""A patient adversary: a head that learns which training patient an N beat came from, behind a
gradient reversal layer, so that the classifier's LSTM learns to hide it.

Across patients a beat's class has to be read the same way whoever the patient is, yet the
network learns from 22 patients and a new patient's N beats can fall where a training patient's
ectopic beats fell. Ganin and Lempitsky (2015, "Unsupervised domain adaptation by
backpropagation") make a representation that does not tell domains apart by training a domain
classifier on it and passing that classifier's gradient back with its sign turned; Zhang et al.
(2021, J. Healthc. Eng. 9946596) did so with the training subjects as domains for MIT-BIH beats.

Only N beats take part (``patient_targets``): in MIT-BIH each ectopic class sits in a few
patients (F is in effect record 208), so hiding the patient of every beat would also hide the
class. The head trains with the classifier and is left out of the shipped model.

The reversal layer is written here because torch has none; it is the paper's identity forward
and negated, scaled backward.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional

IGNORED = -100
"""The target of a beat the adversary does not see (torch's cross-entropy ``ignore_index``)."""


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.factor * grad, None


def reverse_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged; the gradient that flows back through it times ``-factor``."""
    return _ReverseGradient.apply(x, factor)


def reversal_factor(progress: float, weight: float) -> float:
    """Ganin and Lempitsky's schedule: 0 at the start of training, rising to ``weight`` as
    ``2 / (1 + exp(-10 p)) - 1`` with the progress ``p`` in [0, 1], so the adversary's noisy
    early gradient does not disturb the classifier before either has learnt anything."""
    p = min(max(progress, 0.0), 1.0)
    return weight * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


def patient_targets(
    patients: np.ndarray, y: torch.Tensor, n_class: int
) -> tuple[torch.Tensor, int]:
    """Each piece's patient as an index into the training patients, ``IGNORED`` for pieces that
    are not of class ``n_class`` (N); and how many patients there are."""
    names, codes = np.unique(np.asarray(patients), return_inverse=True)
    targets = torch.from_numpy(codes.astype(np.int64).reshape(-1))
    targets[y != n_class] = IGNORED
    return targets, len(names)


class PatientAdversary(nn.Module):
    """Pooled LSTM state -> training patient, the class head's shape, behind the reversal.

    The state is standardised per feature first (batch normalisation): what tells patients apart
    lies in small differences of a state shaped for the classes. Trained beside the default
    recipe on DS1 with nothing reversed (``benchmarks/adversary_head.py --factor 0``), the head
    without it named the patient of 11 % of 4,000 held-back N beats, with it 19 %, where a
    logistic regression on the same standardised state names 70-75 % (the largest patient holds
    7 %). Even so the head is weak: it has one training's steps to learn in, and a weak head
    leaves the reversal little to push against (``benchmarks/quality.md``, twenty-ninth
    round)."""

    def __init__(self, features: int, hidden: int, patients: int):
        super().__init__()
        self.head = nn.Sequential(
            nn.BatchNorm1d(features),
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, patients),
        )

    def forward(self, pooled: torch.Tensor, factor: float) -> torch.Tensor:
        return self.head(reverse_gradient(pooled, factor))


class WithAdversary(nn.Module):
    """The classifier and its adversary as one module, so one optimiser, one distributed wrapper
    and one checkpoint hold both; ``classifier`` alone is what training keeps."""

    def __init__(self, classifier: nn.Module, adversary: PatientAdversary):
        super().__init__()
        self.classifier = classifier
        self.adversary = adversary

    def forward(
        self, x: torch.Tensor, rr: torch.Tensor | None, factor: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.classifier.pooled(x)
        return self.classifier.classify(pooled, rr), self.adversary(pooled, factor)


def adversary_loss(guesses: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the pieces the adversary sees; 0 for a batch without any (torch's
    mean over no targets is NaN)."""
    seen = (targets != IGNORED).sum()
    total = functional.cross_entropy(
        guesses.float(), targets, ignore_index=IGNORED, reduction="sum"
    )
    return total / seen.clamp_min(1)
