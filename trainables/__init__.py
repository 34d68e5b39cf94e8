"""The shared masked-fine-tuning trainable: tasks, models, methods, and one training loop.

Never imports ``orchestrator`` or Ray: ``run_trial`` works as a plain function. The training loop and the
fine-tuned model loader (torch, transformers, scipy) load on first use, so that reading a config or
starting the CLI does not pay for them.
"""
from .config import TrialConfig, trial_key

__all__ = ["TrialConfig", "load_finetuned", "run_trial", "save_finetuned", "trial_key"]


def __getattr__(name: str):
    if name == "run_trial":
        from .loop import run_trial
        return run_trial
    if name in ("load_finetuned", "save_finetuned"):
        from . import finetuned
        return getattr(finetuned, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
