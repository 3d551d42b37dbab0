"""Input checks shared by the public API: each names the argument it rejects."""

from __future__ import annotations

import operator

import numpy as np
import torch


def check_count(name: str, value) -> int:
    """A positive int (numpy ints accepted, bools and floats rejected)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


def torch_device(value) -> torch.device:
    """``device`` as a torch.device; "cuda" with the index of the current GPU, which is what
    the device of every tensor made on it says (``cuda != cuda:0`` in torch)."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must name a torch device, got {value!r}") from exc
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def shape(name: str, value) -> tuple[int, ...]:
    """A shape given as an int or a sequence of positive ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    try:
        dims = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of ints, got {value!r}") from None
    return tuple(check_count(name, d) for d in dims)


def obs_dtype_of(value) -> np.dtype:
    """A stored observation dtype: native byte order, with a torch equivalent."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"obs_dtype must be a numpy dtype, got {value!r}") from None
    dtype = dtype.newbyteorder("=")  # inputs are cast to it; the core stores native bytes
    torch_dtype(dtype)
    return dtype


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype that holds numpy ``dtype`` without change."""
    try:
        return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    except TypeError:
        raise TypeError(f"obs_dtype {dtype} has no torch equivalent") from None


def _rows(name: str, value, lead: int | tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """``value`` as an array of shape ``(lead, *shape)``, or ``(*lead, *shape)`` for a tuple
    (a chunk of steps); with ``lead`` 1, ``shape`` alone is accepted too."""
    a = value if type(value) is np.ndarray else np.asarray(value)
    dims = (lead,) if type(lead) is int else lead
    if a.shape == (*dims, *shape):
        return a
    if lead == 1 and a.shape == shape:
        return a.reshape(1, *shape)
    want = f"({', '.join(map(str, (*dims, *shape)))})"
    alt = f" or {shape}" if lead == 1 else ""
    raise ValueError(f"{name} must have shape {want}{alt}, got {a.shape}")


# add() runs once per env step, so these do the least work when the input is already right.
# NaN and inf (also from a float64 -> float32 overflow, so callers silence numpy's overflow
# warning) are rejected by the core before it writes anything, naming the argument.
def as_obs(name: str, value, num_envs: int | tuple[int, ...], shape: tuple[int, ...],
           dtype: np.dtype) -> np.ndarray:
    """Observations cast to the stored dtype, refusing casts that could change values."""
    a = _rows(name, value, num_envs, shape)
    src = a.dtype
    if src != dtype:
        if src.kind in "biuf" and dtype.kind == "f":
            pass  # e.g. float64 -> float32 (MuJoCo obs): rounding; overflow to inf is rejected
        elif np.can_cast(src, dtype, "safe"):
            pass
        elif src.kind in "biu" and dtype.kind in "iu":
            info = np.iinfo(dtype)
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise ValueError(f"{name} has values outside the range of {dtype}")
        else:
            raise TypeError(f"{name} of dtype {src} cannot be stored safely as {dtype}")
        a = a.astype(dtype)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def as_float32(name: str, value, num_envs: int | tuple[int, ...],
               shape: tuple[int, ...]) -> np.ndarray:
    """Real numbers as float32 (actions, rewards)."""
    a = _rows(name, value, num_envs, shape)
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
        a = np.ascontiguousarray(a, dtype=np.float32)
    return a


def as_flags(name: str, value, num_envs: int | tuple[int, ...]) -> np.ndarray:
    """Booleans as uint8 0/1 (a bool array is passed through as its bytes); ints must be 0/1."""
    a = _rows(name, value, num_envs, ())
    if a.dtype == np.bool_:
        return a if a.flags.c_contiguous else np.ascontiguousarray(a)
    if a.dtype.kind in "iu" and ((a == 0) | (a == 1)).all():
        return np.ascontiguousarray(a, dtype=np.uint8)
    raise TypeError(f"{name} must be bool (or 0/1), got dtype {a.dtype}")


def check_choice(name: str, value, choices) -> None:
    """``value`` must be one of ``choices`` (an option given as a string)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
