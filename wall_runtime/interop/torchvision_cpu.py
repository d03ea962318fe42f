"""Make ``import torchvision`` work on a CPU-only torch whose torchvision wheel is a CUDA build.

The torchvision wheels on PyPI for Linux x86-64 are built against the CUDA torch: their compiled
ops (``torchvision/_C.so``) link ``libtorch_cuda.so`` and do not load next to a CPU torch. That is
a state torchvision itself tolerates (``torchvision.extension._has_ops()`` turns False and each op
raises a clear error when called), except for two fake-tensor registrations in
``torchvision/_meta_registrations.py`` (``nms`` and ``qnms``) that are not guarded and make the
whole import fail with "operator torchvision::nms does not exist".

LeRobot's dataset reader and robot classes only use torchvision's Python parts (transforms, the
PyAV video reader), never those ops. So, when — and only when — the compiled ops cannot be
loaded, this module declares the two operator schemas (no kernels) before torchvision imports:
its registrations then succeed, and calling ``nms`` still fails loudly, as it should without ops.

``install()`` adds an import hook, so nothing (not even torch) is imported until something imports
torchvision. ``scripts/setup.sh`` copies this file into the virtual environment's site-packages as
``wall_runtime_torchvision_cpu.py`` with a ``.pth`` line that installs it, so every process in
that environment (``lerobot-calibrate``, transformers' image processors) gets it, whichever
checkout ``wall_runtime`` resolves to. It needs nothing but the standard library and, lazily, torch.
Code of ours that imports LeRobot also calls ``install()``, so it works without the ``.pth`` too.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path
from typing import Any

# torchvision's own schemas for the two ops it registers fake kernels for without a guard
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: Any = None  # the torch.library.Library holding the schemas; must stay alive
_state: dict[str, Any] = {"checked": False, "declared": False, "reason": ""}


def compiled_ops_load(package_dir: Path) -> tuple[bool, str]:
    """Whether torchvision's compiled ops load against the installed torch (and why not)."""
    import torch

    candidates = sorted(package_dir.glob("_C*.so"))
    if not candidates:
        return False, f"no compiled ops in {package_dir}"
    try:
        torch.ops.load_library(str(candidates[0]))
    except (OSError, ImportError) as exc:
        return False, str(exc).splitlines()[-1].strip() or type(exc).__name__
    return True, ""


def declare_missing_ops(package_dir: Path) -> bool:
    """Declare the ``torchvision::nms``/``qnms`` schemas if the compiled ops do not load.
    Returns True when it declared them. Safe to call more than once."""
    global _library
    if _state["checked"]:
        return bool(_state["declared"])
    _state["checked"] = True
    ok, reason = compiled_ops_load(package_dir)
    if ok:
        return False
    import torch

    try:  # already declared (by another copy of this hook): nothing to do
        torch.ops.torchvision.nms  # noqa: B018
        _state.update(declared=True, reason=reason)
        return True
    except (AttributeError, RuntimeError):
        pass
    _library = torch.library.Library("torchvision", "DEF")  # schemas only, no kernels
    for schema in _SCHEMAS.values():
        _library.define(schema)
    _state.update(declared=True, reason=reason)
    return True


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Runs :func:`declare_missing_ops` just before torchvision is first imported; finds nothing
    itself, so the ordinary finders import torchvision as usual."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname != "torchvision" or _state["checked"]:
            return None
        spec = importlib.machinery.PathFinder.find_spec("torchvision")
        if spec is not None and spec.submodule_search_locations:
            declare_missing_ops(Path(next(iter(spec.submodule_search_locations))))
        return None


def install() -> None:
    """Add the import hook (once). If torchvision is already imported, this is too late and does
    nothing: the import has either worked or failed by then."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionHook())


def status() -> dict[str, Any]:
    """What the hook found: whether it checked, declared the schemas, and why the ops did not load."""
    return dict(_state)
