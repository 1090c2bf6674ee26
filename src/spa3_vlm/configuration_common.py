"""Field checks shared by the package's configs (ships with them: imports only transformers-free Python)."""

from __future__ import annotations

import math
from typing import Iterable


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def field_problems(
    config,
    *,
    ints_at_least: dict[str, int] = (),
    positive_numbers: Iterable[str] = (),
    finite_numbers: Iterable[str] = (),
    bools: Iterable[str] = (),
) -> list[str]:
    """One message per field of ``config`` that breaks its rule: ``name must be ..., got value``."""
    problems = []
    for name, low in dict(ints_at_least).items():
        value = getattr(config, name)
        if not _is_int(value) or value < low:
            problems.append(f"{name} must be an int >= {low}, got {value!r}")
    for name in positive_numbers:
        value = getattr(config, name)
        if not _is_number(value) or value <= 0:
            problems.append(f"{name} must be a finite number > 0, got {value!r}")
    for name in finite_numbers:
        value = getattr(config, name)
        if not _is_number(value):
            problems.append(f"{name} must be a finite number, got {value!r}")
    for name in bools:
        value = getattr(config, name)
        if not isinstance(value, bool):
            problems.append(f"{name} must be True or False, got {value!r}")
    return problems


def raise_problems(config_class: str, problems: list[str]) -> None:
    """Raise one ``ValueError`` naming every bad field (a user fixes them all in one go)."""
    if problems:
        raise ValueError(f"invalid {config_class}: " + "; ".join(problems))


class ValidatesKwargsMixin:
    """Checks what ``from_pretrained`` / ``from_dict`` load, where transformers only logs or skips:

    - a saved config of another ``model_type`` (transformers logs a warning and builds a config from foreign
      fields) is an error; ``loads_model_types`` lists the foreign types a class reads on purpose;
    - the values that ``from_pretrained(..., **kwargs)`` sets are validated: transformers ``setattr``s them after
      ``__init__``, which skips ``__post_init__``'s checks (``from_pretrained(folder, num_queries=-1)`` would
      load). Rebuilding the result once from its dict runs them on the final values.
    """

    loads_model_types: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        found = config_dict.get("model_type")
        if found and found not in (cls.model_type, *cls.loads_model_types):
            raise ValueError(
                f"this config is a {found!r} model's, not a {cls.__name__} ({cls.model_type!r}): load it with "
                "AutoConfig.from_pretrained, or with the config class that saved it"
            )
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        if any(key != "return_unused_kwargs" and hasattr(config, key) for key in kwargs):
            cls(**config.to_dict())  # only kwargs set after __init__ escape its checks
        return result
