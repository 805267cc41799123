"""Optimisers on a flat parameter vector: SGD with momentum, Adam, Armijo-safeguarded SGD, L-BFGS.

Each ``step(theta, loss, grad, loss_fn, loss_grad_fn, lr)`` updates ``theta`` in place and returns
the loss it expects at the new point (``None`` if unknown). ``loss_fn`` / ``loss_grad_fn`` evaluate
the same batch at other parameters (used by the line searches).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

__all__ = ["OPTIMIZERS", "DEFAULT_LR", "default_lr", "make_optimizer"]

LossFn = Callable[[np.ndarray], float]
LossGradFn = Callable[[np.ndarray], tuple[float, np.ndarray]]

#: Default (initial) learning rate per optimiser; for the line searches the first trial step.
DEFAULT_LR = {"adam": 0.003, "sgd": 0.02, "armijo": 1.0, "lbfgs": 1.0}


def default_lr(optimizer: str, n_pools: int) -> float:
    """The learning rate used when none is given: ``DEFAULT_LR``, a third of it for Adam and SGD on
    networks with three or more pooling stages (the 52x52 ``wide`` net collapsed to a constant output
    on the magnetic tiles at Adam 0.003 and trained well at 0.001; benchmarks/RESULTS_ACCURACY.md)."""
    lr = DEFAULT_LR[optimizer]
    if optimizer in ("adam", "sgd") and n_pools >= 3:
        lr /= 3
    return lr


class SGD:
    """Plain SGD with (heavy-ball) momentum."""

    def __init__(self, size: int, momentum: float = 0.9):
        self.momentum = momentum
        self.velocity = np.zeros(size)

    def step(self, theta, loss, grad, loss_fn, loss_grad_fn, lr):
        self.velocity *= self.momentum
        self.velocity -= lr * grad
        theta += self.velocity.astype(theta.dtype)
        return None


class Adam:
    """Adam (Kingma & Ba) with bias correction."""

    def __init__(self, size: int, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.b1, self.b2, self.eps = beta1, beta2, eps
        self.m = np.zeros(size)
        self.v = np.zeros(size)
        self.t = 0

    def step(self, theta, loss, grad, loss_fn, loss_grad_fn, lr):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        theta -= (lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(theta.dtype)
        return None


def _armijo(theta, loss, grad, direction, loss_fn, t0, c=1e-4, shrink=0.5, tries=12):
    """Backtracking until ``f(theta + t d) <= f(theta) + c t g.d``; returns (t, loss) or (0, loss)."""
    slope = float(grad @ direction)
    if not slope < 0:
        return 0.0, loss
    t = t0
    start = theta.copy()
    for _ in range(tries):
        trial = start + (t * direction).astype(theta.dtype)
        new_loss = loss_fn(trial)
        if np.isfinite(new_loss) and new_loss <= loss + c * t * slope:
            theta[:] = trial
            return t, new_loss
        t *= shrink
    return 0.0, loss


class ArmijoSGD:
    """Steepest descent with a backtracking (Armijo) line search; the step grows after a success."""

    def __init__(self, size: int, grow: float = 2.0):
        self.grow = grow
        self.t = None

    def step(self, theta, loss, grad, loss_fn, loss_grad_fn, lr):
        if self.t is None:
            self.t = lr / max(float(np.linalg.norm(grad)), 1e-12)
        t, new_loss = _armijo(theta, loss, grad, -grad, loss_fn, self.t * self.grow)
        self.t = t if t > 0 else self.t * 0.1
        return new_loss


class LBFGS:
    """Limited-memory BFGS (two-loop recursion) with an Armijo line search on the same batch."""

    def __init__(self, size: int, history: int = 10):
        self.s: deque = deque(maxlen=history)
        self.y: deque = deque(maxlen=history)

    def _direction(self, grad):
        q = grad.astype(np.float64).copy()
        alphas = []
        for s, y in zip(reversed(self.s), reversed(self.y), strict=True):
            rho = 1.0 / float(y @ s)
            a = rho * float(s @ q)
            q -= a * y
            alphas.append((rho, a))
        if self.s:
            q *= float(self.s[-1] @ self.y[-1]) / float(self.y[-1] @ self.y[-1])
        for (s, y), (rho, a) in zip(zip(self.s, self.y, strict=True), reversed(alphas), strict=True):
            b = rho * float(y @ q)
            q += (a - b) * s
        return -q

    def step(self, theta, loss, grad, loss_fn, loss_grad_fn, lr):
        direction = self._direction(grad)
        if float(grad @ direction) >= 0:  # not a descent direction: restart
            self.s.clear()
            self.y.clear()
            direction = -grad.astype(np.float64)
        t0 = 1.0 if self.s else lr / max(float(np.linalg.norm(grad)), 1e-12) * 0.1
        before = theta.astype(np.float64)
        t, new_loss = _armijo(theta, loss, grad, direction, loss_fn, t0)
        if t == 0:
            self.s.clear()
            self.y.clear()
            return None
        new_loss, new_grad = loss_grad_fn(theta)
        s = theta.astype(np.float64) - before
        y = new_grad.astype(np.float64) - grad
        if float(y @ s) > 1e-10 * float(y @ y):
            self.s.append(s)
            self.y.append(y)
        return new_loss


OPTIMIZERS = {"adam": Adam, "sgd": SGD, "armijo": ArmijoSGD, "lbfgs": LBFGS}


def make_optimizer(name: str, size: int, momentum: float = 0.9):
    """An optimiser by name (``adam``, ``sgd``, ``armijo``, ``lbfgs``) for ``size`` parameters."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if name == "sgd":
        return SGD(size, momentum)
    return OPTIMIZERS[name](size)
