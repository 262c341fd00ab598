"""The seed tutorial's NumPy-from-scratch network, written the seed's way: per image, with
Python loops over every 3x3 region and every 2x2 pooling window.  It is the naive baseline of
the benchmarks (Conv 3x3 x 8 filters, no bias -> MaxPool 2 -> Dense(1352, 10) + softmax,
SGD lr 0.005, batch 1), not part of the package."""
import numpy as np


class NaiveScratchNet:
    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.filters = rng.standard_normal((8, 3, 3)).astype(np.float32) / 9
        self.weights = rng.standard_normal((13 * 13 * 8, 10)).astype(np.float32) / (13 * 13 * 8)
        self.biases = np.zeros(10, np.float32)

    # conv ---------------------------------------------------------------
    @staticmethod
    def _regions3(image):
        h, w = image.shape
        for i in range(h - 2):
            for j in range(w - 2):
                yield image[i:i + 3, j:j + 3], i, j

    def conv_forward(self, image):
        self.last_image = image
        h, w = image.shape
        out = np.zeros((h - 2, w - 2, 8), np.float32)
        for region, i, j in self._regions3(image):
            out[i, j] = np.sum(region * self.filters, axis=(1, 2))
        return out

    def conv_backward(self, d_out, lr):
        d_filters = np.zeros(self.filters.shape, np.float32)
        for region, i, j in self._regions3(self.last_image):
            for f in range(8):
                d_filters[f] += d_out[i, j, f] * region
        self.filters -= lr * d_filters

    # pool ---------------------------------------------------------------
    @staticmethod
    def _regions2(image):
        h, w, _ = image.shape
        for i in range(h // 2):
            for j in range(w // 2):
                yield image[i * 2:i * 2 + 2, j * 2:j * 2 + 2], i, j

    def pool_forward(self, x):
        self.last_pool_in = x
        h, w, c = x.shape
        out = np.zeros((h // 2, w // 2, c), np.float32)
        for region, i, j in self._regions2(x):
            out[i, j] = np.amax(region, axis=(0, 1))
        return out

    def pool_backward(self, d_out):
        d_in = np.zeros(self.last_pool_in.shape, np.float32)
        for region, i, j in self._regions2(self.last_pool_in):
            h, w, c = region.shape
            amax = np.amax(region, axis=(0, 1))
            for i2 in range(h):
                for j2 in range(w):
                    for f2 in range(c):
                        if region[i2, j2, f2] == amax[f2]:
                            d_in[i * 2 + i2, j * 2 + j2, f2] = d_out[i, j, f2]
        return d_in

    # softmax dense -------------------------------------------------------
    def softmax_forward(self, x):
        self.last_shape = x.shape
        x = x.flatten()
        self.last_in = x
        totals = x @ self.weights + self.biases
        self.last_totals = totals
        e = np.exp(totals - totals.max())
        return e / e.sum()

    def softmax_backward(self, d_out, lr):
        for i, g in enumerate(d_out):
            if g == 0:
                continue
            t_exp = np.exp(self.last_totals - self.last_totals.max())
            s = t_exp.sum()
            d_t = -t_exp[i] * t_exp / (s ** 2)
            d_t[i] = t_exp[i] * (s - t_exp[i]) / (s ** 2)
            d_t *= g
            d_w = self.last_in[:, None] @ d_t[None]
            d_in = self.weights @ d_t
            self.weights -= lr * d_w
            self.biases -= lr * d_t
            return d_in.reshape(self.last_shape)

    def train_step(self, image, label, lr=0.005):
        """One SGD step on one 28x28 image (float32 in [0, 1])."""
        out = self.softmax_forward(self.pool_forward(self.conv_forward(image - 0.5)))
        loss = -np.log(out[label])
        grad = np.zeros(10, np.float32)
        grad[label] = -1 / out[label]
        g = self.softmax_backward(grad, lr)
        g = self.pool_backward(g)
        self.conv_backward(g, lr)
        return loss, int(np.argmax(out) == label)

    def predict(self, image):
        return self.softmax_forward(self.pool_forward(self.conv_forward(image - 0.5)))
