"""Each recording's class priors, estimated from its own unlabelled beats (Saerens et al. 2002).

A classifier's probabilities carry the class prior it was trained under: with 1/n class weights
that is one quarter for each of N, S, V and F, while a real recording is nearly all N beats, or,
like MIT-BIH's 232, mostly S. How far a patient's S beats sit from their N beats is a property of
the patient (``benchmarks/quality.md``, third round: fixed per-class offsets chosen on some
patients lowered macro-F1 on others). The EM procedure of Saerens, Latinne and Decaestecker
("Adjusting the outputs of a classifier to new a priori probabilities: a simple procedure",
Neural Computation 14, 2002) estimates the recording's own prior from the model's probabilities
of all its beats, without labels, and re-weights each beat's probabilities by new over old prior.
It needs the whole recording, which a Holter analysis has anyway, and no reference annotation.

Written here because none of the stack's libraries has it (scikit-learn calibrates, it does not
adapt priors) and it is ten lines of NumPy.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

TOLERANCE = 1e-6
"""EM stops when no class's prior moves by more than this in one step."""
MAX_STEPS = 1000


def reweight(proba: np.ndarray, prior: np.ndarray, train_prior: np.ndarray) -> np.ndarray:
    """Bayes' rule with the prior swapped: each row times new over old prior, renormalised."""
    scaled = proba * (prior / train_prior)
    return scaled / np.clip(scaled.sum(axis=1, keepdims=True), 1e-300, None)


def adapt(
    proba: np.ndarray, train_prior: np.ndarray, shrinkage: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The rows' probabilities under the prior EM estimates for them, and that prior.

    Starts from the training prior; each step sets the prior to the mean of the re-weighted
    probabilities (the M step of Saerens et al.). Converges to a fixed point in a few dozen steps
    on a recording of two thousand beats; a class the recording lacks tends to prior 0.

    ``shrinkage`` s mixes each step's estimate with the training prior, (1 - s) * mean + s *
    train_prior: the M step of a MAP estimate under a Dirichlet prior centred on the training
    prior and worth s / (1 - s) times the record's beats. No class's prior can fall below s times
    its training prior, so a model whose probabilities for a new patient's S beats are too low
    to hold S's share up (the collapse of ``benchmarks/quality.md``, twenty-fourth round) cannot
    drive S out of the record altogether.
    """
    train_prior = np.clip(np.asarray(train_prior, dtype=np.float64), 1e-12, None)
    proba = np.asarray(proba, dtype=np.float64)
    prior = train_prior.copy()
    if len(proba) == 0:
        return proba, prior
    for _ in range(MAX_STEPS):
        new = (1 - shrinkage) * reweight(proba, prior, train_prior).mean(axis=0)
        new += shrinkage * train_prior
        done = np.max(np.abs(new - prior)) < TOLERANCE
        prior = new
        if done:
            break
    return reweight(proba, prior, train_prior), prior


def adapt_by_group(
    proba: np.ndarray, groups: np.ndarray, train_prior: np.ndarray, shrinkage: float = 0.0
) -> tuple[np.ndarray, dict[Hashable, np.ndarray]]:
    """``adapt`` on each group's rows (a group is one recording), rows kept in place."""
    adapted = np.empty_like(np.asarray(proba, dtype=np.float64))
    priors = {}
    for group in dict.fromkeys(groups):
        rows = groups == group
        adapted[rows], priors[group] = adapt(proba[rows], train_prior, shrinkage)
    return adapted, priors
