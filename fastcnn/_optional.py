"""Optional dependencies: import them or fail with the one-line ``pip install`` to run."""
import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency of one feature is not installed."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` naming ``pip install "fastcnn[extra]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{feature} needs the '{module.split('.')[0]}' package: "
                           f"pip install \"fastcnn[{extra}]\"") from exc
