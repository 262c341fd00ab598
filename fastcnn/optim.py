"""Optimizers with ``torch.optim``'s update rules, updating ``Parameter.data`` in place with the
compiled updates behind :func:`fastcnn.functional.sgd_step` and :func:`~fastcnn.functional.adam_step`
(which check the arrays; the optimizers check the hyperparameters, once, here)."""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from . import functional as F
from .layers import Parameter


class Optimizer:
    """Base class: ``params``, ``lr``, ``steps`` (updates taken), ``zero_grad()``, ``step()``,
    ``state_dict()`` / ``load_state_dict()``."""

    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        self.params = list(params)
        if not self.params or not all(isinstance(p, Parameter) for p in self.params):
            raise TypeError(f"{type(self).__name__}: params must be a non-empty list of fastcnn Parameters")
        if not isinstance(lr, numbers.Real) or not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be a positive number, got {lr!r}")
        self.lr: float = float(lr)
        self.steps: int = 0
        self._ws: F.Workspace = F.Workspace()  # (the update functions' record of arrays checked before)

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Optimizer state (step count and per-parameter buffers) as name -> array."""
        d = {"steps": np.array(self.steps, np.int64)}
        for name, bufs in self._slots().items():
            for i, b in enumerate(bufs):
                if b is not None:
                    d[f"{name}.{i}"] = b.copy()
        return d

    def load_state_dict(self, state: Mapping[str, ArrayLike]) -> None:
        self.steps = int(np.asarray(state["steps"]))
        for name, bufs in self._slots().items():
            for i in range(len(bufs)):
                key = f"{name}.{i}"
                if key in state:
                    arr = np.asarray(state[key], np.float32)
                    if arr.shape != self.params[i].data.shape:
                        raise ValueError(f"optimizer state {key!r} has shape {arr.shape}, "
                                         f"expected {self.params[i].data.shape}")
                    bufs[i] = arr.copy()
                else:
                    bufs[i] = None

    def _slots(self) -> dict[str, list[Any]]:
        return {}


def _check_wd(name: str, weight_decay: float) -> float:
    if not isinstance(weight_decay, numbers.Real) or not weight_decay >= 0:
        raise ValueError(f"{name}: weight_decay must be >= 0, got {weight_decay!r}")
    return float(weight_decay)


class SGD(Optimizer):
    """SGD as ``torch.optim.SGD``: ``g = grad + weight_decay * p``; with momentum
    ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` at first), then
    ``g = g + momentum * buf`` (Nesterov) or ``g = buf``; ``p -= lr * g``."""

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0, *, weight_decay: float = 0.0,
                 nesterov: bool = False, dampening: float = 0.0) -> None:
        super().__init__(params, lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        if not 0.0 <= dampening <= 1.0:
            raise ValueError(f"SGD: dampening must be in [0, 1], got {dampening!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires momentum > 0 and dampening 0")
        self.momentum = float(momentum)
        self.weight_decay = _check_wd("SGD", weight_decay)
        self.nesterov, self.dampening = bool(nesterov), float(dampening)
        self._buf: list[np.ndarray | None] = [None] * len(self.params)

    def _slots(self) -> dict[str, list[Any]]:
        return {"momentum_buffer": self._buf}

    def step(self) -> None:
        F.sgd_step([p.data for p in self.params], [p.grad for p in self.params], self._buf, lr=self.lr,
                   momentum=self.momentum, dampening=self.dampening, weight_decay=self.weight_decay,
                   nesterov=self.nesterov, ws=self._ws)
        self.steps += 1


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (no amsgrad); ``weight_decay`` adds ``weight_decay * p`` to
    the gradient (L2 penalty, torch's ``Adam(weight_decay=...)``)."""

    #: Whether weight decay scales the parameters before the update (AdamW) instead of adding
    #: ``weight_decay * p`` to the gradient (Adam's L2 penalty).
    decoupled_weight_decay: ClassVar[bool] = False

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, *, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"{type(self).__name__}: eps must be >= 0, got {eps!r}")
        self.betas, self.eps = (float(b1), float(b2)), float(eps)
        self.weight_decay = _check_wd(type(self).__name__, weight_decay)
        self._m: list[Any] = [np.zeros_like(p.data) for p in self.params]  # (None only inside load_state_dict)
        self._v: list[Any] = [np.zeros_like(p.data) for p in self.params]

    def _slots(self) -> dict[str, list[Any]]:
        return {"exp_avg": self._m, "exp_avg_sq": self._v}

    def load_state_dict(self, state: Mapping[str, ArrayLike]) -> None:
        super().load_state_dict(state)
        self._m = [np.zeros_like(p.data) if m is None else m for p, m in zip(self.params, self._m)]
        self._v = [np.zeros_like(p.data) if v is None else v for p, v in zip(self.params, self._v)]

    def step(self) -> None:
        self.steps += 1
        F.adam_step([p.data for p in self.params], [p.grad for p in self.params], self._m, self._v, step=self.steps,
                    lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay,
                    decoupled_weight_decay=self.decoupled_weight_decay, ws=self._ws)


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW``: decoupled decay ``p *= 1 - lr * weight_decay`` before
    the Adam update (default ``weight_decay=0.01``, as torch)."""

    decoupled_weight_decay = True

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, *, weight_decay: float = 0.01) -> None:
        super().__init__(params, lr, betas, eps, weight_decay=weight_decay)


# --------------------------------------------------------------------------- schedules

class Schedule:
    """A learning-rate schedule over epochs with ``torch.optim.lr_scheduler``'s exact values.

    ``lr_at(epoch, base_lr)`` is the learning rate of epoch ``epoch`` (0-based) for an
    optimizer created with ``base_lr``: the value torch's scheduler gives after ``epoch``
    calls of ``scheduler.step()``.  It is computed by replaying torch's recursive
    ("chainable") update from epoch 0, so it equals torch's float for float, and it depends
    on the epoch only (resuming needs no scheduler state).
    """

    #: Constructor arguments, read back from the attributes of the same names by :meth:`config`.
    _config_args: ClassVar[tuple[str, ...]] = ()

    def _initial(self, lr: float, base_lr: float) -> float:
        return lr

    def _update(self, lr: float, epoch: int, base_lr: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def lr_at(self, epoch: int, base_lr: float) -> float:
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"{type(self).__name__}: epoch must be a non-negative int, got {epoch!r}")
        lr = self._initial(float(base_lr), float(base_lr))
        for e in range(1, int(epoch) + 1):
            lr = self._update(lr, e, float(base_lr))
        return lr

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **{n: getattr(self, n) for n in self._config_args}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self._config_args)})"


def _pos_int(cls: str, name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{cls}: {name} must be a positive int, got {v!r}")
    return int(v)


class StepLR(Schedule):
    """``lr * gamma`` every ``step_size`` epochs (``torch.optim.lr_scheduler.StepLR``).  The
    ResNet tutorial's "divide by 3 every 20 epochs" is ``StepLR(20, 1/3)``."""

    _config_args = ("step_size", "gamma")

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        self.step_size, self.gamma = _pos_int("StepLR", "step_size", step_size), float(gamma)

    def _update(self, lr: float, epoch: int, base_lr: float) -> float:
        return lr if epoch % self.step_size else lr * self.gamma


class MultiStepLR(Schedule):
    """``lr * gamma`` at each epoch in ``milestones`` (``torch``'s ``MultiStepLR``)."""

    _config_args = ("milestones", "gamma")

    def __init__(self, milestones: Iterable[int], gamma: float = 0.1) -> None:
        ms = [_pos_int("MultiStepLR", "milestone", m) for m in milestones]
        self.milestones, self.gamma = sorted(ms), float(gamma)

    def _update(self, lr: float, epoch: int, base_lr: float) -> float:
        n = self.milestones.count(epoch)
        return lr * self.gamma ** n if n else lr


class CosineAnnealingLR(Schedule):
    """Cosine from ``base_lr`` down to ``eta_min`` over ``T_max`` epochs (torch's
    ``CosineAnnealingLR``, its recursive form)."""

    _config_args = ("T_max", "eta_min")

    def __init__(self, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max, self.eta_min = _pos_int("CosineAnnealingLR", "T_max", T_max), float(eta_min)

    def _update(self, lr: float, epoch: int, base_lr: float) -> float:
        T, lo = self.T_max, self.eta_min
        if (epoch - 1 - T) % (2 * T) == 0:
            return lr + (base_lr - lo) * (1 - math.cos(math.pi / T)) / 2
        return (1 + math.cos(math.pi * epoch / T)) / (1 + math.cos(math.pi * (epoch - 1) / T)) * (lr - lo) + lo


class LinearLR(Schedule):
    """Linear warm-up: the factor goes from ``start_factor`` to ``end_factor`` over
    ``total_iters`` epochs (torch's ``LinearLR``)."""

    _config_args = ("start_factor", "end_factor", "total_iters")

    def __init__(self, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5) -> None:
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: factors must be in (0, 1] and [0, 1], got {start_factor}, {end_factor}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = _pos_int("LinearLR", "total_iters", total_iters)

    def _initial(self, lr: float, base_lr: float) -> float:
        return lr * self.start_factor

    def _update(self, lr: float, epoch: int, base_lr: float) -> float:
        if epoch > self.total_iters:
            return lr
        s, e = self.start_factor, self.end_factor
        return lr * (1.0 + (e - s) / (self.total_iters * s + (epoch - 1) * (e - s)))


class Chained(Schedule):
    """Several schedules applied one after the other each epoch (torch's
    ``ChainedScheduler``), e.g. ``Chained(LinearLR(0.1, total_iters=5), CosineAnnealingLR(50))``
    for a linear warm-up followed by a cosine decay."""

    def __init__(self, *schedules: Schedule) -> None:
        if not schedules or not all(isinstance(s, Schedule) for s in schedules):
            raise TypeError("Chained: give one or more Schedule objects")
        self.schedules = list(schedules)

    def _initial(self, lr: float, base_lr: float) -> float:
        for s in self.schedules:
            lr = s._initial(lr, base_lr)
        return lr

    def _update(self, lr: float, epoch: int, base_lr: float) -> float:
        for s in self.schedules:
            lr = s._update(lr, epoch, base_lr)
        return lr

    def config(self) -> dict[str, Any]:
        return {"type": "Chained", "schedules": [s.config() for s in self.schedules]}

    def __repr__(self) -> str:
        return f"Chained({', '.join(map(repr, self.schedules))})"


SCHEDULES = {c.__name__: c for c in (StepLR, MultiStepLR, CosineAnnealingLR, LinearLR)}


def schedule_from_config(cfg: Mapping[str, Any] | None) -> Schedule | None:
    """Rebuild a schedule from :meth:`Schedule.config` output (``None`` -> ``None``)."""
    return None if cfg is None else _schedule(cfg)


def _schedule(cfg: Mapping[str, Any]) -> Schedule:
    args = dict(cfg)
    kind = args.pop("type", None)
    if kind == "Chained":
        return Chained(*[_schedule(c) for c in args["schedules"]])
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}, Chained")
    return SCHEDULES[kind](**args)
