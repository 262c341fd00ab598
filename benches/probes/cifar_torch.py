"""PyTorch twin of ``fastcnn train --model resnet --dataset cifar10``: same recipe, same data.

The ResNet is ``fastcnn.interop.to_torch`` of ``fastcnn.models.build("resnet", seed)`` (same
initial weights); the training images, validation split (the last ``--val-split`` images),
batch order and augmented batches are fastcnn's own (``fastcnn.train.Trainer`` draws them the
same way), so only the arithmetic differs.  Adam lr 1e-3, batch 100, StepLR(20, 1/3) per epoch,
float32.  Writes one JSON line per epoch to ``--out`` (epoch, loss, accuracy, val_loss,
val_accuracy, lr, seconds, images_per_s) and a final line with the test accuracy.

    python benches/probes/cifar_torch.py --epochs 5 --val-split 5000 --seed 0 --threads 2 \\
        --data-dir ../shared/data --test-file test_batch_first1000.bin.gz --out runs/torch.jsonl
"""
import argparse
import json
import time

import numpy as np
import torch

import fastcnn
from fastcnn import augment, data, models
from fastcnn import functional as F
from fastcnn.interop import to_torch


class _FastcnnBatchNorm(torch.autograd.Function):
    """``torch.nn.BatchNorm2d``'s arithmetic replaced by fastcnn's (``--fastcnn-bn``): forward
    with :func:`fastcnn.functional.batch_norm2d` (running statistics updated in place in the
    module's buffers), backward with :func:`fastcnn.functional.batch_norm2d_backward`."""

    @staticmethod
    def forward(ctx, x, weight, bias, module):
        y, ctx.cache = F.batch_norm2d(x.detach().contiguous().numpy(), weight.detach().numpy(),
                                      bias.detach().numpy(), module.running_mean.numpy(),
                                      module.running_var.numpy(), training=module.training,
                                      momentum=module.momentum, eps=module.eps)
        ctx.weight = weight.detach().numpy()
        return torch.from_numpy(y)

    @staticmethod
    def backward(ctx, gy):
        gx, gw, gb = F.batch_norm2d_backward(gy.contiguous().numpy(), ctx.cache, ctx.weight)
        return torch.from_numpy(gx), torch.from_numpy(gw), torch.from_numpy(gb), None


class FastcnnBatchNorm2d(torch.nn.BatchNorm2d):
    def forward(self, x):
        return _FastcnnBatchNorm.apply(x, self.weight, self.bias, self)


def use_fastcnn_batchnorm(net):
    """Swap every ``BatchNorm2d`` of ``net`` for :class:`FastcnnBatchNorm2d` (same parameters
    and buffers)."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.BatchNorm2d:
                new = FastcnnBatchNorm2d(child.num_features, child.eps, child.momentum)
                new.load_state_dict(child.state_dict())
                setattr(module, name, new)
    return net


def evaluate(net, pipe, x, y, bs=1000, batch_stats=False):
    """Accuracy and mean loss; ``batch_stats``: BatchNorm normalises with each 1,000-image batch's
    own statistics (train mode, running statistics restored after) instead of the running ones."""
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    net.train(batch_stats)
    correct, loss = 0, 0.0
    with torch.no_grad():
        for s in range(0, len(y), bs):
            logits = net(torch.from_numpy(pipe.eval(x[s:s + bs])))
            t = torch.from_numpy(y[s:s + bs].astype(np.int64))
            loss += torch.nn.functional.cross_entropy(logits, t, reduction="sum").item()
            correct += int((logits.argmax(1) == t).sum())
    net.load_state_dict(saved)
    net.train()
    return correct / len(y), loss / len(y)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--val-split", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--test-file", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--augment", default=None, help="a fastcnn.augment recipe (default: the recipe's, tutorial)")
    p.add_argument("--fastcnn-bn", action="store_true",
                   help="batch norm with fastcnn's arithmetic (the rest PyTorch's): which part owns a difference")
    p.add_argument("--no-mkldnn", action="store_true",
                   help="convolutions without oneDNN (torch.backends.mkldnn.enabled = False): a PyTorch-only change "
                        "of arithmetic, the control for --fastcnn-bn")
    p.add_argument("--save", default=None, help="write the final state dict here (.npz, names as fastcnn's)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.backends.mkldnn.enabled = not a.no_mkldnn
    fastcnn.set_num_threads(a.threads)
    x, y = data.load_cifar10(a.data_dir, "train")
    if a.limit:
        x, y = x[:a.limit], y[:a.limit]
    kw = {"test_file": a.test_file} if a.test_file else {}
    tx, ty = data.load_cifar10(a.data_dir, "test", **kw)
    n = len(y) - a.val_split
    vx, vy, x, y = x[n:], y[n:], x[:n], y[:n]
    r = models.recipe("resnet", "cifar10")
    pipe = augment.from_name(a.augment or r["augment"])
    net = to_torch(models.build("resnet", seed=a.seed)).float().train()
    if a.fastcnn_bn:
        net = use_fastcnn_batchnorm(net)
    opt = torch.optim.Adam(net.parameters(), lr=r["lr"])
    sched = torch.optim.lr_scheduler.StepLR(opt, r["step_size"], r["gamma"])
    bs = r["batch_size"]
    with open(a.out, "w") as f:
        for epoch in range(a.epochs):
            order = np.random.default_rng([a.seed, epoch]).permutation(n)
            t0 = time.perf_counter()
            losses, accs, sizes = [], [], []
            for step in range(-(-n // bs)):
                idx = order[step * bs:(step + 1) * bs]
                xb = torch.from_numpy(pipe(x[idx], np.random.default_rng([a.seed, epoch, step, 1])))
                yb = torch.from_numpy(y[idx].astype(np.int64))
                opt.zero_grad()
                logits = net(xb)
                loss = torch.nn.functional.cross_entropy(logits, yb)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                accs.append(float((logits.argmax(1) == yb).float().mean()))
                sizes.append(len(idx))
            secs = time.perf_counter() - t0
            lr = opt.param_groups[0]["lr"]
            sched.step()
            va, vl = evaluate(net, pipe, vx, vy)
            w = np.asarray(sizes) / n
            row = dict(epoch=epoch + 1, loss=float(np.dot(losses, w)), accuracy=float(np.dot(accs, w)),
                       val_loss=vl, val_accuracy=va, lr=lr, seconds=secs, images_per_s=n / secs)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(row, flush=True)
        ta, tl = evaluate(net, pipe, tx, ty)
        vb, _ = evaluate(net, pipe, vx, vy, batch_stats=True)
        if a.save:
            np.savez(a.save, **{k: v.numpy() for k, v in net.state_dict().items()})
        f.write(json.dumps({"val_accuracy_batch_stats": vb}) + "\n")
        print("validation accuracy with batch statistics", vb, flush=True)
        f.write(json.dumps({"test_accuracy": ta, "test_loss": tl, "test_images": len(ty),
                            "torch": torch.__version__, "threads": a.threads}) + "\n")
        print("test accuracy", ta, flush=True)


if __name__ == "__main__":
    main()
