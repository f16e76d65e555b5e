from __future__ import annotations

import doctest
import socket

import pytest

from openrlhf_psr import preflight
from openrlhf_psr.preflight import SetupError, cpu_distributed_env, ensure_port_free

pytestmark = pytest.mark.unit


def test_doctests():
    assert doctest.testmod(preflight).failed == 0


def test_busy_port_is_a_one_line_error_with_a_free_alternative():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(SetupError) as err:
            ensure_port_free(port)
    message = str(err.value)
    assert "\n" not in message and f"port {port}" in message and "MASTER_PORT=" in message
    suggested = int(message.split("MASTER_PORT=")[1].split(",")[0])
    assert suggested != port


def test_cuda_torch_on_a_machine_without_gpu_is_refused():
    with pytest.raises(SetupError, match="CUDA build .* scripts/setup.sh"):
        preflight.check_torch_build(torch_cuda_version="12.8", cuda_available=False)


def test_cpu_distributed_env_sets_everything_deepspeed_needs():
    env = cpu_distributed_env(base={})
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        assert key in env
    assert env["LOCAL_RANK"] == "0" and env["DS_ACCELERATOR"] == "cpu"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(SetupError):
            cpu_distributed_env(base={"MASTER_PORT": str(sock.getsockname()[1])})
