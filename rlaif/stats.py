"""Small statistics shared by the judge audit and evaluation (numpy only)."""
from __future__ import annotations

import numpy as np


def length_feature(diff: np.ndarray) -> np.ndarray:
    """tanh of the standardised length difference: the length term of AlpacaEval 2's
    length-controlled GLM (Dubois et al. 2024, "Length-Controlled AlpacaEval")."""
    sd = diff.std()
    return np.tanh(diff / sd) if sd > 0 else np.zeros_like(diff, dtype=float)


def logistic_fit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-6, iters: int = 50) -> tuple[float, float]:
    """(intercept, coefficient) of P(y=1) = sigmoid(b0 + b1 x), by Newton's method.

    A tiny ridge keeps the Hessian invertible when the data separate perfectly."""
    X = np.column_stack([np.ones_like(x, dtype=float), np.asarray(x, dtype=float)])
    y = np.asarray(y, dtype=float)
    beta = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-X @ beta))
        grad = X.T @ (y - p) - ridge * beta
        hess = X.T @ (X * (p * (1 - p))[:, None]) + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return float(beta[0]), float(beta[1])
