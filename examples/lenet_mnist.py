"""The TensorFlow tutorial's LeNet on MNIST: 500 Adam steps of 128 images, with curves.

Two 5x5 SAME convolutions (32 and 64 channels) with ReLU and 2x2 max pooling, a 1024-unit
ReLU layer and 10 logits; Adam (lr 1e-3), batches of 128 drawn in a shuffled order.
(The tutorial also has dropout, which fastcnn does not have.)

Prints the training loss and accuracy every 100 steps, the training time, and the accuracy
on the 10,000 test images; writes the loss and accuracy curves to lenet_curves.png.
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
        L.Conv2D(1, 32, 5, padding="same", rng=rng), L.ReLU(), L.MaxPool2D(2),    # -> 32x14x14
        L.Conv2D(32, 64, 5, padding="same", rng=rng), L.ReLU(), L.MaxPool2D(2),   # -> 64x7x7
        L.Flatten(),
        L.Dense(7 * 7 * 64, 1024, rng=rng), L.ReLU(),
        L.Dense(1024, 10, rng=rng),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--test", type=int, default=10000, help="test images to evaluate")
    p.add_argument("--data-dir", default=None, help="MNIST directory (default: $FASTCNN_DATA)")
    p.add_argument("--out", default="lenet_curves.png", help="curves PNG")
    p.add_argument("--save", default=None, help="also save the trained model (.npz)")
    args = p.parse_args(argv)

    train_x, train_y = data.load_mnist(args.data_dir, "train")
    test_x, test_y = data.load_mnist(args.data_dir, "test")
    model, loss_fn = network(), losses.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), lr=1e-3)

    def batches():  # endless shuffled mini-batches, a new order every epoch
        for epoch in range(10 ** 6):
            yield from data.iterate_batches(train_x, train_y, args.batch_size, seed=0, epoch=epoch)

    history, t0 = [], time.perf_counter()
    for step, (x, y) in zip(range(1, args.steps + 1), batches()):
        opt.zero_grad()
        logits = model.forward(x)
        loss = loss_fn.forward(logits, y)
        model.backward(loss_fn.backward())
        opt.step()
        history.append((loss, float(np.mean(np.argmax(logits, axis=1) == y))))
        if step % 100 == 0:
            print(f"step {step}: loss {loss:.4f}, training accuracy {history[-1][1]:.3f}")
    seconds = time.perf_counter() - t0
    model.eval()
    logits = np.concatenate([model.forward(x) for x, _ in
                             data.iterate_batches(test_x[:args.test], test_y[:args.test], 1000, shuffle=False)])
    test_acc = float(np.mean(np.argmax(logits, axis=1) == test_y[:args.test]))
    print(f"training: {seconds:.1f} s for {len(history)} steps ({fastcnn.get_backend()}, "
          f"{fastcnn.get_num_threads()} threads)")
    print(f"test accuracy: {test_acc:.4f}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    loss, acc = np.array(history).T
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(np.arange(1, len(loss) + 1), loss)
    a1.set(xlabel="step", ylabel="training loss", yscale="log")
    a2.plot(np.arange(1, len(acc) + 1), acc, label="training batch")
    a2.axhline(test_acc, color="C3", ls="--", label=f"test {test_acc:.4f}")
    a2.set(xlabel="step", ylabel="accuracy")
    a2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    if args.save:
        model.save(args.save, metadata={"model": "lenet", "test_accuracy": test_acc})
    return test_acc


if __name__ == "__main__":
    main()
