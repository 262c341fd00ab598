"""``parallel_kernel``: compile a kernel twice, parallel and serial, and pick by work size."""
import functools
import types

from numba import njit

from .. import _config


def parallel_kernel(fn=None, *, fma=False):
    """Decorator for a ``prange`` kernel whose first argument is its main array.

    Calls with fewer than ``_config.PAR_MIN_WORK`` elements in that array run the serial
    compilation (``prange`` as ``range``), the others the parallel one; both give the same
    bytes since every kernel is race-free and reduces in a fixed order.  ``fma=True``
    compiles with FMA contraction (``_config.NUMBA_PARALLEL_FMA``).
    """
    if fn is None:
        return functools.partial(parallel_kernel, fma=fma)
    par = njit(**(_config.NUMBA_PARALLEL_FMA if fma else _config.NUMBA_PARALLEL))(fn)
    # A copy with its own qualified name: Numba's on-disk cache is keyed by the function's
    # name and source line, so two compilations of one function would overwrite each other.
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    twin.__doc__ = fn.__doc__
    ser = njit(**(_config.NUMBA_SERIAL_FMA if fma else _config.NUMBA_SERIAL))(twin)

    @functools.wraps(fn)
    def call(*args):
        return (par if args[0].size >= _config.PAR_MIN_WORK else ser)(*args)

    call.parallel, call.serial = par, ser
    return call
