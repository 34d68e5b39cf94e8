"""The base of every validated settings model (trial config, method parameters): unknown keys are errors.

Its own module so that ``config`` and ``methods`` can both use it without importing each other."""
import difflib
from typing import Iterable

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def closest(name: object, valid: Iterable[str], fold=str.lower) -> str | None:
    """The valid name a typo most likely meant (compared after ``fold``), for "did you mean ...?"; None if none
    is close."""
    by_fold = {fold(v): v for v in valid}
    match = difflib.get_close_matches(fold(str(name)), list(by_fold), n=1, cutoff=0.6)
    return by_fold[match[0]] if match else None


def did_you_mean(name: object, valid: Iterable[str], fold=str.lower) -> str:
    """"; did you mean 'x'?" where ``closest`` finds one, else ""."""
    close = closest(name, valid, fold)
    return f"; did you mean {close!r}?" if close else ""
