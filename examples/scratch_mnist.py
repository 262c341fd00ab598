"""A CNN from scratch, trained image by image (the "CNNs from scratch" NumPy tutorial).

Conv 3x3 (8 filters, no bias) -> max pool 2 -> dense softmax layer (1352 -> 10), trained
with plain SGD (lr 0.005) one image at a time on the first 1,000 MNIST training images for
3 epochs, shuffled each epoch; pixels scaled to [-0.5, 0.5] as in the tutorial.

Prints the average loss and accuracy of every 100 steps, then the loss and accuracy on the
first 1,000 test images.
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
        L.Conv2D(1, 8, 3, bias=False, rng=rng),   # 28x28x1 -> 26x26x8
        L.MaxPool2D(2),                           # -> 13x13x8
        L.Flatten(),
        L.Dense(13 * 13 * 8, 10, rng=rng),        # -> 10 logits (softmax in the loss)
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=1000, help="training images")
    p.add_argument("--test", type=int, default=1000, help="test images")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data-dir", default=None, help="MNIST directory (default: $FASTCNN_DATA)")
    args = p.parse_args(argv)

    def prepare(images):
        return data.to_float(images) - 0.5        # (N, 1, 28, 28) in [-0.5, 0.5]

    train_x, train_y = data.load_mnist(args.data_dir, "train")
    test_x, test_y = data.load_mnist(args.data_dir, "test")
    train_x, train_y = prepare(train_x[:args.train]), train_y[:args.train].astype(np.int64)
    test_x, test_y = prepare(test_x[:args.test]), test_y[:args.test].astype(np.int64)

    model, loss_fn = network(), losses.SoftmaxCrossEntropy()
    opt = optim.SGD(model.parameters(), lr=0.005)
    rng, t0 = np.random.default_rng(0), time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        print(f"--- Epoch {epoch} ---")
        loss_sum = correct = 0
        for i, k in enumerate(rng.permutation(len(train_y))):
            x, y = train_x[k:k + 1], train_y[k:k + 1]     # one image at a time
            opt.zero_grad()
            logits = model.forward(x)
            loss_sum += loss_fn.forward(logits, y)
            correct += int(np.argmax(logits) == y[0])
            model.backward(loss_fn.backward())
            opt.step()
            if i % 100 == 99:
                print(f"[Step {i + 1}] Past 100 steps: Average Loss {loss_sum / 100:.3f} | Accuracy: {correct}%")
                loss_sum = correct = 0
    seconds = time.perf_counter() - t0
    model.eval()
    logits = model.forward(test_x)
    test_loss = loss_fn.forward(logits, test_y)
    test_acc = float(np.mean(np.argmax(logits, axis=1) == test_y))
    print(f"training: {seconds:.1f} s")
    print(f"Test Loss: {test_loss:.3f}")
    print(f"Test Accuracy: {test_acc:.3f}")
    return test_acc


if __name__ == "__main__":
    main()
