"""PyTorch "gold" twins of fastcnn models, with the same weights (tests only)."""
from fastcnn.interop import state_dict_from_torch as to_numpy_state  # noqa: F401
from fastcnn.interop import to_torch as torch_twin  # noqa: F401
