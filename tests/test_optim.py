"""Optimizers and learning-rate schedules against torch.optim (skipped without torch)."""
import numpy as np
import pytest

import fastcnn
from fastcnn import optim
from fastcnn.layers import Parameter

from utils import assert_close, needs_torch

SHAPES = [(7, 3), (5,), (2, 3, 3, 3)]


def _params(rng):
    return [Parameter(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]


def _run_pair(make_ours, make_torch, steps=12, seed=0, lrs=None):
    """Same parameters and gradients for ``steps`` steps; returns both final parameter lists."""
    import torch

    rng = np.random.default_rng(seed)
    ours = _params(rng)
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt, topt = make_ours(ours), make_torch(theirs)
    for t in range(steps):
        if lrs is not None:
            opt.lr = lrs[t]
            for g in topt.param_groups:
                g["lr"] = lrs[t]
        for p, q in zip(ours, theirs):
            g = rng.standard_normal(p.data.shape).astype(np.float32)
            p.grad[...] = g
            q.grad = torch.tensor(g)
        opt.step()
        topt.step()
    return [p.data for p in ours], [q.detach().numpy() for q in theirs]


CASES = {
    "sgd": (lambda p: optim.SGD(p, 0.1), lambda t, p: t.optim.SGD(p, 0.1)),
    "sgd_momentum": (lambda p: optim.SGD(p, 0.05, 0.9), lambda t, p: t.optim.SGD(p, 0.05, 0.9)),
    "sgd_nesterov_wd": (lambda p: optim.SGD(p, 0.05, 0.9, nesterov=True, weight_decay=5e-4),
                        lambda t, p: t.optim.SGD(p, 0.05, 0.9, nesterov=True, weight_decay=5e-4)),
    "sgd_dampening_wd": (lambda p: optim.SGD(p, 0.05, 0.8, dampening=0.3, weight_decay=1e-2),
                         lambda t, p: t.optim.SGD(p, 0.05, 0.8, dampening=0.3, weight_decay=1e-2)),
    "adam": (lambda p: optim.Adam(p, 1e-2), lambda t, p: t.optim.Adam(p, 1e-2)),
    "adam_wd": (lambda p: optim.Adam(p, 1e-2, weight_decay=1e-2),
                lambda t, p: t.optim.Adam(p, 1e-2, weight_decay=1e-2)),
    "adamw": (lambda p: optim.AdamW(p, 1e-2), lambda t, p: t.optim.AdamW(p, 1e-2)),
    "adamw_betas": (lambda p: optim.AdamW(p, 3e-3, (0.8, 0.99), 1e-6, weight_decay=0.1),
                    lambda t, p: t.optim.AdamW(p, 3e-3, (0.8, 0.99), 1e-6, weight_decay=0.1)),
}


@needs_torch
@pytest.mark.parametrize("backend", fastcnn.available_backends())
@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_matches_torch(case, backend):
    import torch

    fastcnn.set_backend(backend)
    ours_f, torch_f = CASES[case]
    lrs = [0.1 * 0.7 ** (t // 4) for t in range(12)] if case.startswith("sgd") else None
    ours, theirs = _run_pair(ours_f, lambda p: torch_f(torch, p), lrs=lrs)
    for a, b in zip(ours, theirs):
        # float32 throughout on both sides; 12 steps of rounding differences (torch fuses
        # some multiply-adds) stay within a few ulps of values of order 1
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6)


@needs_torch
@pytest.mark.parametrize("case", ["sgd_nesterov_wd", "adamw"])
def test_optimizer_state_round_trip(case):
    """Stopping after 5 steps, saving and restoring the state, then 7 more steps is identical."""
    rng = np.random.default_rng(3)
    make = CASES[case][0]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(12)]
    start = _params(np.random.default_rng(1))

    def run(split):
        ps = [Parameter(p.data.copy()) for p in start]
        opt = make(ps)
        for t, gs in enumerate(grads):
            if t == split:
                state = {k: v.copy() for k, v in opt.state_dict().items()}
                ps = [Parameter(p.data.copy()) for p in ps]
                opt = make(ps)
                opt.load_state_dict(state)
            for p, g in zip(ps, gs):
                p.grad[...] = g
            opt.step()
        return [p.data for p in ps]

    for a, b in zip(run(None), run(5)):
        np.testing.assert_array_equal(a, b)


def test_optimizer_argument_errors():
    ps = _params(np.random.default_rng(0))
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(ps, 0.1, nesterov=True)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.AdamW(ps, weight_decay=-1)
    with pytest.raises(ValueError, match="lr"):
        optim.Adam(ps, lr=0)


def _torch_lrs(make_sched, epochs, base=0.1):
    import torch

    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base)
    sched = make_sched(torch.optim.lr_scheduler, opt)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


SCHEDS = {
    "step": (lambda: optim.StepLR(20, 1 / 3), lambda L, o: L.StepLR(o, 20, 1 / 3)),
    "step3": (lambda: optim.StepLR(3, 0.5), lambda L, o: L.StepLR(o, 3, 0.5)),
    "multistep": (lambda: optim.MultiStepLR([5, 9, 9, 30], 0.2), lambda L, o: L.MultiStepLR(o, [5, 9, 9, 30], 0.2)),
    "cosine": (lambda: optim.CosineAnnealingLR(17, 1e-4), lambda L, o: L.CosineAnnealingLR(o, 17, 1e-4)),
    "warmup": (lambda: optim.LinearLR(0.1, 1.0, 6), lambda L, o: L.LinearLR(o, 0.1, 1.0, 6)),
    "warmup_cosine": (lambda: optim.Chained(optim.LinearLR(0.25, total_iters=4), optim.CosineAnnealingLR(30)),
                      lambda L, o: L.ChainedScheduler([L.LinearLR(o, 0.25, total_iters=4),
                                                       L.CosineAnnealingLR(o, 30)])),
}


@needs_torch
@pytest.mark.parametrize("name", sorted(SCHEDS))
def test_schedule_matches_torch_exactly(name):
    ours_f, torch_f = SCHEDS[name]
    n = 70
    theirs = _torch_lrs(torch_f, n)
    sched = ours_f()
    ours = [sched.lr_at(e, 0.1) for e in range(n)]
    assert ours == theirs  # the same float operations in the same order: exact
    again = optim.schedule_from_config(sched.config())
    assert [again.lr_at(e, 0.1) for e in range(n)] == ours


def test_tutorial_step_schedule_values():
    s = optim.StepLR(20, 1 / 3)
    assert s.lr_at(19, 1e-3) == 1e-3
    assert s.lr_at(20, 1e-3) == pytest.approx(1e-3 / 3, rel=1e-15)
    assert s.lr_at(40, 1e-3) == pytest.approx(1e-3 / 9, rel=1e-15)
    with pytest.raises(ValueError):
        s.lr_at(-1, 1e-3)


@needs_torch
@pytest.mark.parametrize("kind", ["sgd", "sgd_momentum", "adam"])
def test_optimizers_match_torch(kind):
    import torch

    rng = np.random.default_rng(7)
    w0 = rng.standard_normal((5, 3)).astype(np.float32)
    p = fastcnn.Parameter(w0.copy())
    tp = torch.nn.Parameter(torch.tensor(w0.copy()))
    if kind == "adam":
        opt, topt = optim.Adam([p], lr=0.01), torch.optim.Adam([tp], lr=0.01)
    else:
        m = 0.9 if kind == "sgd_momentum" else 0.0
        opt, topt = optim.SGD([p], lr=0.05, momentum=m), torch.optim.SGD([tp], lr=0.05, momentum=m)
    for _ in range(20):
        g = rng.standard_normal((5, 3)).astype(np.float32)
        opt.zero_grad()
        topt.zero_grad()
        p.grad += g
        tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    assert_close(p.data, tp.detach().numpy(), 1e-5)


def test_zero_grad_is_deferred_but_reads_as_zeros():
    """``zero_grad`` only marks the gradients: they read as zeros, and the next accumulation
    stores its gradient bit for bit (-0.0 stays -0.0, as PyTorch's first backward after
    ``zero_grad(set_to_none=True)``) instead of adding to old values; a backward may write
    it into ``overwritable_grad()`` itself."""
    p = Parameter(np.ones((2, 3), np.float32))
    opt = optim.SGD([p], 0.1)
    assert p.overwritable_grad() is None  # (fresh: a backward must add)
    p.accumulate(np.full((2, 3), 5.0, np.float32))
    opt.zero_grad()
    buf = p._grad
    assert (buf == 5.0).all()  # (not cleared yet)
    g = np.array([[1.5, -0.0, 2.0], [0.0, -3.0, np.nan]], np.float32)
    p.accumulate(g)
    want = g.copy()
    assert p.grad is buf and p.grad.tobytes() == want.tobytes()
    assert np.signbit(p.grad[0, 1])
    assert p.overwritable_grad() is None
    p.accumulate(g)
    assert p.grad.tobytes() == (want + g).tobytes()
    opt.zero_grad()
    target = p.overwritable_grad()
    assert target is buf
    target[...] = 4.0  # (a backward writing its gradient in place)
    p.accumulate(target)
    assert (p.grad == 4.0).all() and p.grad is buf and p.overwritable_grad() is None
    opt.zero_grad()
    assert (p.grad == 0).all() and p.grad is buf  # read: cleared in place
    opt.zero_grad()
    p.grad = np.full((2, 3), 7.0, np.float32)  # assigned: no longer stale
    p.accumulate(np.ones((2, 3), np.float32))
    assert (p.grad == 8.0).all()
    p.grad = np.full((3, 2), 1.0, np.float32).T  # (not C-contiguous: never handed out to write into)
    opt.zero_grad()
    assert p.overwritable_grad() is None
    p.accumulate(np.ones((2, 3), np.float32))
    assert (p.grad == 1.0).all()
