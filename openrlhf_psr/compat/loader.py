"""The meta-path finder that compiles selected upstream modules from patched source."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from functools import cache

from openrlhf_psr.compat import needs_cpu_compat, patch_files
from openrlhf_psr.compat.patching import FilePatch, PatchError, apply_patch, parse_patch

PATCHED_MARK = "__openrlhf_psr_patched__"


@cache
def _patches_by_module() -> dict[str, list[FilePatch]]:
    by_module: dict[str, list[FilePatch]] = {}
    for path in patch_files():
        for file_patch in parse_patch(path.read_text()):
            by_module.setdefault(file_patch.module, []).append(file_patch)
    return by_module


def target_modules() -> list[str]:
    return sorted(_patches_by_module())


@cache
def _cuda_available() -> bool:
    """CUDA is present: a GPU is visible, or torch is a CUDA/ROCm build.

    The build counts too because on a GPU cluster some of upstream's processes see no GPU although they run there:
    the Ray driver on a CPU head node, actors placed without GPUs (Ray empties ``CUDA_VISIBLE_DEVICES``). Those
    must import the real upstream, not our CPU variant (and must not fail when another upstream version is
    installed). A CUDA build on a machine without any GPU is refused with a clear message by
    ``preflight.check_torch_build``.
    """
    import torch  # only reached while importing an openrlhf module, which imports torch anyway

    return bool(torch.cuda.is_available() or torch.version.cuda or getattr(torch.version, "hip", None))


_warned: list[str] = []


def _upstream_version_mismatch() -> str | None:
    """A message when the installed upstream is not the version the patches target, else None."""
    from importlib.metadata import PackageNotFoundError, version

    from openrlhf_psr.compat import UPSTREAM, UPSTREAM_VERSION

    try:
        installed = version(UPSTREAM)
    except PackageNotFoundError:
        return None
    if installed == UPSTREAM_VERSION:
        return None
    return f"openrlhf-psr's CPU patches target {UPSTREAM}=={UPSTREAM_VERSION} but {installed} is installed"


def _check_upstream_version() -> bool:
    """True when the patches may be applied. Without CUDA another version is an error (the CPU path cannot work);
    with CUDA (``OPENRLHF_PSR_COMPAT=on`` forced it) the hook stands aside with one warning per process."""
    message = _upstream_version_mismatch()
    if message is None:
        return True
    if not _cuda_available():
        raise PatchError(f"{message}: run scripts/setup.sh, or set OPENRLHF_PSR_COMPAT=off on a CUDA machine")
    if not _warned:
        _warned.append(message)
        print(f"openrlhf-psr: {message}; CUDA is present, so upstream is imported unpatched", file=sys.stderr)
    return False


class _PatchedSourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles the original file's source with our hunks applied (never writes bytecode for it)."""

    def __init__(self, fullname: str, path: str, patches: list[FilePatch]):
        super().__init__(fullname, path)
        self._patches = patches

    def get_code(self, fullname):  # noqa: D102 - importlib protocol
        source = self.get_data(self.path).decode("utf-8")
        for file_patch in self._patches:
            source = apply_patch(source, file_patch)
        return compile(source, self.path, "exec", dont_inherit=True)

    def exec_module(self, module):  # noqa: D102 - importlib protocol
        setattr(module, PATCHED_MARK, True)
        super().exec_module(module)


class PatchingFinder(importlib.abc.MetaPathFinder):
    def __init__(self, mode: str = "auto"):
        self.mode = mode

    def find_spec(self, fullname, path=None, target=None):
        patches = _patches_by_module().get(fullname) if fullname.startswith("openrlhf.") else None
        if not patches or not needs_cpu_compat(_cuda_available(), self.mode):
            return None
        if not _check_upstream_version():
            return None
        if path is None and "." in fullname:  # called directly (not by the import system): find the parent's path
            parent = importlib.util.find_spec(fullname.rpartition(".")[0])
            path = parent.submodule_search_locations if parent else None
        # Ask the rest of the import system where the original file is, then swap in our loader.
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if not isinstance(spec.loader, importlib.machinery.SourceFileLoader) or spec.origin is None:
            return None
        loader = _PatchedSourceLoader(fullname, spec.origin, patches)
        return importlib.util.spec_from_file_location(fullname, spec.origin, loader=loader)
