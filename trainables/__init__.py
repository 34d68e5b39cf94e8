"""The shared masked-fine-tuning trainable: tasks, models, methods, and one training loop.

Never imports ``orchestrator`` or Ray: ``run_trial`` works as a plain function.
"""
from .config import TrialConfig, trial_key
from .loop import run_trial

__all__ = ["TrialConfig", "run_trial", "trial_key"]
