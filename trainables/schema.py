"""The base of every validated settings model (trial config, method parameters): unknown keys are errors, and
so are NaN and infinity (YAML's .nan/.inf): no setting means them, and a NaN is written back to spec.yaml as null.

Its own module so that ``config`` and ``methods`` can both use it without importing each other."""
from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
