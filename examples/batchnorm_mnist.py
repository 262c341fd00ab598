"""A batch-normalised CNN on MNIST (the BatchNorm tutorial's network).

Two 5x5 convolutions (16 and 32 channels, padding 2), each followed by BatchNorm, ReLU and
2x2 max pooling, then one dense layer to 10 logits; Adam (lr 1e-3), batches of 100, one
epoch.  BatchNorm normalises with each batch's statistics while training and with its
running averages in evaluation (``model.eval()``).

Prints the training loss every 100 steps, the training time and the test accuracy.
"""
import argparse
import time

import numpy as np

import fastcnn
from fastcnn import data, losses, optim
from fastcnn import layers as L


def network(seed=0):
    rng = np.random.default_rng(seed)
    return fastcnn.Sequential(
        L.Conv2D(1, 16, 5, padding=2, rng=rng), L.BatchNorm2D(16), L.ReLU(), L.MaxPool2D(2),   # -> 16x14x14
        L.Conv2D(16, 32, 5, padding=2, rng=rng), L.BatchNorm2D(32), L.ReLU(), L.MaxPool2D(2),  # -> 32x7x7
        L.Flatten(),
        L.Dense(7 * 7 * 32, 10, rng=rng),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--test", type=int, default=10000, help="test images to evaluate")
    p.add_argument("--data-dir", default=None, help="MNIST directory (default: $FASTCNN_DATA)")
    args = p.parse_args(argv)

    train_x, train_y = data.load_mnist(args.data_dir, "train")
    test_x, test_y = data.load_mnist(args.data_dir, "test")
    train_x, train_y = train_x[:args.limit], train_y[:args.limit]
    model, loss_fn = network(), losses.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()                                   # batch statistics
        for step, (x, y) in enumerate(data.iterate_batches(train_x, train_y, 100, seed=0, epoch=epoch), 1):
            opt.zero_grad()
            loss = loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            if step % 100 == 0:
                print(f"epoch {epoch + 1} step {step}: loss {loss:.4f}")
    seconds = time.perf_counter() - t0
    model.eval()                                        # running statistics
    correct = sum(int(np.sum(np.argmax(model.forward(x), axis=1) == y)) for x, y in
                  data.iterate_batches(test_x[:args.test], test_y[:args.test], 1000, shuffle=False))
    print(f"training: {seconds:.1f} s")
    print(f"test accuracy: {correct / len(test_y[:args.test]):.4f}")
    return correct / len(test_y[:args.test])


if __name__ == "__main__":
    main()
