"""The shared masked-fine-tuning trainable: tasks, models, methods, and one training loop.

Never imports ``orchestrator`` or Ray: ``run_trial`` works as a plain function.
"""
from .config import TrialConfig, trial_key
from .finetuned import load_finetuned, save_finetuned
from .loop import run_trial

__all__ = ["TrialConfig", "load_finetuned", "run_trial", "save_finetuned", "trial_key"]
