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
