"""Training and inference throughput of the seed networks in fastcnn and its peers.

    pip install "fastcnn[peers,compare]"      # tensorflow-cpu, jax; torch
    python benches/peers.py                   # 3 rounds, 2 threads, Markdown table
    python benches/peers.py --rounds 1 --models lenet bn --frameworks numba torch

Frameworks: fastcnn (``numba``, ``cython``), PyTorch (``torch``), Keras 3 on TensorFlow
(``keras``), JAX (``jax``).  Models: lenet (batch 128, Adam 1e-3), bn (batch 100, Adam 1e-3),
resnet (the CIFAR ResNet of ``fastcnn.models``, 3x32x32, batch 100, Adam 1e-3) and scratch
(batch 1, SGD 0.005); each peer builds the same architecture from ``model.config()``.

Every (framework, model) pair runs in its own process, once per round; the order of the
frameworks alternates between rounds (forward, then reversed); the tables give medians over
the rounds (and the min-max range) of the images/s, and of each round's ratio of fastcnn to
PyTorch and to the faster of Keras and JAX (measured side by side).  Each process pins itself to the first ``--threads``
cores (taskset) and verifies its thread count: ``fastcnn.get_num_threads()``,
``torch.get_num_threads()``, TensorFlow's intra-/inter-op pools, and for JAX (no thread
setting of its own) the CPU affinity plus ``XLA_FLAGS``.  Training: images/s over timed steps
after warm-up steps (random data of the right shape; the first steps compile), the timed steps
repeated until at least ``MIN_TRAIN_SECONDS`` have passed; inference:
images/s of eval-mode forward passes at batch 1000.  ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE``
are unset in the children, as in ``benches/run_benchmarks.sh``.  Every child starts from the
environment the parent was started with (before fastcnn's import set its thread defaults:
until the fifth session PyTorch's children inherited ``OMP_WAIT_POLICY=PASSIVE`` from it and
trained up to 1.6x slower than in a process of its own; docs/BENCHMARKS.md).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

#: The environment before the parent imports fastcnn (``specs``): fastcnn's import sets
#: thread defaults (``OMP_WAIT_POLICY=PASSIVE``, ...) in ``os.environ`` for its own runtime,
#: and a peer's child must start with the user's environment, not with those.
_USER_ENV = dict(os.environ)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

FRAMEWORKS = ("numba", "cython", "torch", "keras", "jax")
MODELS = ("lenet", "bn", "resnet", "scratch")
#: model: (warm-up steps, timed steps, timed inference batches)
STEPS = {"lenet": (2, 8, 3), "bn": (2, 10, 3), "resnet": (1, 4, 2), "scratch": (20, 300, 3)}
INFER_BATCH = 1000
#: Training is timed over at least this long: 300 batch-1 steps of fastcnn (~20 ms) fit inside
#: one of the shared host's slow or fast phases (docs/BENCHMARKS.md, thirty-eighth session).
MIN_TRAIN_SECONDS = 1.0


# --------------------------------------------------------------------------- parent

def specs():
    """Architecture, recipe and input shape of every model, from fastcnn (parent only)."""
    sys.path.insert(0, ROOT)
    from fastcnn import models

    out = {}
    for name in MODELS:
        m = models.build(name)
        c = 3 if name == "resnet" else 1
        s = models.INPUT_SIZE[name]
        out[name] = dict(config=m.config(), recipe=models.RECIPES[name], input=[c, s, s])
    return out


def run_child(framework, model, spec_path, threads):
    env = {k: v for k, v in _USER_ENV.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["FASTCNN_NUM_THREADS"] = str(threads)
    if framework == "jax":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen=true "
                            f"intra_op_parallelism_threads={threads}").strip()
    if framework in ("torch", "keras", "jax"):
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:threads])
    cmd = ["taskset", "-c", cpus, sys.executable, os.path.abspath(__file__), "--child", framework,
           "--model", model, "--spec", spec_path, "--threads", str(threads)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def parent(a):
    spec = specs()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        spec_path = f.name
    results = {}
    try:
        for r in range(a.rounds):
            order = list(a.frameworks) if r % 2 == 0 else list(reversed(a.frameworks))
            for model in a.models:
                for fw in order:
                    res = run_child(fw, model, spec_path, a.threads)
                    results.setdefault((model, fw), []).append(res)
                    print(f"# round {r + 1} {model:8s} {fw:7s} {json.dumps(res)}", file=sys.stderr,
                          flush=True)
    finally:
        os.unlink(spec_path)
    table(results, a)


def _stat(vals, fmt=".0f"):
    """``median (min-max)`` of ``vals`` (the range only for two or more), or ``-``."""
    vals = sorted(vals)
    if not vals:
        return "-"
    med = vals[len(vals) // 2] if len(vals) % 2 else 0.5 * (vals[len(vals) // 2 - 1] + vals[len(vals) // 2])
    rng = f" ({vals[0]:{fmt}}-{vals[-1]:{fmt}})" if len(vals) > 1 else ""
    return f"{med:{fmt}}{rng}"


def table(results, a):
    print(f"Images/s, median over {a.rounds} round(s) (min-max), {a.threads} threads.\n")
    for what, key in (("training", "train_ips"), ("inference (batch 1000)", "infer_ips")):
        print(f"| {what} | " + " | ".join(a.frameworks) + " |")
        print("|---|" + "---:|" * len(a.frameworks))
        for model in a.models:
            cells = []
            for fw in a.frameworks:
                runs = results.get((model, fw), [])
                errs = [r["error"] for r in runs if "error" in r]
                vals = [r[key] for r in runs if key in r]
                cells.append(_stat(vals) if vals else ("error" if errs else "-"))
            print(f"| {model} | " + " | ".join(cells) + " |")
        print()
    ratio_table(results, a)
    for (model, fw), runs in sorted(results.items()):
        for r in runs:
            if "error" in r:
                print(f"- {model}/{fw} failed: {r['error']}")
    checks = {fw: runs[0].get("threads") for (model, fw), runs in results.items() if runs and "threads" in runs[0]}
    print("\nThread checks: " + "; ".join(f"{fw}: {v}" for fw, v in sorted(checks.items())))


def round_ratios(results, model, fw, peers, key):
    """Per round: ``fw``'s images/s over the fastest of ``peers`` in the same round (the
    processes ran minutes apart at most, so a slow spell of the host hits both); rounds where
    one failed are left out."""
    out = []
    for r, run in enumerate(results.get((model, fw), [])):
        rivals = [results[(model, p)][r].get(key) for p in peers if len(results.get((model, p), [])) > r]
        rivals = [v for v in rivals if v]
        if key in run and rivals:
            out.append(run[key] / max(rivals))
    return out


def ratio_table(results, a):
    """fastcnn's ratios to PyTorch and to the faster of Keras and JAX, each the median (min-max)
    over the rounds of that round's ratio."""
    ours = [fw for fw in a.frameworks if fw in ("cython", "numba")]
    groups = [(name, [p for p in peers if p in a.frameworks])
              for name, peers in (("torch", ["torch"]), ("fastest of keras/jax", ["keras", "jax"]))]
    groups = [(name, peers) for name, peers in groups if peers]
    if not ours or not groups:
        return
    print("Ratios measured side by side: per round, fastcnn's images/s over the peer's in the same round; "
          "median (min-max) over the rounds.\n")
    for what, key in (("training", "train_ips"), ("inference (batch 1000)", "infer_ips")):
        cols = [(fw, name, peers) for name, peers in groups for fw in ours]
        print(f"| {what} | " + " | ".join(f"{fw} / {name}" for fw, name, _ in cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for model in a.models:
            cells = [_stat(round_ratios(results, model, fw, peers, key), ".2f") for fw, _, peers in cols]
            print(f"| {model} | " + " | ".join(cells) + " |")
        print()


# --------------------------------------------------------------------------- children

def _time_train(step, batches, warm, timed):
    """``(steps, seconds)``: ``timed`` steps after ``warm`` ones, repeated until at least
    ``MIN_TRAIN_SECONDS`` have passed (the same rule for every framework)."""
    for i in range(warm):
        step(*batches[i % len(batches)])
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(timed):
            step(*batches[n % len(batches)])
            n += 1
        t = time.perf_counter() - t0
        if t >= MIN_TRAIN_SECONDS:
            return n, t


def _time_infer(fwd, x, reps):
    fwd(x)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fwd(x)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def _data(spec, batch, count, channels_last=False, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (batch, *spec["input"])
    out = []
    for _ in range(count):
        x = rng.random(shape, dtype=np.float32)
        if channels_last:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        out.append((x, rng.integers(0, 10, batch)))
    return out


def child_fastcnn(backend, spec, threads):
    sys.path.insert(0, ROOT)
    import fastcnn
    from fastcnn import losses, optim
    from fastcnn.model import Sequential  # noqa: F401
    from fastcnn.models import build

    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(threads)
    name = spec["name"]
    model = build(name, in_channels=spec["input"][0])
    model.needs_input_grad = False
    rec = spec["recipe"]
    opt = optim.Adam(model.parameters(), rec["lr"]) if rec["optimizer"] == "adam" else \
        optim.SGD(model.parameters(), rec["lr"])
    loss_fn = losses.SoftmaxCrossEntropy()
    step = fastcnn.TrainStep(model, loss_fn, opt)  # (zero_grad, forward, loss, backward, update)
    return dict(step=step, eval=lambda: model.eval(), infer=model.forward, channels_last=False,
                threads=f"fastcnn.get_num_threads()={fastcnn.get_num_threads()}")


def _torch_model(cfg, nn):
    t = cfg["type"]
    if t == "Sequential":
        return nn.Sequential(*[_torch_model(c, nn) for c in cfg["layers"]])
    a = cfg.get("args", {})
    if t == "Conv2D":
        pad = a["padding"]
        if pad == "same":
            pad = (a["kernel_size"][0] // 2, a["kernel_size"][1] // 2)
        elif pad == "valid":
            pad = 0
        else:
            pad = tuple(pad)
        return nn.Conv2d(a["in_channels"], a["out_channels"], tuple(a["kernel_size"]), tuple(a["stride"]),
                         pad, bias=a["bias"])
    if t == "BatchNorm2D":
        return nn.BatchNorm2d(a["num_features"], a["eps"], a["momentum"])
    if t == "ReLU":
        return nn.ReLU()
    if t in ("MaxPool2D", "AvgPool2D"):
        cls = nn.MaxPool2d if t == "MaxPool2D" else nn.AvgPool2d
        return cls(tuple(a["kernel_size"]), tuple(a["stride"]))
    if t == "Flatten":
        return nn.Flatten()
    if t == "Dense":
        return nn.Linear(a["in_features"], a["out_features"], bias=a["bias"])
    if t == "Residual":
        import torch

        body, short = _torch_model(cfg["body"], nn), _torch_model(cfg["shortcut"], nn)

        class Residual(nn.Module):
            def __init__(self):
                super().__init__()
                self.body, self.short = body, short

            def forward(self, x):
                return torch.relu(self.body(x) + self.short(x))

        return Residual()
    raise TypeError(t)


def child_torch(spec, threads):
    import torch

    torch.set_num_threads(threads)
    model = _torch_model(spec["config"], torch.nn)
    rec = spec["recipe"]
    opt = torch.optim.Adam(model.parameters(), rec["lr"]) if rec["optimizer"] == "adam" else \
        torch.optim.SGD(model.parameters(), rec["lr"])

    def step(x, y):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def infer(x):
        with torch.no_grad():
            return model(x)

    return dict(step=step, eval=model.eval, infer=infer, channels_last=False, to=torch.from_numpy,
                threads=f"torch.get_num_threads()={torch.get_num_threads()} (torch {torch.__version__})")


def _keras_layers(cfg, keras, x):
    t = cfg["type"]
    if t == "Sequential":
        for c in cfg["layers"]:
            x = _keras_layers(c, keras, x)
        return x
    a = cfg.get("args", {})
    L = keras.layers
    if t == "Conv2D":
        k, s, pad = tuple(a["kernel_size"]), tuple(a["stride"]), a["padding"]
        if pad == "same" or (isinstance(pad, list) and s == (1, 1) and tuple(pad) == (k[0] // 2, k[1] // 2)):
            mode = "same"
        else:
            if pad not in ("valid", [0, 0]):
                x = L.ZeroPadding2D(tuple(pad))(x)
            mode = "valid"
        return L.Conv2D(a["out_channels"], k, s, mode, use_bias=a["bias"])(x)
    if t == "BatchNorm2D":
        return L.BatchNormalization(momentum=1 - a["momentum"], epsilon=a["eps"])(x)
    if t == "ReLU":
        return L.ReLU()(x)
    if t == "MaxPool2D":
        return L.MaxPooling2D(tuple(a["kernel_size"]), tuple(a["stride"]))(x)
    if t == "AvgPool2D":
        return L.AveragePooling2D(tuple(a["kernel_size"]), tuple(a["stride"]))(x)
    if t == "Flatten":
        return L.Flatten()(x)
    if t == "Dense":
        return L.Dense(a["out_features"], use_bias=a["bias"])(x)
    if t == "Residual":
        y = _keras_layers(cfg["body"], keras, x)
        s = _keras_layers(cfg["shortcut"], keras, x)
        return L.ReLU()(L.Add()([y, s]))
    raise TypeError(t)


def child_keras(spec, threads):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    c, h, w = spec["input"]
    inp = keras.Input((h, w, c))
    model = keras.Model(inp, _keras_layers(spec["config"], keras, inp))
    rec = spec["recipe"]
    opt = keras.optimizers.Adam(rec["lr"]) if rec["optimizer"] == "adam" else keras.optimizers.SGD(rec["lr"])
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def step(x, y):
        model.train_on_batch(x, y)

    def infer(x):
        return model.predict_on_batch(x)

    threads_txt = (f"tf intra={tf.config.threading.get_intra_op_parallelism_threads()} "
                   f"inter={tf.config.threading.get_inter_op_parallelism_threads()} "
                   f"(tf {tf.__version__}, keras {keras.__version__}, backend {keras.backend.backend()})")
    return dict(step=step, eval=lambda: None, infer=infer, channels_last=True, threads=threads_txt)


def _jax_model(cfg, jax, jnp, rng, c_in):
    """(init params list, apply(params, state, x, train) -> (y, state)) for NHWC input."""
    from jax import lax

    t = cfg["type"]
    if t == "Sequential":
        parts = [_jax_model(c, jax, jnp, rng, None) for c in cfg["layers"]]
        params = [p for p, _, _ in parts]
        states = [s for _, s, _ in parts]

        def apply(ps, ss, x, train):
            new = []
            for (_, _, f), p, s in zip(parts, ps, ss):
                x, s = f(p, s, x, train)
                new.append(s)
            return x, new

        return params, states, apply
    a = cfg.get("args", {})
    import numpy as np

    if t == "Conv2D":
        kh, kw = a["kernel_size"]
        s = tuple(a["stride"])
        pad = a["padding"]
        padding = "SAME" if pad == "same" else ("VALID" if pad == "valid" else [(pad[0], pad[0]), (pad[1], pad[1])])
        bound = 1 / np.sqrt(a["in_channels"] * kh * kw)
        p = {"w": jnp.asarray(rng.uniform(-bound, bound, (kh, kw, a["in_channels"], a["out_channels"])), jnp.float32)}
        if a["bias"]:
            p["b"] = jnp.zeros(a["out_channels"], jnp.float32)

        def apply(p, st, x, train):
            y = lax.conv_general_dilated(x, p["w"], s, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return (y + p["b"] if "b" in p else y), st

        return p, (), apply
    if t == "BatchNorm2D":
        n, eps, mom = a["num_features"], a["eps"], a["momentum"]
        p = {"g": jnp.ones(n, jnp.float32), "b": jnp.zeros(n, jnp.float32)}
        st = {"m": jnp.zeros(n, jnp.float32), "v": jnp.ones(n, jnp.float32)}

        def apply(p, st, x, train):
            if train:
                mean = x.mean(axis=(0, 1, 2))
                var = x.var(axis=(0, 1, 2))
                cnt = x.shape[0] * x.shape[1] * x.shape[2]
                st = {"m": (1 - mom) * st["m"] + mom * mean,
                      "v": (1 - mom) * st["v"] + mom * var * cnt / (cnt - 1)}
            else:
                mean, var = st["m"], st["v"]
            return (x - mean) * lax.rsqrt(var + eps) * p["g"] + p["b"], st

        return p, st, apply
    if t == "ReLU":
        return (), (), lambda p, st, x, train: (jnp.maximum(x, 0), st)
    if t in ("MaxPool2D", "AvgPool2D"):
        kh, kw = a["kernel_size"]
        sh, sw = a["stride"]

        def apply(p, st, x, train):
            if t == "MaxPool2D":
                return lax.reduce_window(x, -jnp.inf, lax.max, (1, kh, kw, 1), (1, sh, sw, 1), "VALID"), st
            return lax.reduce_window(x, 0.0, lax.add, (1, kh, kw, 1), (1, sh, sw, 1), "VALID") / (kh * kw), st

        return (), (), apply
    if t == "Flatten":
        return (), (), lambda p, st, x, train: (x.reshape(x.shape[0], -1), st)
    if t == "Dense":
        bound = 1 / np.sqrt(a["in_features"])
        p = {"w": jnp.asarray(rng.uniform(-bound, bound, (a["in_features"], a["out_features"])), jnp.float32)}
        if a["bias"]:
            p["b"] = jnp.zeros(a["out_features"], jnp.float32)
        return p, (), lambda p, st, x, train: ((x @ p["w"] + p["b"]) if "b" in p else x @ p["w"], st)
    if t == "Residual":
        pb, sb, fb = _jax_model(cfg["body"], jax, jnp, rng, None)
        psh, ssh, fsh = _jax_model(cfg["shortcut"], jax, jnp, rng, None)

        def apply(p, st, x, train):
            y, s0 = fb(p[0], st[0], x, train)
            z, s1 = fsh(p[1], st[1], x, train)
            return jnp.maximum(y + z, 0), (s0, s1)

        return (pb, psh), (sb, ssh), apply
    raise TypeError(t)


def child_jax(spec, threads):
    import jax
    import jax.numpy as jnp
    import numpy as np

    params, state, apply = _jax_model(spec["config"], jax, jnp, np.random.default_rng(0), None)
    rec = spec["recipe"]
    lr, adam = rec["lr"], rec["optimizer"] == "adam"
    b1, b2, eps = 0.9, 0.999, 1e-8

    def loss_fn(p, st, x, y):
        logits, st = apply(p, st, x, True)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), st

    @jax.jit
    def train_step(p, st, m, v, t, x, y):
        (_, st), g = jax.value_and_grad(loss_fn, has_aux=True)(p, st, x, y)
        if adam:
            t = t + 1
            m = jax.tree_util.tree_map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
            v = jax.tree_util.tree_map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
            lr_t = lr * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            p = jax.tree_util.tree_map(lambda a, mm, vv: a - lr_t * mm / (jnp.sqrt(vv) + eps), p, m, v)
        else:
            p = jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g)
        return p, st, m, v, t

    fwd = jax.jit(lambda p, st, x: apply(p, st, x, False)[0])
    box = {"p": params, "st": state, "m": jax.tree_util.tree_map(jnp.zeros_like, params),
           "v": jax.tree_util.tree_map(jnp.zeros_like, params), "t": jnp.float32(0)}

    def step(x, y):
        r = train_step(box["p"], box["st"], box["m"], box["v"], box["t"], x, y)
        box["p"], box["st"], box["m"], box["v"], box["t"] = r
        jax.block_until_ready(box["p"])

    def infer(x):
        return jax.block_until_ready(fwd(box["p"], box["st"], x))

    aff = len(os.sched_getaffinity(0))
    return dict(step=step, eval=lambda: None, infer=infer, channels_last=True,
                to=jnp.asarray, threads=f"affinity={aff} cores, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} "
                                       f"(jax {jax.__version__})")


def child(a):
    with open(a.spec) as f:
        spec = json.load(f)[a.model]
    spec["name"] = a.model
    fw = a.child
    if fw in ("numba", "cython"):
        h = child_fastcnn(fw, spec, a.threads)
    else:
        h = {"torch": child_torch, "keras": child_keras, "jax": child_jax}[fw](spec, a.threads)
    to = h.get("to", lambda v: v)
    warm, timed, reps = STEPS[a.model]
    bs = spec["recipe"]["batch_size"]
    batches = [(to(x), to(y)) for x, y in _data(spec, bs, 4, h["channels_last"])]
    steps, t = _time_train(h["step"], batches, warm, timed)
    h["eval"]()
    x = _data(spec, INFER_BATCH, 1, h["channels_last"], seed=1)[0][0]
    ti = _time_infer(h["infer"], to(x), reps)
    print(json.dumps({"train_ips": steps * bs / t, "infer_ips": INFER_BATCH / ti, "threads": h["threads"]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    ap.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
    else:
        parent(a)


if __name__ == "__main__":
    main()
