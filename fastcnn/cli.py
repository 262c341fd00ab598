"""The ``fastcnn`` command line: ``train``, ``evaluate``, ``info``."""
import argparse
import io
import json
import os
import platform
import sys

SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd", "avx512bw",
              "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd", "sve")


def cpu_simd_features():
    """SIMD features of this CPU, from /proc/cpuinfo (or numba's view of the host)."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return [f for f in SIMD_FLAGS if f in flags]


def _parser():
    from . import models

    p = argparse.ArgumentParser(prog="fastcnn", description="Fast CPU convolutional networks.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a seed-tutorial network on MNIST")
    t.add_argument("--model", choices=models.NAMES, default=None)
    t.add_argument("--epochs", type=int, default=None, help="default: 1")
    t.add_argument("--batch-size", type=int, default=None, help="default: the model's recipe")
    t.add_argument("--lr", type=float, default=None, help="default: the model's recipe")
    t.add_argument("--optimizer", choices=("sgd", "adam"), default=None, help="default: the model's recipe")
    t.add_argument("--backend", default=None, help="numpy, numba or cython (default: fastest available)")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--seed", type=int, default=None, help="default: 0")
    t.add_argument("--data-dir", default=None, help="MNIST directory (default: $FASTCNN_DATA)")
    t.add_argument("--download", action="store_true", help="download MNIST if missing")
    t.add_argument("--out", default="runs/latest", help="output directory (default: runs/latest)")
    t.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="write OUT/checkpoint.npz every N steps and after each epoch")
    t.add_argument("--resume", default=None, metavar="PATH", help="continue from a checkpoint")
    t.add_argument("--detect-anomaly", action="store_true",
                   help="check parameters and gradients for NaN/Inf after every step (slow)")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI: run as mpiexec -n K fastcnn train --distributed ... "
                        "(needs fastcnn[distributed]; --batch-size is the global batch)")
    t.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: BatchNorm statistics of the global batch (default: per rank)")
    e = sub.add_parser("evaluate", help="evaluate a checkpoint on the MNIST test split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data-dir", default=None)
    e.add_argument("--backend", default=None)
    e.add_argument("--threads", type=int, default=None)
    sub.add_parser("info", help="version, backends, threads, SIMD, OpenMP")
    return p


def _setup(args, comm=None):
    import fastcnn
    from ._config import env_threads

    if getattr(args, "backend", None):
        fastcnn.set_backend(args.backend)
    if getattr(args, "threads", None) is not None:
        fastcnn.set_num_threads(args.threads)
    elif comm is not None and env_threads() is None:  # the host's cores shared among its ranks
        from . import distributed

        fastcnn.set_num_threads(distributed.default_threads(comm))
    else:
        fastcnn.get_num_threads()


def cmd_info(args):
    import numpy as np

    import fastcnn

    print(f"fastcnn {fastcnn.__version__}")
    print(f"python {platform.python_version()} on {platform.machine()} {platform.system()}")
    print(f"backends: {', '.join(fastcnn.available_backends())} (active: {fastcnn.get_backend()})")
    for name in ("numba", "cython"):
        err = fastcnn._backend.backend_error(name)
        if err is not None:
            print(f"  {name} unavailable: {err}")
    print(f"threads: {fastcnn.get_num_threads()} (cores available: {fastcnn._threads.max_threads()})")
    print(f"convolution: {fastcnn._threads.conv_path_description()}")
    try:
        from ._ext import _omp

        print(f"openmp: {'yes' if _omp.OPENMP else 'no'} (max threads {_omp.get_max_threads()})")
        print(f"compiled with: {_omp.COMPILE_ARGS}")
        extra = getattr(_omp, "BUILD_INFO", None)
        if extra:
            print(f"build: {extra}")
    except ImportError:
        print("openmp: unknown (Cython extension not compiled)")
    try:
        import numba

        layer = numba.config.THREADING_LAYER
        if "numba" in fastcnn.available_backends():
            try:
                fastcnn._backend.ops("numba").relu_forward(*([np.zeros(1 << 15, np.float32)] * 2))
                layer = numba.threading_layer()  # known once a parallel kernel has run
            except Exception:  # pragma: no cover - informational only
                pass
        print(f"numba {numba.__version__}, threading layer: {layer}")
    except ImportError:
        pass
    from threadpoolctl import threadpool_info

    for lib in threadpool_info():
        print(f"{lib['user_api']}: {lib['internal_api']} {lib.get('version')} "
              f"({lib.get('architecture')}, {lib['num_threads']} threads)")
    print(f"cpu simd: {' '.join(cpu_simd_features()) or 'none detected'}")
    return 0


def _plot(history, test_acc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .model import atomic_write

    loss = np.asarray(history["loss"])
    acc = np.asarray(history["accuracy"])
    win = max(1, min(len(loss) // 50, 1000))
    kernel = np.ones(win) / win
    steps = np.arange(len(loss))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(steps, loss, alpha=0.25, lw=0.5, label="per step")
    if len(loss) >= win:
        a1.plot(steps[win - 1:], np.convolve(loss, kernel, "valid"), label=f"mean of {win}")
    a1.set_xlabel("step")
    a1.set_ylabel("training loss")
    a1.set_yscale("log")
    a1.legend()
    if len(acc) >= win:
        a2.plot(steps[win - 1:], np.convolve(acc, kernel, "valid"), label=f"training (mean of {win})")
    a2.axhline(test_acc, color="C3", ls="--", label=f"test {test_acc:.4f}")
    a2.set_xlabel("step")
    a2.set_ylabel("accuracy")
    a2.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def cmd_train(args):
    import signal

    import numpy as np
    from tqdm import tqdm

    import fastcnn
    from . import data, models
    from .model import atomic_write
    from .train import (Interrupted, SignalFlag, _StepState, evaluate, load_checkpoint, make_optimizer,
                        save_checkpoint, train_epoch)

    for name, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--limit", args.limit, 1), ("--checkpoint-every", args.checkpoint_every, 1)):
        if value is not None and value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.sync_bn and not args.distributed:
        raise ValueError("--sync-bn needs --distributed")
    comm = dist = None
    if args.distributed:
        from . import distributed

        comm = distributed.world()
        dist = distributed.DistributedCallback(comm, sync_bn=args.sync_bn)
    rank0 = comm is None or comm.Get_rank() == 0
    log = sys.stderr if rank0 else io.StringIO()  # only rank 0 prints and writes files
    _setup(args, comm)
    if args.resume:
        model, opt_state, state, history = load_checkpoint(args.resume)
        for key, given in (("model", args.model), ("batch_size", args.batch_size), ("lr", args.lr),
                           ("optimizer", args.optimizer), ("seed", args.seed), ("limit", args.limit)):
            if given is not None and given != state[key]:
                raise ValueError(f"--resume: checkpoint has {key} {state[key]!r}, the command line says {given!r}")
        if args.epochs is not None:
            state["epochs"] = args.epochs
        optimizer = make_optimizer(state["optimizer"], model.parameters(), state["lr"])
        optimizer.load_state_dict(opt_state)
    else:
        if args.model is None:
            raise ValueError("--model is required (or --resume CHECKPOINT)")
        recipe = models.RECIPES[args.model]
        state = {
            "model": args.model, "seed": args.seed if args.seed is not None else 0,
            "batch_size": args.batch_size or recipe["batch_size"], "lr": args.lr or recipe["lr"],
            "optimizer": args.optimizer or recipe["optimizer"], "epochs": args.epochs or 1, "limit": args.limit,
            "epoch": 0, "step": 0, "epoch_seconds": [], "images_seen": 0, "seconds": 0.0,
        }
        model = models.build(state["model"], seed=state["seed"], in_channels=1)
        optimizer = make_optimizer(state["optimizer"], model.parameters(), state["lr"])
        history = {}
    if comm is not None and comm.Get_size() > state["batch_size"]:
        raise ValueError(f"--batch-size {state['batch_size']} (the global batch) is smaller than the "
                         f"{comm.Get_size()} ranks")
    download = args.download
    if comm is not None and download:  # one download per host, then everyone reads
        if distributed.local_rank(comm) == 0:
            data.load_mnist(args.data_dir, "train", download=True)
            data.load_mnist(args.data_dir, "test", download=True)
        comm.Barrier()
        download = False
    train_x, train_y = data.load_mnist(args.data_dir, "train", download=download)
    test_x, test_y = data.load_mnist(args.data_dir, "test", download=download)
    if state["limit"]:
        train_x, train_y = train_x[:state["limit"]], train_y[:state["limit"]]
    backend, threads = fastcnn.get_backend(), fastcnn.get_num_threads()
    state["backend"], state["threads"] = backend, threads
    fastcnn.warmup(backend)
    input_size = models.INPUT_SIZE[state["model"]]
    if rank0:
        os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "checkpoint.npz")
    ranks = comm.Get_size() if comm is not None else 1
    if dist is not None:
        state["ranks"] = ranks
        dist.on_train_begin(_StepState(model, optimizer))
    print(f"training {state['model']} on {len(train_y)} images: {state['optimizer']} lr {state['lr']}, "
          f"batch {state['batch_size']}, {state['epochs']} epoch(s), backend {backend}, {threads} thread(s)"
          + (f", {ranks} MPI ranks (batch {state['batch_size']} split among them"
             f"{', synchronised BatchNorm' if args.sync_bn else ''})" if dist is not None else "")
          + (f", resuming at epoch {state['epoch'] + 1} step {state['step']}" if args.resume else ""),
          file=log)
    with SignalFlag() as flag:
        def on_step(step):
            state["step"] = step + 1
            done = state["images_seen"] + seen_in_epoch(step)
            if flag.signum is not None or (dist is not None and dist.stop):  # all ranks at the same step
                state["partial_images"] = done - state["images_seen"]
                if rank0:
                    save_checkpoint(ckpt, model, optimizer, state, history)
                raise Interrupted(flag.signum or signal.SIGTERM, ckpt)
            if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and rank0:
                save_checkpoint(ckpt, model, optimizer, state, history)

        def seen_in_epoch(step):
            return min((step + 1) * state["batch_size"], len(train_y))

        while state["epoch"] < state["epochs"]:
            epoch = state["epoch"]
            with tqdm(total=len(train_y), desc=f"epoch {epoch + 1}/{state['epochs']}", unit="img",
                      mininterval=0.5, disable=args.no_progress or not rank0, file=sys.stderr) as bar:
                seen, seconds = train_epoch(model, optimizer, train_x, train_y, batch_size=state["batch_size"],
                                            seed=state["seed"], epoch=epoch, start_step=state["step"],
                                            input_size=input_size, progress=bar, on_step=on_step,
                                            history=history, detect_anomaly=args.detect_anomaly, dist=dist,
                                            stop_requested=lambda: flag.signum is not None)
            state["epoch_seconds"].append(seconds)
            state["images_seen"] += seen
            state["seconds"] += seconds
            state["epoch"], state["step"] = epoch + 1, 0
            if args.checkpoint_every and rank0:
                save_checkpoint(ckpt, model, optimizer, state, history)
    if comm is not None:
        test_acc, test_loss = distributed.evaluate(model, test_x, test_y, comm, input_size=input_size)
    else:
        test_acc, test_loss = evaluate(model, test_x, test_y, input_size=input_size)
    metrics = {
        "model": state["model"], "test_accuracy": test_acc, "test_loss": test_loss,
        "epoch_seconds": state["epoch_seconds"],
        "train_images_per_second": state["images_seen"] / max(state["seconds"], 1e-9),
        "backend": backend, "threads": threads, "epochs": state["epochs"], "batch_size": state["batch_size"],
        "lr": state["lr"], "optimizer": state["optimizer"], "seed": state["seed"],
        "train_images": int(len(train_y)), "resumed": bool(args.resume),
        "final_train_loss": float(np.mean(history["loss"][-100:])) if history.get("loss") else None,
        "fastcnn_version": fastcnn.__version__, "ranks": ranks,
    }
    if not rank0:
        return 0
    model.save(os.path.join(args.out, "model.npz"),
               metadata={k: metrics[k] for k in ("model", "test_accuracy", "seed")})
    atomic_write(os.path.join(args.out, "metrics.json"),
                 lambda f: f.write(json.dumps(metrics, indent=2).encode() + b"\n"))
    _plot(history, test_acc, os.path.join(args.out, "curves.png"))
    print(f"epoch seconds: {', '.join(f'{s:.1f}' for s in state['epoch_seconds'])}; "
          f"{metrics['train_images_per_second']:.0f} images/s; wrote {args.out}", file=sys.stderr)
    print(f"test accuracy: {test_acc:.4f}")
    return 0


def cmd_evaluate(args):
    import fastcnn
    from . import data, models
    from .train import evaluate

    _setup(args)
    model, meta = fastcnn.load(args.checkpoint, return_metadata=True)
    test_x, test_y = data.load_mnist(args.data_dir, "test")
    size = models.INPUT_SIZE.get(meta.get("model"), 28)
    acc, loss = evaluate(model, test_x, test_y, input_size=size)
    print(f"test loss: {loss:.4f}", file=sys.stderr)
    print(f"test accuracy: {acc:.4f}")
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    if getattr(args, "distributed", False):
        return _main_distributed(args)
    return _run(args)


def _main_distributed(args):
    """One rank of ``mpiexec -n K fastcnn train --distributed``: any error or interruption on
    this rank ends every rank (``MPI_Abort``) with a message naming the rank, never a hang."""
    from .train import Interrupted

    try:
        from . import distributed

        comm = distributed.world()
    except ImportError as exc:
        print(f"fastcnn: error: {exc}", file=sys.stderr)
        return 1
    try:
        with distributed.abort_on_error(comm, passthrough=(Interrupted,)):
            return cmd_train(args)
    except Interrupted as exc:  # every rank stopped at the same step; rank 0 saved
        if comm.Get_rank() == 0:
            print(f"fastcnn: {exc}", file=sys.stderr)
        return 128 + exc.signum


def _run(args):
    from .train import Interrupted, NonFiniteLoss

    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "info": cmd_info}[args.command](args)
    except Interrupted as exc:
        print(f"fastcnn: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except NonFiniteLoss as exc:
        keep = " (the last checkpoint, if any, is kept)" if getattr(args, "checkpoint_every", None) else ""
        print(f"fastcnn: error: {exc}; training stopped{keep}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastcnn: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, non-zero exit
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"fastcnn: error: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
