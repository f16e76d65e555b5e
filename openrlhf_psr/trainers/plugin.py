"""Trainer plugins: how a recipe's DPO stage becomes a command. A third-party trainer registers the same way."""

from __future__ import annotations

from abc import ABC, abstractmethod

STEP_DPO_ATTENTION = "sdpa"  # cli/train_step_dpo.py enforces the same whatever the command says


class TrainerPlugin(ABC):
    """Builds the launcher stage that trains M(t) -> M(t+1) on iteration t's pairs."""

    module = ""

    @abstractmethod
    def stage(self, run, t: int):
        """Return a :class:`openrlhf_psr.launcher.Stage` whose output is ``run.layout.model(t + 1) / "config.json"``.

        ``run`` is the :class:`openrlhf_psr.launcher.RecipeRun`; a plugin uses its public interface only:
        ``recipe``, ``layout`` (:class:`openrlhf_psr.layout.RunLayout`), ``model(k)`` (M(k) as a path or name),
        ``trainer_command(module)``, ``train_flags("dpo")``, and :func:`openrlhf_psr.launcher.flag_args`.
        """


class StepDPOPlugin(TrainerPlugin):
    """``openrlhf_psr.cli.train_step_dpo`` with upstream's flags; ``psr.trainer.settings`` become ``--psr.*``."""

    module = "openrlhf_psr.cli.train_step_dpo"

    def stage(self, run, t: int):
        from openrlhf_psr.launcher import Stage, flag_args

        r, d, layout = run.recipe, run.recipe.dpo, run.layout
        reference = run.model(t) if d.reference == "previous" else run.model(1)
        cmd = run.trainer_command(self.module) + [
            "--model.model_name_or_path", run.model(t), "--ref.model_name_or_path", reference,
            "--data.dataset", str(layout.search(t)), "--data.max_len", str(d.max_len),
            "--train.max_epochs", str(d.epochs), "--adam.lr", str(d.lr_at(t)), "--model.beta", str(d.beta),
            "--train.batch_size", str(d.batch_size), "--train.micro_batch_size", str(d.micro_batch_size),
            "--train.seed", str(r.seed + t), *run.train_flags("dpo"),
            # The tree mask needs an attention that reads a 4D mask: sdpa, also on GPU (never flash_attention_2).
            "--ds.param_dtype", "bf16", "--ds.attn_implementation", STEP_DPO_ATTENTION,
            "--ckpt.output_dir", str(layout.model(t + 1)), "--ckpt.path", str(layout.dpo_ckpt(t)),
            "--ckpt.load_enable",
            "--logger.logging_steps", "1", "--logger.tensorboard_dir", str(layout.dpo_tb(t)),
            "--psr.chat_template", "on" if r.psr.chat_template else "off",
        ]  # fmt: skip
        cmd += flag_args({f"--psr.{k}": v for k, v in r.psr.trainer.settings.items()})
        cmd += flag_args(r.openrlhf.get("dpo", {}))
        return Stage(f"iter_{t}/dpo", cmd, layout.model(t + 1) / "config.json", distributed=True)
