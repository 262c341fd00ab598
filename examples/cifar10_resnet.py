"""The PyTorch tutorial's residual network on CIFAR-10, with the tutorial's recipe.

3x3 convolutions with BatchNorm in three stages of 16, 32 and 64 channels (two residual
blocks each; a block computes relu(body(x) + shortcut(x))), global 8x8 average pooling and
a dense layer to 10 classes: ``fastcnn.models.build("resnet")`` (print it with
``fastcnn summary --model resnet``).  Adam (lr 1e-3), batches of 100, the tutorial's
augmentation (resize to 40, random crop 32, horizontal flip) and its learning rate divided by
3 every 20 epochs, all through ``fastcnn.train.fit``.

Prints one line per epoch, the training time and the test accuracy.
"""
import argparse
import sys
import time

import fastcnn
from fastcnn import augment, data, losses, models, optim, train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--test", type=int, default=None, help="test images to evaluate (default: all)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 directory (default: the data root)")
    p.add_argument("--test-file", default=None, help="e.g. test_batch_first1000.bin.gz (a partial test set)")
    args = p.parse_args(argv)

    train_x, train_y = data.load_cifar10(args.data_dir, "train")   # uint8 (N, 3, 32, 32)
    kw = {"test_file": args.test_file} if args.test_file else {}
    test_x, test_y = data.load_cifar10(args.data_dir, "test", **kw)
    train_x, train_y = train_x[:args.limit], train_y[:args.limit]
    test_x, test_y = test_x[:args.test], test_y[:args.test]

    model = models.build("resnet")
    opt = optim.Adam(model.parameters(), lr=1e-3)
    pipe = augment.from_name("tutorial")
    t0 = time.perf_counter()
    train.fit(model, losses.SoftmaxCrossEntropy(), opt, (train_x, train_y), epochs=args.epochs,
              batch_size=100, schedule=optim.StepLR(20, 1 / 3), augment=pipe,
              callbacks=[train.EpochLog(sys.stdout)], progress=False)
    seconds = time.perf_counter() - t0
    acc, _ = train.evaluate(model, test_x, test_y, preprocess=pipe.eval)
    print(f"training: {seconds:.1f} s ({fastcnn.get_backend()}, {fastcnn.get_num_threads()} threads)")
    print(f"test accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
