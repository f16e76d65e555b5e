"""Run a DeepSpeed training module on several nodes: one process per GPU, placed by the running Ray cluster.

    python -m openrlhf_psr.cli.ray_train --nodes 2 --gpus-per-node 8 openrlhf.cli.train_sft --ds.zero_stage 3 ...

This is how the launcher runs SFT (upstream ``openrlhf.cli.train_sft``) and step DPO
(``openrlhf_psr.cli.train_step_dpo``) when ``cluster.nodes > 1``. The module and its flags are unchanged: each rank
is a plain ``python -m MODULE ARGS`` process given the environment a distributed launcher gives (``MASTER_ADDR``,
``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), which is all ``deepspeed.init_distributed`` reads.
The ranks are Ray tasks in one placement group of ``nodes x gpus-per-node`` one-GPU bundles, the way upstream's
``train_ppo_ray`` places its model actors: Ray sets each task's ``CUDA_VISIBLE_DEVICES`` (so ``LOCAL_RANK`` is 0),
and rank 0's node and a free port there become the rendezvous.

Why Ray rather than ``deepspeed --hostfile``: the runs this package submits already live in a Ray cluster
(``scripts/cluster/submit.sh``, ``slurm.sbatch``); the DeepSpeed launcher would need password-less SSH (pdsh) to
every node and this code installed at the same path on each, whereas a Ray task runs in the job's own runtime env
(its copy of the working dir reaches every node) on GPUs that Ray knows are free between stages (the vLLM engines
of the search give theirs back). Nothing here is specific to a module: a third-party trainer runs the same way.

With ``--gpus-per-node 0`` (CPU: tests) each node holds one rank on one CPU, with gloo. The first rank to fail
stops the others; the exit status is that rank's.
"""

from __future__ import annotations

import argparse
import os
import sys

# The driver's environment that the ranks get as well (Ray workers start from the raylet's environment, not the
# driver's): this package's switches, the libraries' caches and settings, logging. Rank layout keys are set per rank.
FORWARDED_PREFIXES = ("OPENRLHF_PSR_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "NCCL_", "TORCH_", "DS_", "WANDB_",
                      "PYTHONUNBUFFERED", "PYTHONHASHSEED", "OMP_NUM_THREADS")  # fmt: skip
RANK_KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, required=True, help="machines of the Ray cluster to train on")
    parser.add_argument("--gpus-per-node", type=int, required=True, help="ranks (one GPU each) per machine; 0: CPU")
    parser.add_argument("--place-timeout", type=float, default=900, help="seconds to wait for free GPUs")
    parser.add_argument("module", help="the training module, run as python -m MODULE on every rank")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its flags, unchanged")


def rank_env(base: dict[str, str], rank: int, world: int, master: tuple[str, int], cpu: bool) -> dict[str, str]:
    """The environment of one rank: ``base`` (the worker's), the forwarded driver keys, and the rank layout.

    >>> env = rank_env({"PATH": "/bin", "RANK": "0"}, 3, 16, ("10.0.0.1", 29500), cpu=False)
    >>> [env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK")]
    ['10.0.0.1', '29500', '16', '3', '0']
    """
    env = {k: v for k, v in base.items() if k not in RANK_KEYS}
    env.update(MASTER_ADDR=master[0], MASTER_PORT=str(master[1]), WORLD_SIZE=str(world), RANK=str(rank),
               LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")  # fmt: skip  # Ray shows each rank its one GPU only
    if cpu:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def forwarded(environ: dict[str, str]) -> dict[str, str]:
    """The driver's keys the ranks get (see ``FORWARDED_PREFIXES``).

    >>> forwarded({"HF_HOME": "/h", "RANK": "0", "PATH": "/x", "OPENRLHF_PSR_PAUSE_AT": "p"})
    {'HF_HOME': '/h', 'OPENRLHF_PSR_PAUSE_AT': 'p'}
    """
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES) and k not in RANK_KEYS}


def _node_address() -> tuple[str, int]:
    """This node's IP and a port free on it: rank 0's rendezvous."""
    import socket

    import ray

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return ray.util.get_node_ip_address().strip("[]"), port


def _run_rank(module: str, args: list[str], env: dict[str, str], rank: int) -> int:
    """One rank: ``python -m MODULE ARGS`` in this Ray worker's environment plus ``env``; killed with the worker."""
    import signal
    import subprocess

    def die_with_parent():
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    # Ray pins OMP_NUM_THREADS to the task's one CPU: a rank would then run DeepSpeed's CPU Adam (adam_offload) and
    # its data loading on one thread. A rank gets what a `deepspeed` launch gets: the driver's setting, else none.
    full = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | env
    print(f"[ray_train] rank {rank}/{env['WORLD_SIZE']} on {env['MASTER_ADDR']}:{env['MASTER_PORT']}", flush=True)
    return subprocess.run([sys.executable, "-m", module, *args], env=full, preexec_fn=die_with_parent).returncode


def run(args) -> int:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from openrlhf_psr.errors import UserError

    if args.nodes < 1 or args.gpus_per_node < 0:
        raise UserError(f"--nodes {args.nodes} --gpus-per-node {args.gpus_per_node}: expected >= 1 and >= 0")
    cpu = args.gpus_per_node == 0
    world = args.nodes * (args.gpus_per_node or 1)
    try:
        ray.init(address="auto", log_to_driver=True)
    except ConnectionError:
        raise UserError(
            f"{args.module} on {args.nodes} nodes needs a running Ray cluster: start it with "
            "scripts/cluster/start_head.sh and start_worker.sh (or submit with scripts/cluster/submit.sh)"
        ) from None
    bundle = {"CPU": 1} if cpu else {"CPU": 1, "GPU": 1}
    group = placement_group([bundle] * world, strategy="PACK")
    try:
        ready, _ = ray.wait([group.ready()], timeout=args.place_timeout)
        if not ready:
            raise UserError(
                f"{args.module}: could not place {world} ranks ({bundle} each) within {args.place_timeout:.0f}s; the "
                f"cluster has {ray.cluster_resources()} and {ray.available_resources()} free"
            )

        def on(k: int, fn, **options):
            strategy = PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=k)
            return ray.remote(**options)(fn).options(scheduling_strategy=strategy)

        resources = {"num_cpus": 1, "num_gpus": 0 if cpu else 1}
        master = ray.get(on(0, _node_address, **resources).remote())
        extra = forwarded(dict(os.environ))
        ranks = [
            on(k, _run_rank, max_retries=0, **resources).remote(
                args.module, args.args, rank_env(extra, k, world, master, cpu), k
            )
            for k in range(world)
        ]
        pending, code = list(ranks), 0
        while pending and code == 0:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                code = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # its worker or node died
                print(f"[ray_train] {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                code = 1
        for ref in pending:  # a rank failed: the others would wait for it forever (their processes die with them)
            ray.cancel(ref, force=True)
        if code:
            print(f"[ray_train] rank {ranks.index(done[0])} exited with {code}", file=sys.stderr, flush=True)
        return code
    finally:
        remove_placement_group(group)


def main(argv=None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "python -m openrlhf_psr.cli.ray_train", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
