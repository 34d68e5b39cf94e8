"""``python -m orchestrator ...`` is ``peft-sweep ...`` (what ``ray job submit`` runs)."""
import sys

from .cli import main

sys.exit(main())
