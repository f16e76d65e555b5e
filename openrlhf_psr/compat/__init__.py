"""CPU compatibility for upstream OpenRLHF: apply ``patches/`` to its modules as they are imported, only without CUDA.

Why an import hook, installed from a ``.pth`` file:
OpenRLHF starts processes of its own (the DeepSpeed launcher's workers, Ray actors, vLLM's engine core) that import
``openrlhf.*`` before any of our code could run; an explicit call at each of our entry points would miss them. A
``.pth`` in the environment's site-packages runs at every interpreter start of that environment, so
``openrlhf_psr.compat.autoload`` puts a meta-path finder in place everywhere. The finder is cheap (no torch import)
and only acts when one of the patched modules is imported: then it decides, once, whether CUDA is absent, and if so
compiles the module from its source with the patch applied. site-packages is never modified, and on a GPU machine
the hook is a no-op. Our own entry points also call :func:`install`, for environments without the ``.pth`` (for
example a Ray ``working_dir`` on a cluster).

``OPENRLHF_PSR_COMPAT`` overrides the decision: ``auto`` (default: patch when CUDA is absent), ``on``, ``off``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PATCH_DIR = Path(__file__).parent / "patches"
UPSTREAM = "openrlhf"
UPSTREAM_VERSION = "0.11.2"
MODE_ENV = "OPENRLHF_PSR_COMPAT"
_MODES = ("auto", "on", "off")


def needs_cpu_compat(cuda_available: bool, mode: str = "auto") -> bool:
    """The whole decision: patch only when CUDA is absent, unless forced.

    >>> needs_cpu_compat(cuda_available=True), needs_cpu_compat(cuda_available=False)
    (False, True)
    >>> needs_cpu_compat(cuda_available=True, mode="on"), needs_cpu_compat(cuda_available=False, mode="off")
    (True, False)
    """
    if mode not in _MODES:
        raise ValueError(f"{MODE_ENV}={mode!r}: expected one of {', '.join(_MODES)}")
    return mode == "on" or (mode == "auto" and not cuda_available)


def mode_from_env() -> str:
    return os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"


def patch_files(version: str = UPSTREAM_VERSION) -> list[Path]:
    """The patch files for one upstream version, in the order they apply."""
    return sorted((PATCH_DIR / f"{UPSTREAM}-{version}").glob("*.patch"))


def install(mode: str | None = None) -> bool:
    """Put the patching import hook first on ``sys.meta_path`` (idempotent). Returns True if it is installed.

    Already-imported target modules cannot be patched any more; that is reported by :func:`status`.
    """
    from openrlhf_psr.compat.loader import PatchingFinder

    mode = mode or mode_from_env()
    needs_cpu_compat(cuda_available=False, mode=mode)  # validate the mode early, with a clear message
    if mode == "off":
        return False
    if not any(isinstance(f, PatchingFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, PatchingFinder(mode=mode))
    return True


def status() -> dict[str, str]:
    """Which patched modules are loaded, and whether each was patched (for diagnostics and tests)."""
    from openrlhf_psr.compat.loader import PATCHED_MARK, target_modules

    out = {}
    for name in target_modules():
        module = sys.modules.get(name)
        if module is None:
            out[name] = "not imported"
        else:
            out[name] = "patched" if getattr(module, PATCHED_MARK, False) else "upstream"
    return out
