"""Training is bit-identical at 1 and at 2 threads: every reduction (convolutions, dense
layers, batch norm, the loss) has an order that does not depend on the thread count."""
import numpy as np
import pytest
from conftest import COMPILED

import fastcnn
from fastcnn import models
from fastcnn.train import recipe_step


def _train(name, backend, threads, steps=3):
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(threads)
    model, step = recipe_step(name, seed=1)
    batch = models.RECIPES[name]["batch_size"]
    size = models.INPUT_SIZE[name]
    rng = np.random.default_rng(5)
    for _ in range(steps):
        x = rng.random((batch, 1, size, size), dtype=np.float32)
        y = rng.integers(0, 10, batch)
        step(x, y)
    return {k: v.copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("name", ["lenet", "bn"])
def test_training_bit_identical_at_1_and_2_threads(name, backend):
    if fastcnn._threads.max_threads() < 2:
        pytest.skip("needs 2 cores")
    before_b, before_t = fastcnn.get_backend(), fastcnn.get_num_threads()
    try:
        one = _train(name, backend, 1)
        two = _train(name, backend, 2)
    finally:
        fastcnn.set_backend(before_b)
        fastcnn.set_num_threads(before_t)
    assert one.keys() == two.keys()
    differ = [k for k in one if one[k].tobytes() != two[k].tobytes()]
    assert not differ, f"{name}/{backend}: parameters differ between 1 and 2 threads: {differ}"


@pytest.mark.skipif("cython" not in fastcnn.available_backends(), reason="Cython backend not built")
def test_every_cython_kernel_module_uses_the_thread_count_from_any_thread():
    """``set_num_threads`` reaches every compiled kernel module (each keeps its own count), so
    kernels called from a non-main Python thread, whose OpenMP default is all cores, use it."""
    import importlib
    import pkgutil
    import threading

    import fastcnn._ext

    if fastcnn._threads.max_threads() < 2:
        pytest.skip("needs 2 cores")
    names = [m.name for m in pkgutil.iter_modules(fastcnn._ext.__path__) if m.name != "_omp"]
    assert "dense" in names
    seen = {}

    def probe():  # threads a kernel with plenty of work would use, asked from this thread
        for name in names:
            seen[name] = importlib.import_module(f"fastcnn._ext.{name}")._threads_for_work(1 << 40)

    before = fastcnn.get_num_threads()
    try:
        fastcnn.set_num_threads(1)
        t = threading.Thread(target=probe)
        t.start()
        t.join()
    finally:
        fastcnn.set_num_threads(before)
    assert seen == dict.fromkeys(names, 1)
