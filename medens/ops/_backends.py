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
import warnings
from pathlib import Path
from types import ModuleType

import torch

import medens

logger = logging.getLogger(__name__)

BACKENDS = ("reference", "cpp", "cuda", "triton")
AUTO_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}


class MissingCompiledCoreWarning(RuntimeWarning):
    """medens runs without its compiled core: ``medens._C`` is not there (a source tree), only the reference runs."""


def _missing_core_message() -> str:
    package = Path(medens.__file__).resolve().parent
    root = package.parent
    if (root / "pyproject.toml").is_file() and (root / "CMakeLists.txt").is_file():
        how = (f"This is the source tree of a checkout ({root}), imported because Python runs from it or finds it "
               f"on PYTHONPATH. Build and install medens with `pip install .` in {root} (or `pip install -e .` "
               "for an editable install), then run from another folder, and run the tests with `pytest`, not "
               "`python -m pytest`.")
    else:
        how = "Reinstall medens (`pip install .` from its source) to build it."
    return (f"medens._C, the compiled core of medens, is missing from {package}: only the slow pure-PyTorch "
            f"reference backend will run. {how}")


@functools.cache
def extension() -> ModuleType | None:
    """``medens._C``, or None when it cannot be imported (said once per process).

    A missing module (a source tree, which has no build) warns with :class:`MissingCompiledCoreWarning`, shown by
    default; a module that is there but fails to load is logged.
    """
    try:
        return importlib.import_module("medens._C")
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name == "medens._C":
            warnings.warn(_missing_core_message(), MissingCompiledCoreWarning, stacklevel=2)
        else:
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
