"""The ``fastcnn`` command line: ``train``, ``evaluate``, ``summary``, ``visualize``, ``export``,
``predict``, ``info``."""
from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import _run

SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd", "avx512bw",
              "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd", "sve")


def cpu_simd_features() -> list[str]:
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


def _parser() -> argparse.ArgumentParser:
    from . import augment, data, models, train

    p = argparse.ArgumentParser(prog="fastcnn", description="Fast CPU convolutional networks.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a seed-tutorial network on MNIST, Fashion-MNIST or CIFAR-10")
    t.add_argument("--model", choices=models.NAMES, default=None)
    t.add_argument("--dataset", choices=data.DATASETS, default=None, help="default: mnist")
    t.add_argument("--epochs", type=int, default=None, help="default: 1")
    t.add_argument("--batch-size", type=int, default=None, help="default: the model's recipe")
    t.add_argument("--lr", type=float, default=None, help="default: the model's recipe")
    t.add_argument("--optimizer", choices=train.OPTIMIZERS, default=None, help="default: the model's recipe")
    t.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0)")
    t.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum (SGD)")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="L2 (sgd, adam) or decoupled (adamw) weight decay (default: torch's, 0 / 0.01)")
    t.add_argument("--schedule", choices=("none", "step", "multistep", "cosine"), default=None,
                   help="learning-rate schedule over epochs (default: the recipe's; resnet on cifar10: "
                        "step, /3 every 20 epochs)")
    t.add_argument("--step-size", type=int, default=None, help="step schedule: epochs per decay (default 20)")
    t.add_argument("--gamma", type=float, default=None, help="step/multistep factor (default 0.1; recipe 1/3)")
    t.add_argument("--milestones", default=None, help="multistep: comma-separated epochs, e.g. 30,60")
    t.add_argument("--min-lr", type=float, default=None, help="cosine: final learning rate (default 0)")
    t.add_argument("--warmup", type=int, default=None, metavar="EPOCHS",
                   help="linear warm-up over EPOCHS epochs, chained with the schedule")
    t.add_argument("--warmup-factor", type=float, default=None, help="warm-up start factor (default 0.1)")
    t.add_argument("--augment", choices=tuple(augment.RECIPES), default=None,
                   help="crop: pad 4 + random crop 32 + flip; tutorial: resize 40 + random crop 32 + "
                        "flip (default: the recipe's; resnet on cifar10: tutorial)")
    t.add_argument("--normalize", action="store_true", default=None,
                   help="per-channel normalisation with the training images' mean and std")
    t.add_argument("--backend", default=None, help="numpy, numba or cython (default: fastest available)")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--seed", type=int, default=None, help="default: 0")
    t.add_argument("--data-dir", default=None,
                   help="data root: a dataset's directory, or a parent of mnist/, fashion-mnist/, cifar10/ "
                        "(default: $FASTCNN_DATA, then ~/.cache/fastcnn/<dataset>)")
    t.add_argument("--download", action="store_true", help="download the dataset if missing")
    t.add_argument("--test-file", default=None,
                   help="cifar10: read this test file instead of test_batch.bin (e.g. a partial test set)")
    t.add_argument("--out", default="runs/latest", help="output directory (default: runs/latest)")
    t.add_argument("--limit", type=int, default=None, help="use the first N training images only")
    t.add_argument("--val-split", type=int, default=None, metavar="N",
                   help="hold out the last N training images as a validation set, evaluated every epoch")
    t.add_argument("--early-stop", type=int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation accuracy")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    t.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="write OUT/checkpoint.npz every N steps and after each epoch")
    t.add_argument("--resume", default=None, metavar="PATH", help="continue from a checkpoint")
    t.add_argument("--detect-anomaly", action="store_true",
                   help="check parameters and gradients for NaN/Inf after every step (slow)")
    t.add_argument("--tensorboard", default=None, metavar="DIR",
                   help='write TensorBoard event files to DIR (needs pip install "fastcnn[tensorboard]")')
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI: run as mpiexec -n K fastcnn train --distributed ... "
                        "(needs fastcnn[distributed]; --batch-size is the global batch)")
    t.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: BatchNorm statistics of the global batch (default: per rank)")
    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a test split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", choices=data.DATASETS, default=None, help="default: the checkpoint's")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--test-file", default=None, help="cifar10: test file to read instead of test_batch.bin")
    e.add_argument("--backend", default=None)
    e.add_argument("--threads", type=int, default=None)
    x = sub.add_parser("export", help="export a checkpoint to ONNX or safetensors")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--format", choices=("onnx", "safetensors"), required=True)
    x.add_argument("--out", required=True, help="output file")
    x.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="per-sample input shape (default: from the checkpoint)")
    r = sub.add_parser("predict", help="classify image files (PNG/JPEG) with a checkpoint")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("images", nargs="+", metavar="FILE_OR_DIR")
    r.add_argument("--top-k", type=int, default=3, help="classes shown per image (default: 3)")
    r.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--backend", default=None)
    r.add_argument("--threads", type=int, default=None)
    sub.add_parser("info", help="version, backends, threads, SIMD, OpenMP")
    s = sub.add_parser("summary", help="layers, output shapes, parameters, MACs, activation memory")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", choices=models.NAMES)
    src.add_argument("--checkpoint", metavar="PATH")
    s.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="one image's shape (default: the seed model's input)")
    s.add_argument("--batch-size", type=int, default=None, help="for per-batch totals (default: the recipe's)")
    v = sub.add_parser("visualize", help="feature maps, deconvnet projections and filters of a checkpoint")
    v.add_argument("--checkpoint", required=True, metavar="PATH")
    v.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or cifar10 (default: mnist)")
    v.add_argument("--data-dir", default=None)
    v.add_argument("--index", type=int, default=0, help="test image index (default: 0)")
    v.add_argument("--out", required=True, metavar="DIR")
    v.add_argument("--project", action="store_true",
                   help="deconvnet projection of the strongest activations of --layer to pixel space")
    v.add_argument("--layer", default=None, help="convolution layer to project (name, e.g. 3; default: the last)")
    v.add_argument("--top", type=int, default=9, help="how many channels to project (default: 9)")
    v.add_argument("--filters", action="store_true", help="also draw the first layer's kernels")
    v.add_argument("--backend", default=None)
    v.add_argument("--threads", type=int, default=None)
    return p


def _setup(args: argparse.Namespace, comm: Any = None) -> None:
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


def cmd_info(args: argparse.Namespace) -> int:
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
    print(f"convolution: strategy {fastcnn.get_config()['conv']!r} (fastcnn.config); "
          f"direct kernels: {fastcnn._dispatch.conv_isa()}; im2col paths: "
          f"{fastcnn._threads.conv_path_description()}")
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
        isa = fastcnn._config.NUMBA_ISA
        print(f"numba target: {isa['isa']} ({isa['why']}; NUMBA_CPU_NAME={numba.config.CPU_NAME}, "
              f"-prefer-256-bit={'yes' if '-prefer-256-bit' in (numba.config.CPU_FEATURES or '') else 'no'})")
        cache = fastcnn._config.NUMBA_CACHE
        print(f"numba cache: {cache['dir'] or 'none'} ({cache['why']})")
    except ImportError:
        pass
    from threadpoolctl import threadpool_info

    for lib in threadpool_info():
        print(f"{lib['user_api']}: {lib['internal_api']} {lib.get('version')} "
              f"({lib.get('architecture')}, {lib['num_threads']} threads)")
    print(f"cpu simd: {' '.join(cpu_simd_features()) or 'none detected'}")
    print(f"heap: {fastcnn._heap.state}; large arrays kept for reuse: {fastcnn._heap.array_cache} (FASTCNN_HEAP)")
    return 0


# --------------------------------------------------------------------------- train

def cmd_train(args: argparse.Namespace, comm: Any = None) -> int:
    """``fastcnn train``: the flags as :class:`fastcnn._run.Settings`, then :func:`fastcnn._run.run`.
    ``comm``: one rank of ``--distributed`` (only rank 0 touches --out)."""
    from contextlib import nullcontext

    from . import _run
    from ._runio import claim_output_dir

    _check_args(args)  # (a bad flag creates nothing)
    with nullcontext() if comm is not None and comm.Get_rank() != 0 else claim_output_dir(args.out):
        _setup(args, comm)
        settings, resumed = _resume_settings(args) if args.resume else (_new_settings(args), None)
        return _run.run(settings, args.out, resumed=resumed, data_dir=args.data_dir, download=args.download,
                        checkpoint_every=args.checkpoint_every, detect_anomaly=args.detect_anomaly,
                        tensorboard=args.tensorboard, progress=not args.no_progress, comm=comm,
                        sync_bn=args.sync_bn)


def _check_args(args: argparse.Namespace) -> None:
    for name, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--limit", args.limit, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                             ("--val-split", args.val_split, 0), ("--early-stop", args.early_stop, 1),
                             ("--step-size", args.step_size, 1), ("--warmup", args.warmup, 1)):
        if value is not None and value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    for name, value in (("--lr", args.lr), ("--gamma", args.gamma), ("--warmup-factor", args.warmup_factor)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if args.early_stop and not args.val_split and not args.resume:
        raise ValueError("--early-stop needs a validation set: add --val-split N")
    if args.sync_bn and not args.distributed:
        raise ValueError("--sync-bn needs --distributed")


def _new_settings(args: argparse.Namespace) -> _run.Settings:
    """A new run: the model's recipe on the dataset, overridden by the flags."""
    from . import models
    from ._run import Settings

    if args.model is None:
        raise ValueError("--model is required (or --resume CHECKPOINT)")
    dataset = args.dataset or "mnist"
    r = models.recipe(args.model, dataset)
    return Settings(
        model=args.model, dataset=dataset, seed=args.seed if args.seed is not None else 0,
        batch_size=args.batch_size or r["batch_size"], lr=args.lr or r["lr"],
        optimizer=args.optimizer or r["optimizer"], momentum=args.momentum or 0.0,
        nesterov=bool(args.nesterov), weight_decay=args.weight_decay, epochs=args.epochs or 1, limit=args.limit,
        val_split=args.val_split or 0, early_stop=args.early_stop, augment=args.augment or r["augment"],
        normalize=bool(args.normalize), test_file=args.test_file,
        schedule=_schedule(args, args.schedule or r["schedule"], r),
    )


def _schedule(args: argparse.Namespace, kind: str, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """The learning-rate schedule flags as a :meth:`fastcnn.optim.Schedule.config` (None: constant)."""
    from . import optim

    s: optim.Schedule | None = None
    if kind == "step":
        step = args.step_size or recipe.get("step_size", 20)
        gamma = args.gamma if args.gamma is not None else recipe.get("gamma", 0.1)
        s = optim.StepLR(step, gamma)
    elif kind == "multistep":
        if not args.milestones:
            raise ValueError("--schedule multistep needs --milestones, e.g. --milestones 30,60")
        try:
            ms = [int(v) for v in args.milestones.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--milestones must be comma-separated integers, got {args.milestones!r}") from None
        s = optim.MultiStepLR(ms, args.gamma if args.gamma is not None else 0.1)
    elif kind == "cosine":
        s = optim.CosineAnnealingLR(args.epochs or 1, args.min_lr or 0.0)
    if args.warmup:
        w = optim.LinearLR(args.warmup_factor or 0.1, 1.0, args.warmup)
        s = w if s is None else optim.Chained(w, s)
    return None if s is None else s.config()


def _resume_settings(args: argparse.Namespace) -> tuple[_run.Settings, _run.Resumed]:
    """``--resume``: the checkpoint's settings (flags that contradict them are refused; --epochs
    may extend the run) and what the run continues from."""
    import dataclasses

    from . import _run

    settings, resumed = _run.resume(args.resume)
    for key in _run.RESUME_CHECKED:
        given, saved = getattr(args, key, None), getattr(settings, key)
        if given is not None and given != saved:
            raise ValueError(f"--resume: checkpoint has {key} {saved!r}, the command line says {given!r}")
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    return settings, resumed



def cmd_evaluate(args: argparse.Namespace) -> int:
    import functools

    import fastcnn

    from . import data
    from .predict import normalize, preprocess_info
    from .train import evaluate

    _setup(args)
    model, meta = fastcnn.load(args.checkpoint, return_metadata=True)
    pre = preprocess_info(meta)
    dataset = args.dataset or pre["dataset"]
    kw = {"test_file": args.test_file} if args.test_file else {}
    test_x, test_y = data.load_dataset(dataset, args.data_dir, "test", **kw)
    acc, loss = evaluate(model, test_x, test_y, preprocess=functools.partial(normalize, prep=pre))
    print(f"test loss: {loss:.4f} ({len(test_y)} images)", file=sys.stderr)
    print(f"test accuracy: {acc:.4f}")
    return 0


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"{what} must be integers separated by commas, got {text!r}") from None


def cmd_summary(args: argparse.Namespace) -> int:
    import fastcnn

    from . import models
    from ._summary import summary

    name = args.model
    if args.checkpoint:
        model, meta = fastcnn.load(args.checkpoint, return_metadata=True)
        name = meta.get("model")
    else:
        model = models.build(name)
    if args.input_shape:
        shape = _ints(args.input_shape, "--input-shape")
    elif name in models.INPUT_SIZE:
        first = next((p for p in model.parameters() if p.data.ndim == 4), None)
        size = models.INPUT_SIZE[name]
        shape = (first.data.shape[1] if first is not None else 1, size, size)
    else:
        raise ValueError("the checkpoint does not name a seed model: give --input-shape C,H,W")
    batch = args.batch_size or models.RECIPES.get(name, {}).get("batch_size", 1)
    print(summary(model, shape, batch_size=batch))
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from . import viz

    _setup(args)
    written = viz.visualize_checkpoint(args.checkpoint, args.out, dataset=args.dataset, data_dir=args.data_dir,
                                       index=args.index, project=args.project, layer=args.layer, top=args.top,
                                       filters=args.filters)
    for path in written:
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import fastcnn

    from .export import to_onnx, to_safetensors
    from .predict import preprocess_info

    model, meta = fastcnn.load(args.checkpoint, return_metadata=True)
    if args.format == "safetensors":
        to_safetensors(model, args.out, meta)
    else:
        if args.input_shape:
            shape = _ints(args.input_shape, "--input-shape")
        else:
            prep = preprocess_info(meta)
            shape = tuple(prep["input_shape"])
            if prep.get("pad_to"):
                shape = shape[:1] + (prep["pad_to"],) * 2
        to_onnx(model, args.out, None if isinstance(model, fastcnn.graph.Model) and not args.input_shape else shape)
    print(f"wrote {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import fastcnn

    from .predict import predict_files

    if args.top_k < 1 or args.batch_size < 1:
        raise ValueError("--top-k and --batch-size must be >= 1")
    _setup(args)
    model, meta = fastcnn.load(args.checkpoint, return_metadata=True)
    results = predict_files(model, meta, args.images, top_k=args.top_k, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['file']}: " + ", ".join(f"{t['class']} {t['probability']:.4f}" for t in r["top"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .train import Interrupted, NonFiniteLoss

    args = _parser().parse_args(argv)
    if getattr(args, "distributed", False):
        return _main_distributed(args)
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "info": cmd_info, "summary": cmd_summary,
                "visualize": cmd_visualize, "export": cmd_export, "predict": cmd_predict}[args.command](args)
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


def _main_distributed(args: argparse.Namespace) -> int:
    """One rank of ``mpiexec -n K fastcnn train --distributed``: any error on this rank ends
    every rank (``MPI_Abort``) with a message naming the rank, never a hang.  A signal
    during training stops every rank after the same step (rank 0 saves the checkpoint) and
    all exit 128 + the signal number; one after training, once model.npz is written, ends
    the job at once."""
    from .train import Interrupted

    try:
        from . import distributed

        comm = distributed.world()
    except ImportError as exc:
        print(f"fastcnn: error: {exc}", file=sys.stderr)
        return 1
    try:
        with distributed.abort_on_error(comm, passthrough=(Interrupted,)):
            return cmd_train(args, comm)
    except Interrupted as exc:
        if not exc.resumable:  # the ranks may be at different points: end them all
            distributed.abort(comm, str(exc), code=128 + exc.signum)
        if comm.Get_rank() == 0:
            print(f"fastcnn: {exc}", file=sys.stderr)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
