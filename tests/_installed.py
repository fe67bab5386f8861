"""Child processes that run the installed medens, never the checkout beside the tests.

A child started with the checkout as its folder (``python -m`` puts the folder first on ``sys.path``) or with the
checkout on ``PYTHONPATH`` imports the source tree, which has no compiled ``medens._C``: it would pass while
testing the reference ops alone. :func:`installed` gives the keyword arguments of :func:`subprocess.run` or
:class:`subprocess.Popen` for a child that runs in a folder outside the checkout, with the checkout taken off
``PYTHONPATH``, and that first checks (before it runs its target) that:

- ``medens`` is not imported from the checkout, unless medens is installed from it in editable mode (then the
  checkout's Python files are the installed ones and ``medens._C`` comes from the installation);
- the compiled backend loaded: ``medens.ops.available_backends()["cpp"]`` is True.

A failed check ends the child with exit status 1 and says why on stderr. The check imports torch before the
target runs, so a setting the target makes before it imports torch must come from the environment instead (the
test session sets ``OMP_WAIT_POLICY``, see the root conftest.py).

Use::

    result = subprocess.run(**installed("-m", "medens.data", "--json"), capture_output=True, text=True)
    ranks = subprocess.Popen(**installed("-m", "medens.train", "pretrain", *options, nproc=2))
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

#: The checkout these tests belong to.
CHECKOUT = Path(__file__).resolve().parents[1]

#: The child's entry point: ``python child.py CHECKOUT TESTS TARGET...`` where TARGET is ``-m MODULE ARGS...``,
#: ``-c CODE ARGS...`` or ``SCRIPT ARGS...`` (as after ``python``) and TESTS is 1 when the checkout's ``tests``
#: package must import.
_CHILD = '''\
"""Written by tests/_installed.py: check which medens this process imports, then run TARGET as python would."""
import json
import runpy
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse


def editable_install_of(checkout):
    from importlib import metadata

    try:
        text = metadata.distribution("medens").read_text("direct_url.json") or "{}"
    except metadata.PackageNotFoundError:
        return False
    info = json.loads(text)
    url = urlparse(info.get("url", ""))
    return bool(info.get("dir_info", {}).get("editable")) and Path(unquote(url.path)).resolve() == checkout


def check(checkout):
    import medens

    package = Path(medens.__file__).resolve().parent
    if package.is_relative_to(checkout) and not editable_install_of(checkout):
        sys.exit(f"test child: medens was imported from the checkout ({package}), not from the installed "
                 f"package; install it with `pip install .` (sys.path: {sys.path})")
    import medens.ops

    if not medens.ops.available_backends()["cpp"]:
        sys.exit(f"test child: the compiled backend of the medens at {package} did not load: "
                 f"{medens.ops.build_info().get('extension_error')}")


checkout, tests, *target = sys.argv[1:]
checkout = Path(checkout)
check(checkout)
if tests == "1":
    # After site-packages: `tests` imports from the checkout, medens stays the installed one (imported above).
    sys.path.append(str(checkout))
if target[0] == "-m":
    sys.argv = target[1:]
    runpy.run_module(target[1], run_name="__main__", alter_sys=True)
elif target[0] == "-c":
    sys.argv = ["-c", *target[2:]]
    exec(compile(target[1], "<string>", "exec"), {"__name__": "__main__"})
else:
    sys.argv = target
    runpy.run_path(target[0], run_name="__main__")
'''


@functools.cache
def _folder() -> Path:
    """The folder the children run in (one per test process, outside the checkout), holding the entry point."""
    folder = Path(tempfile.mkdtemp(prefix="medens-test-child-")).resolve()
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    if folder.is_relative_to(CHECKOUT):
        raise RuntimeError(f"the temporary folder {folder} is inside the checkout {CHECKOUT}; set TMPDIR elsewhere")
    (folder / "child.py").write_text(_CHILD)
    return folder


def _outside_checkout(entry: str) -> bool:
    return not Path(os.path.abspath(entry)).resolve().is_relative_to(CHECKOUT)


def installed(*target: str, nproc: int = 0, tests: bool = False, cwd: str | os.PathLike | None = None,
              **variables: str) -> dict:
    """Keyword arguments (``args``, ``cwd``, ``env``) of ``subprocess.run``/``Popen`` for a checked child.

    Args:
        target: what follows ``python`` on a command line: ``"-m", MODULE, ARGS...``, ``"-c", CODE, ARGS...`` or
            ``SCRIPT, ARGS...``.
        nproc: 0 for one process; otherwise that many ranks under ``torchrun --standalone``, each checked.
        tests: the child imports the checkout's ``tests`` package (a worker script that uses test helpers).
        cwd: the folder to run in, outside the checkout; by default one made for this test process.
        variables: environment variables to set, on top of this process's environment.

    Raises:
        ValueError: ``target`` is empty, ``nproc`` is negative or ``cwd`` is inside the checkout.
    """
    if not target:
        raise ValueError("target must name a module (-m MODULE ...), code (-c CODE) or a script; got nothing")
    if nproc < 0:
        raise ValueError(f"nproc must be 0 (one process) or a number of ranks; got {nproc}")
    if cwd is not None and not _outside_checkout(os.fspath(cwd)):
        raise ValueError(f"cwd must be a folder outside the checkout {CHECKOUT}; got {cwd}")
    folder = _folder()
    env = {**os.environ, **variables}
    kept = [entry for entry in env.pop("PYTHONPATH", "").split(os.pathsep) if entry and _outside_checkout(entry)]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(entry) for entry in kept)
    child = [str(folder / "child.py"), str(CHECKOUT), "1" if tests else "0", *map(str, target)]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc else []
    return {"args": [sys.executable, *launcher, *child], "cwd": str(cwd or folder), "env": env}
