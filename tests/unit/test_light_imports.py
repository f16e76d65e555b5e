"""The core logic imports without the training stack (issue 9): in a fresh interpreter where ``torch``, ``vllm``,
``ray`` and ``deepspeed`` cannot be imported, the step format, prompts, tournament, records, recipe schema, verdict
logic, run layout, memory plan and source grammar all import. A module that starts importing one of them at import
time (even indirectly) fails here, naming the module and the import that reached the blocked package."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

HEAVY = ("torch", "vllm", "ray", "deepspeed")
LIGHT = [
    "openrlhf_psr.steps",
    "openrlhf_psr.prompts",
    "openrlhf_psr.tournament",
    "openrlhf_psr.records",
    "openrlhf_psr.recipe",
    "openrlhf_psr.judges.verdict",
    "openrlhf_psr.judges.guard",
    "openrlhf_psr.layout",
    "openrlhf_psr.plan",
    "openrlhf_psr.data.sources",
]

# argv: the blocked names (comma-separated), then module names. Prints {module: null | "the error"} and the blocked
# packages loaded before and after the imports.
PROBE = """
import importlib, importlib.abc, json, sys, traceback
HEAVY = set(sys.argv[1].split(","))

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError("blocked: " + name)
        return None

loaded_before = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
sys.meta_path.insert(0, Blocked())
errors = {}
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
        errors[name] = None
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "openrlhf_psr" in f.filename]
        where = " (at %s:%d)" % (frames[-1].filename, frames[-1].lineno) if frames else ""
        errors[name] = "%s: %s%s" % (type(exc).__name__, exc, where)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"errors": errors, "loaded_before": loaded_before, "loaded": loaded}))
"""


def probe(modules: list[str], path: str | None = None) -> dict:
    """Import ``modules`` in a fresh interpreter with the heavy packages blocked (``path``: put first on sys.path)."""
    code = PROBE if path is None else f"import sys; sys.path.insert(0, {path!r})\n" + PROBE
    proc = subprocess.run(
        [sys.executable, "-c", code, ",".join(HEAVY), *modules], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_core_modules_import_with_torch_vllm_ray_and_deepspeed_blocked():
    result = probe(LIGHT)
    assert result["loaded_before"] == []  # the interpreter's start-up (.pth hooks) loaded none of them either
    failed = {name: error for name, error in result["errors"].items() if error}
    assert failed == {}, "\n".join(f"{name}: {error}" for name, error in failed.items())
    assert result["loaded"] == []


def test_the_probe_catches_a_module_that_imports_a_heavy_package(tmp_path):
    """The check can fail: a module importing torch (directly, or through a light-looking module) is reported."""
    (tmp_path / "psr_canary_direct.py").write_text("import torch\n")
    (tmp_path / "psr_canary_indirect.py").write_text("import json\nimport psr_canary_direct\n")
    result = probe(["psr_canary_indirect", "openrlhf_psr.steps"], path=str(tmp_path))
    assert result["errors"]["psr_canary_indirect"].startswith("ImportError: blocked: torch")
    assert result["errors"]["openrlhf_psr.steps"] is None and result["loaded"] == []
