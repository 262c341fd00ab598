"""Optimizers with ``torch.optim``'s update rules, updating ``Parameter.data`` in place."""
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


class SGD(Optimizer):
    """SGD with optional momentum: ``buf = momentum * buf + grad`` (``buf = grad`` at first),
    ``p -= lr * buf``."""

    def __init__(self, params, lr, momentum=0.0):
        super().__init__(params, lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self._buf = [None] * len(self.params)

    def _slots(self):
        return {"momentum_buffer": self._buf}

    def step(self):
        lr = np.float32(self.lr)
        for i, p in enumerate(self.params):
            g = p.grad
            if self.momentum:
                if self._buf[i] is None:
                    self._buf[i] = g.copy()
                else:
                    self._buf[i] *= np.float32(self.momentum)
                    self._buf[i] += g
                g = self._buf[i]
            p.data -= lr * g
        self.steps += 1


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (no weight decay, no amsgrad)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"Adam: eps must be >= 0, got {eps!r}")
        self.betas, self.eps = (float(b1), float(b2)), float(eps)
        self._m = [np.zeros_like(p.data) for p in self.params]
        self._v = [np.zeros_like(p.data) for p in self.params]

    def _slots(self):
        return {"exp_avg": self._m, "exp_avg_sq": self._v}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._m = [np.zeros_like(p.data) if m is None else m for p, m in zip(self.params, self._m)]
        self._v = [np.zeros_like(p.data) if v is None else v for p, v in zip(self.params, self._v)]

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
            k.adam_step(p.data, p.grad, m, v, step_size, b1, b2, self.eps, bc2_sqrt)
