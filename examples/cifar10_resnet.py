"""The PyTorch tutorial's residual network on CIFAR-10.

3x3 convolutions with BatchNorm in three stages of 16, 32 and 64 channels (two residual
blocks each; a block computes relu(body(x) + shortcut(x))), global 8x8 average pooling and
a dense layer to 10 classes: ``fastcnn.models.build("resnet")`` (print it with
``fastcnn summary --model resnet``).  Adam (lr 1e-3), batches of 100.

Prints the training loss every 100 steps, the training time and the test accuracy.
"""
import argparse
import time

import numpy as np

import fastcnn
from fastcnn import data, losses, models, optim


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--test", type=int, default=None, help="test images to evaluate (default: all)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 directory (default: the data root)")
    args = p.parse_args(argv)

    train_x, train_y = data.load_cifar10(args.data_dir, "train")   # uint8 (N, 3, 32, 32)
    test_x, test_y = data.load_cifar10(args.data_dir, "test")
    train_x, train_y = train_x[:args.limit], train_y[:args.limit]
    test_x, test_y = test_x[:args.test], test_y[:args.test]
    model, loss_fn = models.build("resnet"), losses.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        for step, (x, y) in enumerate(data.iterate_batches(train_x, train_y, 100, seed=0, epoch=epoch), 1):
            opt.zero_grad()
            loss = loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            if step % 100 == 0:
                print(f"epoch {epoch + 1} step {step}: loss {loss:.4f}")
    seconds = time.perf_counter() - t0
    model.eval()
    correct = sum(int(np.sum(np.argmax(model.forward(x), axis=1) == y)) for x, y in
                  data.iterate_batches(test_x, test_y, 500, shuffle=False))
    print(f"training: {seconds:.1f} s ({fastcnn.get_backend()}, {fastcnn.get_num_threads()} threads)")
    print(f"test accuracy: {correct / len(test_y):.4f}")
    return correct / len(test_y)


if __name__ == "__main__":
    main()
