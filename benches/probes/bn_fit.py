"""Per BatchNorm layer of a CIFAR ResNet: how far its running statistics are from the statistics
of 2,000 validation images (eval preprocessing) and of 2,000 augmented training images, as mean
|mean difference| / running sd and mean |log(variance / running variance)| over channels.

    PYTHONPATH=. python benches/probes/bn_fit.py RUN/model.npz TORCH.npz [DATA_DIR]

RUN: a `fastcnn train --model resnet --dataset cifar10` output; TORCH.npz: the state dict
`benches/probes/cifar_torch.py --save` writes (same names), evaluated in fastcnn.
"""
import fastcnn  # isort: skip  (first: fastcnn sets the thread defaults before NumPy loads)
import sys

import numpy as np

from fastcnn import augment, data, layers, models
from fastcnn import model as M


def bn_inputs(net, xs):
    """The BatchNorm layers of ``net`` and the per-channel mean and variance of their inputs."""
    seen = {}
    bns = [(i, m) for i, m in enumerate(net.modules()) if isinstance(m, layers.BatchNorm2D)]
    for i, bn in bns:
        def record(z, orig=bn.forward, i=i):
            z64 = np.asarray(z, np.float64)
            seen[i] = (z64.mean(axis=(0, 2, 3)), z64.var(axis=(0, 2, 3)))
            return orig(z)
        bn.forward = record
    net.eval()
    out = net.forward(xs)
    for _, bn in bns:
        del bn.forward
    return bns, seen, out


def gaps(bns, seen):
    dm, dv = [], []
    for i, bn in bns:
        rm, rv = bn.running_mean.astype(np.float64), bn.running_var.astype(np.float64)
        mu, var = seen[i]
        dm.append(np.mean(np.abs(mu - rm) / np.sqrt(rv + bn.eps)))
        dv.append(np.mean(np.abs(np.log((var + bn.eps) / (rv + bn.eps)))))
    return " ".join(f"{v:.3f}" for v in dm), " ".join(f"{v:.3f}" for v in dv)


def main():
    fastcnn.set_num_threads(2)
    root = sys.argv[3] if len(sys.argv) > 3 else "../shared/data"
    x, y = data.load_cifar10(root, "train")
    pipe = augment.from_name("tutorial")
    xv, yv = pipe.eval(x[45000:47000]), y[45000:47000]
    xt = pipe(x[:2000], np.random.default_rng(123))
    for label, path in (("fastcnn", sys.argv[1]), ("torch", sys.argv[2])):
        if label == "fastcnn":
            net = M.load(path)
        else:
            net = models.build("resnet", seed=0)
            net.load_state_dict(dict(np.load(path)))
        bns, seen, out = bn_inputs(net, xv)
        print(label, "validation accuracy (2,000, running statistics)", (out.argmax(1) == yv).mean())
        for what, xs in (("val", xv), ("train", xt)):
            dm, dv = gaps(*bn_inputs(net, xs)[:2])
            print(f"  |mean diff|/sd  vs {what:5s}:", dm)
            print(f"  |log var ratio| vs {what:5s}:", dv)


if __name__ == "__main__":
    main()
