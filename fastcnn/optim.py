"""Optimizers with ``torch.optim``'s update rules, updating ``Parameter.data`` in place."""
import math
import numbers

import numpy as np

from . import _backend
from .layers import Parameter


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params or not all(isinstance(p, Parameter) for p in self.params):
            raise TypeError(f"{type(self).__name__}: params must be a non-empty list of fastcnn Parameters")
        if not isinstance(lr, numbers.Real) or not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be a positive number, got {lr!r}")
        self.lr = float(lr)
        self.steps = 0

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0.0

    def state_dict(self):
        """Optimizer state (step count and per-parameter buffers) as name -> array."""
        d = {"steps": np.array(self.steps, np.int64)}
        for name, bufs in self._slots().items():
            for i, b in enumerate(bufs):
                if b is not None:
                    d[f"{name}.{i}"] = b.copy()
        return d

    def load_state_dict(self, state):
        self.steps = int(state["steps"])
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

    def _slots(self):
        return {}


def _check_wd(name, weight_decay):
    if not isinstance(weight_decay, numbers.Real) or not weight_decay >= 0:
        raise ValueError(f"{name}: weight_decay must be >= 0, got {weight_decay!r}")
    return float(weight_decay)


class SGD(Optimizer):
    """SGD as ``torch.optim.SGD``: ``g = grad + weight_decay * p``; with momentum
    ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` at first), then
    ``g = g + momentum * buf`` (Nesterov) or ``g = buf``; ``p -= lr * g``."""

    def __init__(self, params, lr, momentum=0.0, *, weight_decay=0.0, nesterov=False, dampening=0.0):
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
        self._buf = [None] * len(self.params)

    def _slots(self):
        return {"momentum_buffer": self._buf}

    def step(self):
        lr = np.float32(self.lr)
        f = np.float32
        for i, p in enumerate(self.params):
            g = p.grad
            if self.weight_decay:
                g = g + f(self.weight_decay) * p.data
            if self.momentum:
                if self._buf[i] is None:
                    self._buf[i] = g.copy()
                else:
                    self._buf[i] *= f(self.momentum)
                    self._buf[i] += g if self.dampening == 0 else f(1.0 - self.dampening) * g
                g = g + f(self.momentum) * self._buf[i] if self.nesterov else self._buf[i]
            p.data -= lr * g
        self.steps += 1


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (no amsgrad); ``weight_decay`` adds ``weight_decay * p`` to
    the gradient (L2 penalty, torch's ``Adam(weight_decay=...)``)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, *, weight_decay=0.0):
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"{type(self).__name__}: eps must be >= 0, got {eps!r}")
        self.betas, self.eps = (float(b1), float(b2)), float(eps)
        self.weight_decay = _check_wd(type(self).__name__, weight_decay)
        self._m = [np.zeros_like(p.data) for p in self.params]
        self._v = [np.zeros_like(p.data) for p in self.params]

    def _slots(self):
        return {"exp_avg": self._m, "exp_avg_sq": self._v}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._m = [np.zeros_like(p.data) if m is None else m for p, m in zip(self.params, self._m)]
        self._v = [np.zeros_like(p.data) if v is None else v for p, v in zip(self.params, self._v)]

    def _grad(self, p):
        if self.weight_decay:
            return p.grad + np.float32(self.weight_decay) * p.data
        return p.grad

    def step(self):
        self.steps += 1
        b1, b2 = self.betas
        t = self.steps
        step_size = self.lr / (1.0 - b1 ** t)  # both rounded to float32 by the kernel
        bc2_sqrt = float(np.sqrt(1.0 - b2 ** t))
        k = _backend.ops()
        for p, m, v in zip(self.params, self._m, self._v):
            # One fused pass per parameter, float32 in torch's order (lerp_/addcmul_ forms):
            # m = m + (1 - b1) (g - m);  v = b2 v + (1 - b2) g^2;
            # p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps)   (see fastcnn._ref.adam_step)
            k.adam_step(p.data, self._grad(p), m, v, step_size, b1, b2, self.eps, bc2_sqrt)


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW``: decoupled decay ``p *= 1 - lr * weight_decay`` before
    the Adam update (default ``weight_decay=0.01``, as torch)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, *, weight_decay=0.01):
        super().__init__(params, lr, betas, eps, weight_decay=weight_decay)

    def _grad(self, p):
        if self.weight_decay:
            p.data *= np.float32(1.0 - self.lr * self.weight_decay)
        return p.grad


# --------------------------------------------------------------------------- schedules

class Schedule:
    """A learning-rate schedule over epochs with ``torch.optim.lr_scheduler``'s exact values.

    ``lr_at(epoch, base_lr)`` is the learning rate of epoch ``epoch`` (0-based) for an
    optimizer created with ``base_lr``: the value torch's scheduler gives after ``epoch``
    calls of ``scheduler.step()``.  It is computed by replaying torch's recursive
    ("chainable") update from epoch 0, so it equals torch's float for float, and it depends
    on the epoch only (resuming needs no scheduler state).
    """

    def _initial(self, lr, base_lr):
        return lr

    def _update(self, lr, epoch, base_lr):  # pragma: no cover - abstract
        raise NotImplementedError

    def lr_at(self, epoch, base_lr):
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"{type(self).__name__}: epoch must be a non-negative int, got {epoch!r}")
        lr = self._initial(float(base_lr), float(base_lr))
        for e in range(1, int(epoch) + 1):
            lr = self._update(lr, e, float(base_lr))
        return lr

    def config(self):
        return {"type": type(self).__name__, **self._args}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._args.items())})"


def _pos_int(cls, name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{cls}: {name} must be a positive int, got {v!r}")
    return int(v)


class StepLR(Schedule):
    """``lr * gamma`` every ``step_size`` epochs (``torch.optim.lr_scheduler.StepLR``).  The
    ResNet tutorial's "divide by 3 every 20 epochs" is ``StepLR(20, 1/3)``."""

    def __init__(self, step_size, gamma=0.1):
        self.step_size, self.gamma = _pos_int("StepLR", "step_size", step_size), float(gamma)
        self._args = {"step_size": self.step_size, "gamma": self.gamma}

    def _update(self, lr, epoch, base_lr):
        return lr if epoch % self.step_size else lr * self.gamma


class MultiStepLR(Schedule):
    """``lr * gamma`` at each epoch in ``milestones`` (``torch``'s ``MultiStepLR``)."""

    def __init__(self, milestones, gamma=0.1):
        ms = [_pos_int("MultiStepLR", "milestone", m) for m in milestones]
        self.milestones, self.gamma = sorted(ms), float(gamma)
        self._args = {"milestones": self.milestones, "gamma": self.gamma}

    def _update(self, lr, epoch, base_lr):
        n = self.milestones.count(epoch)
        return lr * self.gamma ** n if n else lr


class CosineAnnealingLR(Schedule):
    """Cosine from ``base_lr`` down to ``eta_min`` over ``T_max`` epochs (torch's
    ``CosineAnnealingLR``, its recursive form)."""

    def __init__(self, T_max, eta_min=0.0):
        self.T_max, self.eta_min = _pos_int("CosineAnnealingLR", "T_max", T_max), float(eta_min)
        self._args = {"T_max": self.T_max, "eta_min": self.eta_min}

    def _update(self, lr, epoch, base_lr):
        T, lo = self.T_max, self.eta_min
        if (epoch - 1 - T) % (2 * T) == 0:
            return lr + (base_lr - lo) * (1 - math.cos(math.pi / T)) / 2
        return (1 + math.cos(math.pi * epoch / T)) / (1 + math.cos(math.pi * (epoch - 1) / T)) * (lr - lo) + lo


class LinearLR(Schedule):
    """Linear warm-up: the factor goes from ``start_factor`` to ``end_factor`` over
    ``total_iters`` epochs (torch's ``LinearLR``)."""

    def __init__(self, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: factors must be in (0, 1] and [0, 1], got {start_factor}, {end_factor}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = _pos_int("LinearLR", "total_iters", total_iters)
        self._args = {"start_factor": self.start_factor, "end_factor": self.end_factor,
                      "total_iters": self.total_iters}

    def _initial(self, lr, base_lr):
        return lr * self.start_factor

    def _update(self, lr, epoch, base_lr):
        if epoch > self.total_iters:
            return lr
        s, e = self.start_factor, self.end_factor
        return lr * (1.0 + (e - s) / (self.total_iters * s + (epoch - 1) * (e - s)))


class Chained(Schedule):
    """Several schedules applied one after the other each epoch (torch's
    ``ChainedScheduler``), e.g. ``Chained(LinearLR(0.1, total_iters=5), CosineAnnealingLR(50))``
    for a linear warm-up followed by a cosine decay."""

    def __init__(self, *schedules):
        if not schedules or not all(isinstance(s, Schedule) for s in schedules):
            raise TypeError("Chained: give one or more Schedule objects")
        self.schedules = list(schedules)
        self._args = {}

    def _initial(self, lr, base_lr):
        for s in self.schedules:
            lr = s._initial(lr, base_lr)
        return lr

    def _update(self, lr, epoch, base_lr):
        for s in self.schedules:
            lr = s._update(lr, epoch, base_lr)
        return lr

    def config(self):
        return {"type": "Chained", "schedules": [s.config() for s in self.schedules]}

    def __repr__(self):
        return f"Chained({', '.join(map(repr, self.schedules))})"


SCHEDULES = {c.__name__: c for c in (StepLR, MultiStepLR, CosineAnnealingLR, LinearLR)}


def schedule_from_config(cfg):
    """Rebuild a schedule from :meth:`Schedule.config` output (``None`` -> ``None``)."""
    if cfg is None:
        return None
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind == "Chained":
        return Chained(*[schedule_from_config(c) for c in cfg["schedules"]])
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}, Chained")
    return SCHEDULES[kind](**cfg)
