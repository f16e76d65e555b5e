"""The ``openrlhf_ray`` generator inside a running Ray cluster, as on a GPU cluster: it joins the cluster started
by ``ray start --head`` (instead of ``ray.init(num_cpus=..., num_gpus=...)``, which raises there), generates, and
gives its GPU back when closed (upstream's placement group removed), so the next stage can place its engines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from openrlhf_psr.preflight import free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent

CHILD = textwrap.dedent(
    """
    import json, sys
    from transformers import AutoTokenizer
    from openrlhf_psr.engines.base import SampleRequest
    from openrlhf_psr.engines.openrlhf_ray import OpenRLHFRayEngine, create_engines, start_local_ray

    if __name__ == "__main__":
        model = sys.argv[1]
        ray = start_local_ray()  # joins the running cluster (RAY_ADDRESS) instead of starting one
        from ray.util.placement_group import placement_group_table

        report = {"resources": ray.cluster_resources()}
        for attempt in range(2):  # the second engine can only be placed if the first one gave its GPU back
            engines = create_engines(model, num_engines=1, enforce_eager=True, max_model_len=512)
            engine = OpenRLHFRayEngine(engines, AutoTokenizer.from_pretrained(model))
            [out] = engine.generate([SampleRequest((1, 2, 3), max_tokens=4, affinity="p0")])
            groups = list(engine.placement_groups)
            engine.close()
            table = placement_group_table()
            report[f"attempt{attempt}"] = {"tokens": len(out[0].token_ids), "groups": groups,
                                           "states": [table[g]["state"] for g in groups]}
        print("REPORT " + json.dumps(report))
    """
)


def test_openrlhf_ray_engines_join_a_running_cluster_and_release_their_gpu(default_model, tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rayf")  # short: Ray's socket paths must fit 107 characters
    port = free_port()
    head_log = tmp_path / "head.log"
    with open(head_log, "w") as log:  # a file, not a pipe nobody reads (a full pipe would block the head)
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2", "--num-gpus",
             "1", "--resources", json.dumps({"psr_test_head": 1}), "--include-dashboard", "false",
             "--temp-dir", temp_dir],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180  # ready when `ray status` answers, not after a fixed sleep
        while True:
            assert head.poll() is None, head_log.read_text()[-4000:]
            status = subprocess.run([str(BIN / "ray"), "status", "--address", f"127.0.0.1:{port}"],
                                    capture_output=True, text=True)  # fmt: skip
            if status.returncode == 0:
                break
            assert time.monotonic() < deadline, f"the Ray head never became ready:\n{head_log.read_text()[-4000:]}"
            time.sleep(2)
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "VLLM_CPU_KVCACHE_SPACE": "1"}
        proc = subprocess.run([sys.executable, str(script), default_model], capture_output=True, text=True,
                              timeout=600, env=env)  # fmt: skip
        lines = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")]
        assert proc.returncode == 0 and lines, proc.stderr[-4000:]
        report = json.loads(lines[-1].removeprefix("REPORT "))
        assert report["resources"].get("psr_test_head") == 1  # it joined the head; a new local cluster lacks this
        for attempt in ("attempt0", "attempt1"):
            assert report[attempt]["tokens"] > 0
            assert len(report[attempt]["groups"]) == 1 and report[attempt]["states"] == ["REMOVED"]
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head and the processes it started (its own session)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
