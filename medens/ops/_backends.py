"""Which backends exist, which can run an input, and which one ``backend="auto"`` picks.

- ``reference``: pure PyTorch, every device.
- ``cpp``: C++/OpenMP kernels in ``medens._C``, CPU tensors.
- ``cuda``: CUDA kernels in ``medens._C`` (when it was built with a CUDA toolkit), CUDA tensors.
- ``triton``: Triton kernels in ``medens.kernels.triton``, CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1`` (the interpreter; slow but exact, used to test them without a GPU).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
from types import ModuleType

import torch

import medens

logger = logging.getLogger(__name__)

BACKENDS = ("reference", "cpp", "cuda", "triton")
AUTO_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}


@functools.cache
def extension() -> ModuleType | None:
    """``medens._C``, or None when it cannot be imported (the reason is logged once)."""
    try:
        return importlib.import_module("medens._C")
    except ImportError as error:
        logger.warning("medens._C could not be imported (%s); only the reference backend is available", error)
        return None


def extension_error() -> str | None:
    try:
        importlib.import_module("medens._C")
    except ImportError as error:
        return str(error)
    return None


@functools.cache
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cuda_compiled() -> bool:
    ext = extension()
    return bool(ext is not None and ext.build_info()["cuda_compiled"])


def build_info() -> dict:
    """How the package was built: ``version``, ``openmp``, ``cuda_compiled``, ``cuda_architectures`` and more."""
    ext = extension()
    info: dict = {
        "version": medens.__version__,
        "extension": ext is not None,
        "openmp": False,
        "cuda_compiled": False,
        "cuda_architectures": [],
    }
    if ext is None:
        info["extension_error"] = extension_error()
    else:
        compiled = dict(ext.build_info())
        compiled.pop("version", None)
        info.update(compiled)
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    if triton_importable():
        import triton

        info["triton"] = triton.__version__
    return info


def _why_unavailable(backend: str, device: torch.device | None) -> str | None:
    """None if ``backend`` can run on ``device`` (any device when None), else the reason."""
    if backend == "reference":
        return None
    if backend == "cpp":
        if extension() is None:
            return f"medens._C could not be imported ({extension_error()}); reinstall medens with `pip install .`"
        if device is not None and device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, got a tensor on {device}"
        return None
    if backend == "cuda":
        if not cuda_compiled():
            return "medens._C was built without CUDA (no CUDA toolkit at build time, or MEDENS_CUDA=OFF)"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        if device is not None and device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got a tensor on {device}"
        return None
    if backend == "triton":
        if not triton_importable():
            return "triton is not installed (pip install 'medens[triton]')"
        if device is None:
            return None if torch.cuda.is_available() or triton_interpreted() else (
                "triton needs a CUDA device, or TRITON_INTERPRET=1 to run on the CPU")
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpreted():
            return None
        return f"triton runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1; got a tensor on {device}"
    raise AssertionError(backend)


def available_backends() -> dict[str, bool]:
    """Which backends can run on this machine now (for some device)."""
    return {name: _why_unavailable(name, None) is None for name in BACKENDS}


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """The concrete backend that runs ``op`` on tensors on ``device``.

    ``torch.compile`` treats the answer as a constant of the graph instead of tracing the checks.

    Raises:
        ValueError: ``backend`` is not a backend name.
        RuntimeError: the requested backend cannot run here; the message says why.
    """
    return _resolve(backend, device.type, device.index, op)


@torch.compiler.assume_constant_result
def _resolve(backend: str, device_type: str, device_index: int | None, op: str) -> str:
    device = torch.device(device_type, device_index)
    if backend == "auto":
        for name in AUTO_ORDER.get(device.type, ("reference",)):
            if _why_unavailable(name, device) is None:
                return name
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    reason = _why_unavailable(backend, device)
    if reason is not None:
        raise RuntimeError(f"{op}: backend {backend!r} cannot run here: {reason}")
    return backend
