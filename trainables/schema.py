"""The base of every validated settings model (trial config, method parameters): unknown keys are errors.

Its own module so that ``config`` and ``methods`` can both use it without importing each other."""
from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
