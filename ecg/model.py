"""The bidirectional LSTM many-to-one classifier, and the package it is shipped in."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class BiLSTMClassifier(nn.Module):
    """(batch, time, leads) -> class logits; RR features may join before the head.

    A bidirectional LSTM reads the window both ways; the sequence of states is pooled into one
    vector (final states, mean, or attention), the beat's RR features are appended (they carry
    what morphology cannot: how early a beat came for this patient), and a small MLP classifies.
    """

    def __init__(
        self,
        n_leads: int,
        n_classes: int,
        n_rr: int = 0,
        hidden: int = 32,
        layers: int = 2,
        dropout: float = 0.2,
        pooling: str = "last",
        downsample: int = 1,
    ):
        super().__init__()
        self.pooling = pooling
        # Optional strided convolutions before the LSTM: each halves the sequence, and the
        # LSTM's cost follows sequence length (a 4x shorter one trains ~3x faster on CPU).
        convs: list[nn.Module] = []
        channels = n_leads
        for _ in range(int(downsample).bit_length() - 1):
            convs += [
                nn.Conv1d(channels, 2 * hidden, kernel_size=5, stride=2, padding=2),
                nn.BatchNorm1d(2 * hidden),
                nn.ReLU(),
            ]
            channels = 2 * hidden
        self.front = nn.Sequential(*convs) if convs else None
        self.lstm = nn.LSTM(
            channels,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.attention = nn.Linear(2 * hidden, 1) if pooling == "attention" else None
        self.head = nn.Sequential(
            nn.Linear(2 * hidden + n_rr, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor, rr: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.pooled(x), rr)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The window read into one vector (batch, 2 x hidden), before the RR features join:
        what ``ecg.adversary`` trains to say nothing of the patient."""
        if self.front is not None:
            x = self.front(x.transpose(1, 2)).transpose(1, 2)
        states, (h_n, _) = self.lstm(x)
        if self.pooling == "last":
            return torch.cat([h_n[-2], h_n[-1]], dim=1)  # last layer, forward and backward
        if self.pooling == "mean":
            return states.mean(dim=1)
        weights = torch.softmax(self.attention(states).squeeze(-1), dim=1)
        return (weights.unsqueeze(-1) * states).sum(dim=1)

    def classify(self, pooled: torch.Tensor, rr: torch.Tensor | None = None) -> torch.Tensor:
        if rr is not None:
            pooled = torch.cat([pooled, rr], dim=1)
        return self.head(pooled)


class Ensemble(nn.Module):
    """Members' class probabilities averaged; returned as log-probabilities so that, like a single
    classifier's logits, a softmax of the output gives the probabilities."""

    def __init__(self, members: list[BiLSTMClassifier]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor, rr: torch.Tensor | None = None) -> torch.Tensor:
        proba = torch.stack([torch.softmax(m(x, rr), dim=1) for m in self.members]).mean(dim=0)
        return torch.log(proba.clamp_min(1e-12))


def build_model(n_leads: int, n_classes: int, n_rr: int, settings: Mapping) -> nn.Module:
    """The classifier described by a pipeline's ``model`` section (as a dict, as stored with the
    weights), sized for the data: one BiLSTM, or an ensemble of them."""
    members = int(settings.get("ensemble", 1))
    if members > 1:
        single = {**settings, "ensemble": 1}
        return Ensemble([build_model(n_leads, n_classes, n_rr, single) for _ in range(members)])
    return BiLSTMClassifier(
        n_leads,
        n_classes,
        n_rr,
        hidden=settings["hidden"],
        layers=settings["layers"],
        dropout=settings["dropout"],
        pooling=settings["pooling"],
        downsample=settings.get("downsample", 1),
    )


class Normalizer(nn.Module):
    """Input standardisation learnt from the training split, stored with the weights so that
    whoever uses the model later cannot apply a different one."""

    def __init__(self, x_mean, x_std, rr_mean, rr_std, per_window: bool):
        super().__init__()
        self.per_window = per_window
        self.register_buffer("x_mean", torch.as_tensor(x_mean, dtype=torch.float32))
        self.register_buffer("x_std", torch.as_tensor(x_std, dtype=torch.float32))
        self.register_buffer("rr_mean", torch.as_tensor(rr_mean, dtype=torch.float32))
        self.register_buffer("rr_std", torch.as_tensor(rr_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor, rr: torch.Tensor | None):
        if self.per_window:
            x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-3)
        else:
            x = (x - self.x_mean) / self.x_std
        if rr is not None:
            rr = (rr - self.rr_mean) / self.rr_std
        return x, rr


class PackagedClassifier(nn.Module):
    """What is logged to MLflow and exported: one float tensor in, class probabilities out.

    Input: (batch, time, leads + n_rr), the filtered window in mV with the beat's raw RR
    features (seconds and ratios) repeated along time in the last ``n_rr`` channels. One tensor
    because MLflow's pyfunc interface hands a model a single array.
    """

    def __init__(
        self, classifier: BiLSTMClassifier, normalizer: Normalizer, n_leads: int, n_rr: int
    ):
        super().__init__()
        self.classifier = classifier
        self.normalizer = normalizer
        self.n_leads = n_leads
        self.n_rr = n_rr

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        x = packed[..., : self.n_leads]
        rr = packed[:, 0, self.n_leads :] if self.n_rr else None
        x, rr = self.normalizer(x, rr)
        return torch.softmax(self.classifier(x, rr), dim=1)


def pack(x: torch.Tensor, rr: torch.Tensor | None) -> torch.Tensor:
    """Windows and RR features as the single tensor ``PackagedClassifier`` takes."""
    if rr is None or rr.shape[1] == 0:
        return x
    return torch.cat([x, rr[:, None, :].expand(-1, x.shape[1], -1)], dim=2)
