"""The probes' timer: the median wall time of repeated calls, after one warm-up call."""
import statistics
import time


def median_seconds(fn, reps, middle=statistics.median):
    """Call ``fn()`` once (compilation, caches, buffers), then ``reps`` timed times; the median
    in seconds (``middle`` of the times: e.g. ``statistics.median_high``)."""
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return middle(ts)


def recipe_batch(name, seed=0):
    """A random training batch ``(x, y)`` of the recipe network ``name`` (its input size and
    batch size)."""
    import numpy as np

    from fastcnn import models

    rng = np.random.default_rng(seed)
    size, batch = models.INPUT_SIZE[name], models.RECIPES[name]["batch_size"]
    x = rng.random((batch, 3 if name == "resnet" else 1, size, size), dtype=np.float32)
    return x, rng.integers(0, 10, batch)


def time_primitives(k, record):
    """Put a timer around every primitive of the backend module ``k``: ``record(name,
    seconds)`` after each call."""
    for attr in dir(k):
        f = getattr(k, attr)
        if callable(f) and not attr.startswith(("_", "sizes")):
            def timed(*a, _f=f, _n=attr, **kw):
                t0 = time.perf_counter()
                out = _f(*a, **kw)
                record(_n, time.perf_counter() - t0)
                return out
            setattr(k, attr, timed)
