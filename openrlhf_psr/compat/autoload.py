"""Imported by ``openrlhf_psr_compat.pth`` at every interpreter start: install the CPU patching hook.

It must never break an interpreter: any failure is reported on stderr and the interpreter goes on unpatched.
"""

try:
    from openrlhf_psr.compat import install

    install()
except Exception as exc:  # pragma: no cover - defensive: a .pth must not make python unusable
    import sys

    print(f"openrlhf-psr: CPU compatibility hook not installed: {exc}", file=sys.stderr)
