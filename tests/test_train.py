"""fastcnn.train: fit, callbacks, validation, best checkpoint, early stopping, schedules,
seeded augmentation and dropout, bit-identical resume; the per-step loss of the seed networks
(MNIST) and the tutorial ResNet (CIFAR-10) beside PyTorch."""
import csv

import numpy as np
import pytest

import fastcnn
from fastcnn import augment, data, losses, models, optim
from fastcnn import layers as L
from fastcnn.train import (
    LOG_KEYS,
    BestCheckpoint,
    Callback,
    CSVLogger,
    EarlyStopping,
    Trainer,
    fit,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
)

from utils import DATA, cifar10_root, needs_mnist, needs_torch, torch_twin


def _data(n=120, seed=0):
    """Learnable synthetic 3x8x8 uint8 images: the class sets the mean brightness of a channel."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 80, (n, 3, 8, 8)).astype(np.int64)
    x[np.arange(n), y % 3] += 16 * (y[:, None, None] + 1)
    return np.clip(x, 0, 255).astype(np.uint8), y


def _model(seed=0):
    return fastcnn.Sequential(L.Conv2D(3, 6, 3, padding=1, rng=seed), L.BatchNorm2D(6), L.ReLU(), L.Dropout(0.2),
                              L.GlobalAvgPool2D(), L.Flatten(), L.Dense(6, 10, rng=seed))


def _pipe():
    return augment.Pipeline([augment.RandomCrop(8, 2), augment.HorizontalFlip()])


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer):
        self.calls.append("begin")

    def on_epoch_begin(self, trainer, epoch):
        self.calls.append(("epoch", epoch, trainer.optimizer.lr))

    def on_after_backward(self, trainer):
        assert any(np.any(p.grad != 0) for p in trainer.model.parameters())
        self.calls.append("backward")

    def on_step_end(self, trainer, step, loss):
        assert step == trainer.global_step and np.isfinite(loss)
        self.calls.append("step")

    def on_epoch_end(self, trainer, epoch, logs):
        assert trainer.history[-1] is logs and trainer.epoch == epoch
        self.calls.append(("end", epoch))

    def on_train_end(self, trainer):
        self.calls.append("done")


def test_fit_history_callbacks_schedule_and_outputs(tmp_path):
    x, y = _data()
    model = _model()
    opt = optim.Adam(model.parameters(), 0.05)
    rec = Recorder()
    hist = fit(model, losses.SoftmaxCrossEntropy(), opt, (x[:100], y[:100]), epochs=3, batch_size=32,
               val_data=(x[100:], y[100:]), schedule=optim.StepLR(1, 0.5), augment=_pipe(),
               callbacks=[rec, CSVLogger(tmp_path / "h.csv"), BestCheckpoint(tmp_path / "best.npz", metadata={"k": 1})],
               progress=False)
    assert [list(h) for h in hist] == [list(LOG_KEYS)] * 3
    assert [h["lr"] for h in hist] == [0.05, 0.025, 0.0125]
    assert all(0 <= h["val_accuracy"] <= 1 and h["val_loss"] > 0 and h["images_per_s"] > 0 for h in hist)
    assert hist[-1]["loss"] < hist[0]["loss"]  # it learns
    assert rec.calls[0] == "begin" and rec.calls[-1] == "done"
    assert rec.calls.count("step") == rec.calls.count("backward") == 3 * 4
    assert [c for c in rec.calls if isinstance(c, tuple)] == [("epoch", 0, 0.05), ("end", 0), ("epoch", 1, 0.025),
                                                            ("end", 1), ("epoch", 2, 0.0125), ("end", 2)]
    rows = list(csv.DictReader(open(tmp_path / "h.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[1]["val_accuracy"]) == pytest.approx(hist[1]["val_accuracy"])
    best, meta = fastcnn.load(tmp_path / "best.npz", return_metadata=True)
    vals = [h["val_accuracy"] for h in hist]
    assert meta["val_accuracy"] == max(vals) and meta["epoch"] == vals.index(max(vals)) + 1 and meta["k"] == 1


def test_early_stopping_stops_and_callback_can_stop():
    x, y = _data()
    model = _model()
    opt = optim.SGD(model.parameters(), 1e-9)  # learns nothing: no improvement after epoch 1
    stop = EarlyStopping(2)
    hist = fit(model, losses.SoftmaxCrossEntropy(), opt, (x[:100], y[:100]), epochs=10, batch_size=50,
               val_data=(x[100:], y[100:]), callbacks=[stop], progress=False)
    assert len(hist) == 3 and stop.stopped_epoch == 3

    class StopAfterOne(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            trainer.stop_training = True

    assert len(fit(_model(), losses.SoftmaxCrossEntropy(), optim.SGD(_model().parameters(), 0.1), (x, y), epochs=5,
                   batch_size=60, callbacks=[StopAfterOne()], progress=False)) == 1
    with pytest.raises(ValueError, match="val_accuracy"):
        fit(_model(), losses.SoftmaxCrossEntropy(), optim.SGD(_model().parameters(), 0.1), (x, y), epochs=1,
            batch_size=60, callbacks=[EarlyStopping(1)], progress=False)


def test_stop_requested_is_polled_once_per_step_after_backward():
    """``stop_requested`` is read after each backward pass into ``trainer.stop_code``, which
    a callback acts on in ``on_step_end``; the trainer itself goes on without such a callback."""
    x, y = _data()
    polls, seen = [], []

    def request():
        polls.append(len(polls))
        return 15 if len(polls) >= 3 else 0

    class Stop(Callback):
        def on_after_backward(self, trainer):
            seen.append(trainer.stop_code)

        def on_step_end(self, trainer, step, loss):
            if trainer.stop_code:
                raise _Cut(step)

    m = _model()
    with pytest.raises(_Cut) as info:
        fit(m, losses.SoftmaxCrossEntropy(), optim.SGD(m.parameters(), 0.1), (x, y), epochs=2, batch_size=20,
            callbacks=[Stop()], stop_requested=request, progress=False)
    assert info.value.args == (3,) and seen == [0, 0, 15] and len(polls) == 3
    m = _model()
    hist = fit(m, losses.SoftmaxCrossEntropy(), optim.SGD(m.parameters(), 0.1), (x, y), epochs=1, batch_size=20,
               stop_requested=lambda: 2, progress=False)
    assert len(hist) == 1


class _Cut(Exception):
    pass


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    """Stop after global step 7 (mid epoch 2), checkpoint, rebuild everything from the file,
    resume: the final weights, the optimizer state and the history equal an uninterrupted run.
    Covers the data order, the augmentation, Dropout, BatchNorm, AdamW and a schedule."""
    x, y = _data(150)
    train, val = (x[:130], y[:130]), (x[130:], y[130:])
    kw = dict(epochs=3, batch_size=32, val_data=val, schedule=optim.Chained(optim.LinearLR(0.5, total_iters=2),
                                                                            optim.CosineAnnealingLR(3)),
              augment=_pipe(), seed=4, progress=False)

    def run(callbacks=(), model=None, opt=None, **extra):
        model = model or _model(1)
        opt = opt or optim.AdamW(model.parameters(), 0.02, weight_decay=0.05)
        hist = fit(model, losses.SoftmaxCrossEntropy(), opt, train, callbacks=list(callbacks), base_lr=0.02,
                   **kw, **extra)
        return model, opt, hist

    full_model, full_opt, full_hist = run([EarlyStopping(5)])

    class CutAt(Callback):
        def on_step_end(self, trainer, step, loss):
            if step == 7:
                save_checkpoint(tmp_path / "c.npz", trainer.model, trainer.optimizer, trainer.partial_state(),
                                trainer.steps)
                raise _Cut

    stop = EarlyStopping(5)
    with pytest.raises(_Cut):
        run([stop, CutAt()])
    model, opt_state, state, steps = load_checkpoint(tmp_path / "c.npz")
    assert (state["epoch"], state["step"]) == (1, 2)
    opt = optim.AdamW(model.parameters(), 0.02, weight_decay=0.05)
    opt.load_state_dict(opt_state)
    stop2 = EarlyStopping(5)
    model, opt, hist = run([CSVLogger(tmp_path / "h.csv"), stop2], model=model, opt=opt, state=state,
                           step_history=steps)
    assert stop2.best == max(h["val_accuracy"] for h in full_hist)  # its state came through the checkpoint
    for k, v in full_model.state_dict().items():
        assert v.tobytes() == model.state_dict()[k].tobytes(), k
    for k, v in full_opt.state_dict().items():
        assert np.asarray(v).tobytes() == np.asarray(opt.state_dict()[k]).tobytes(), k
    drop = lambda hs: [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in hs]  # noqa: E731
    assert drop(hist) == drop(full_hist)


def test_trainer_argument_errors():
    x, y = _data(10)
    m = _model()
    opt = optim.SGD(m.parameters(), 0.1)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(m, losses.SoftmaxCrossEntropy(), opt, (x, y), epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="labels"):
        Trainer(m, losses.SoftmaxCrossEntropy(), opt, (x, y[:5]), epochs=1, batch_size=2)


# --------------------------------------------------------------------------- CIFAR-10


# --------------------------------------------------------------------------- ResNet parity with PyTorch

@pytest.mark.parametrize("batch", [20, pytest.param(100, marks=pytest.mark.slow)])
def test_resnet_cifar10_loss_curve_matches_torch(batch):
    """The tutorial ResNet on real CIFAR-10, tutorial augmentation, Adam 1e-3, 30 steps, from
    the same weights and the same augmented batches as fit() draws them.  Gold: PyTorch in
    float64.  fastcnn's per-step loss must follow it as closely as PyTorch's own float32 run
    does, or within 1e-3 relative, whichever is looser; the initial logits within 1e-4."""
    torch = pytest.importorskip("torch")
    from fastcnn import data, models
    from fastcnn.interop import to_torch

    x, y = data.load_cifar10(cifar10_root(), "train")
    x, y = x[:45000], y[:45000]
    model = models.build("resnet", seed=0)
    gold = to_torch(model).double()
    t32 = to_torch(model).float()
    pipe = augment.from_name("tutorial")
    xb0 = pipe(x[:batch], np.random.default_rng(0))
    model.eval()
    gold.eval()
    with torch.no_grad():
        want = gold(torch.tensor(xb0, dtype=torch.float64)).numpy()
    assert np.abs(model.forward(xb0) - want).max() <= 1e-4
    model.train()
    gold.train()
    opt = optim.Adam(model.parameters(), 1e-3)
    gopt = torch.optim.Adam(gold.parameters(), 1e-3)
    topt = torch.optim.Adam(t32.parameters(), 1e-3)
    loss_fn = losses.SoftmaxCrossEntropy()
    trainer = Trainer(model, loss_fn, opt, (x, y), epochs=1, batch_size=batch, augment=pipe, seed=0)
    order = np.random.default_rng([0, 0]).permutation(len(y))
    ours, gold_l, f32 = [], [], []
    for step in range(30):
        xb, yb = trainer._batch(order, step)  # exactly what fit() trains on
        opt.zero_grad()
        ours.append(loss_fn.forward(model.forward(xb), yb))
        model.backward(loss_fn.backward())
        opt.step()
        for net, o, dt, out in ((gold, gopt, torch.float64, gold_l), (t32, topt, torch.float32, f32)):
            o.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(torch.tensor(xb, dtype=dt)), torch.tensor(yb))
            loss.backward()
            o.step()
            out.append(loss.item())
    ours, gold_l, f32 = map(np.asarray, (ours, gold_l, f32))
    rel_ours = np.abs(ours - gold_l) / np.abs(gold_l)
    rel_torch = np.abs(f32 - gold_l) / np.abs(gold_l)
    print(f"batch {batch}: max rel diff from float64 torch: fastcnn {rel_ours.max():.2e}, "
          f"torch float32 {rel_torch.max():.2e}")
    assert rel_ours.max() <= max(rel_torch.max(), 1e-3)
    assert gold_l[-5:].mean() < gold_l[:5].mean()  # it is learning


# --------------------------------------------------------------------------- MNIST parity with PyTorch

@pytest.fixture(scope="module")
def mnist_train():
    return data.load_mnist(DATA, "train")


@needs_torch
@needs_mnist
@pytest.mark.parametrize("name,steps", [("scratch", 50), ("lenet", 30), ("bn", 30)])
def test_loss_curve_matches_torch(mnist_train, name, steps):
    """Same initial weights, same batches in the same order: same per-step loss (1e-3 rel).

    The gold run is PyTorch in float64: PyTorch's own float32 run drifts from it by up to
    ~3e-3 within 30 Adam steps of lenet (and by ~6e-3 between its 1- and 2-thread runs), while
    fastcnn's float32 stays within ~1e-5 of it.
    """
    import torch

    recipe = models.RECIPES[name]
    model = models.build(name, seed=0)
    twin = torch_twin(model).double()
    opt = make_optimizer(recipe["optimizer"], model.parameters(), recipe["lr"])
    topt = (torch.optim.SGD(twin.parameters(), lr=recipe["lr"]) if recipe["optimizer"] == "sgd"
            else torch.optim.Adam(twin.parameters(), lr=recipe["lr"]))
    loss_fn = losses.SoftmaxCrossEntropy()
    images, labels = mnist_train
    ours, theirs = [], []
    batches = data.iterate_batches(images, labels, recipe["batch_size"], seed=0, epoch=0)
    for step, (x, y) in zip(range(steps), batches):
        opt.zero_grad()
        ours.append(loss_fn.forward(model.forward(x), y))
        model.backward(loss_fn.backward())
        opt.step()
        topt.zero_grad()
        tl = torch.nn.functional.cross_entropy(twin(torch.tensor(x, dtype=torch.float64)), torch.tensor(y))
        tl.backward()
        topt.step()
        theirs.append(tl.item())
    ours, theirs = np.array(ours), np.array(theirs)
    rel = np.abs(ours - theirs) / np.abs(theirs)
    assert rel.max() <= 1e-3, f"per-step loss differs: max rel {rel.max():.2e} at step {rel.argmax()}"
    assert theirs[-5:].mean() < theirs[:5].mean()  # it is learning


def test_fit_takes_bound_steps_and_the_layer_calls_bytes():
    """fit's steps (a fastcnn.TrainStep, bound for this network) give the weights and per-step
    losses and accuracies of the same loop written with layer calls; a pipeline without random
    transforms (no generator drawn) gives the same as a callable that takes one."""
    x, y = _data(48)
    net = lambda: fastcnn.Sequential(L.Conv2D(3, 4, 3, padding=1, rng=1), L.ReLU(), L.MaxPool2D(2),  # noqa: E731
                                     L.Flatten(), L.Dense(4 * 4 * 4, 10, rng=2))
    m1, m2, m3 = net(), net(), net()
    pipe = augment.Pipeline()
    steps2, steps3 = {}, {}
    fit(m2, losses.SoftmaxCrossEntropy(), optim.SGD(m2.parameters(), 0.05), (x, y), epochs=2, batch_size=5,
        augment=pipe, progress=False, step_history=steps2)
    fit(m3, losses.SoftmaxCrossEntropy(), optim.SGD(m3.parameters(), 0.05), (x, y), epochs=2, batch_size=5,
        augment=lambda b, rng: pipe(b, rng), progress=False, step_history=steps3)
    assert steps2 == steps3
    # the same loop by layer calls
    loss_fn, opt = losses.SoftmaxCrossEntropy(), optim.SGD(m1.parameters(), 0.05)
    m1.needs_input_grad = False
    losses1 = []
    for epoch in range(2):
        order = np.random.default_rng([0, epoch]).permutation(len(y))
        for s in range(-(-len(y) // 5)):
            idx = order[s * 5:(s + 1) * 5]
            opt.zero_grad()
            losses1.append(loss_fn.forward(m1.forward(pipe.eval(x[idx])), y[idx].astype(np.int64)))
            m1.backward(loss_fn.backward())
            opt.step()
    assert losses1 == steps2["loss"]
    for a, b, c in zip(m1.state_dict().values(), m2.state_dict().values(), m3.state_dict().values()):
        assert a.tobytes() == b.tobytes() == c.tobytes()
