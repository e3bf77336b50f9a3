"""`--config_overrides "k=v,k=v"`: transformers' `PretrainedConfig.update_from_string`, strictly.

Every script that builds a model from a config takes `--config_overrides`. The values are read the
way transformers' own `run_clm.py` reads them, with `PretrainedConfig.update_from_string`: the key
must be a field of the config, and the text is converted to the type of the field's current value
(`true`/`false`/`yes`/`no`/`1`/`0` for booleans, `int(...)`, `float(...)`, strings as they are).
Three small extensions, because ContextPool configs have list-valued and optional fields that
`update_from_string` refuses (it only updates int, float, bool and str fields):

- a value in brackets is JSON: ``pool_layers=[0,2]`` (commas inside brackets do not split items);
- ``none`` / ``null`` sets a field to None (``pool_layers=none`` = pool every layer);
- a field whose current value is None, a list or a dict takes a JSON value (``pool_fixed_sigma=2.5``).

Spaces around keys and values are ignored. Anything that does not parse is a `ValueError` naming the
item: an item without ``=``, an empty item, unbalanced brackets (``pool_layers=[0]]``,
``pool_target=kv)``), an unknown key (with the closest valid keys), or a value of the wrong type;
values are also checked against the config class's own field types (``pool_target`` must be
``qkv`` or ``kv``). Nothing is applied unless the whole string parses.
"""

from __future__ import annotations

import copy
import difflib
import json
from typing import Any

_OPEN = {"[": "]", "{": "}", "(": ")"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_NONE = ("none", "null")


def split_overrides(overrides: str) -> list[tuple[str, str]]:
    """Split ``"a=1,b=[0,1]"`` into ``[("a", "1"), ("b", "[0,1]")]``; commas inside brackets stay.

    Raises:
        ValueError: an empty item, an item that is not ``key=value``, or unbalanced brackets
            (the message quotes the offending item).
    """
    pieces, stack, start = [], [], 0
    for index, char in enumerate(overrides):
        if char in _OPEN:
            stack.append(char)
        elif char in _CLOSE:
            if not stack or stack[-1] != _CLOSE[char]:
                raise ValueError(f"--config_overrides: unbalanced {char!r} in {_item_at(overrides, index)!r}")
            stack.pop()
        elif char == "," and not stack:
            pieces.append(overrides[start:index])
            start = index + 1
    if stack:
        raise ValueError(f"--config_overrides: unclosed {stack[-1]!r} in {overrides[start:].strip()!r}")
    pieces.append(overrides[start:])
    items = []
    for piece in pieces:
        key, sep, value = piece.partition("=")
        if not piece.strip():
            raise ValueError(f"--config_overrides {overrides!r} has an empty item (two commas, or a trailing comma)")
        if not sep or not key.strip():
            raise ValueError(f"--config_overrides: {piece.strip()!r} is not of the form key=value")
        items.append((key.strip(), value.strip()))
    return items


def _item_at(text: str, index: int) -> str:
    """The comma-separated item of `text` around position `index` (for error messages)."""
    start = text.rfind(",", 0, index) + 1
    end = text.find(",", index)
    return text[start : end if end >= 0 else len(text)].strip()


def _known_keys(config: Any) -> list[str]:
    keys = set(config.to_dict())
    keys.update(getattr(type(config), "__dataclass_fields__", {}))
    keys.update(k for k in vars(config) if not k.startswith("_"))
    return sorted(keys)


def _json_value(key: str, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"--config_overrides {key}={value}: not valid JSON ({error.msg})") from error


def _typed_value(probe: Any, key: str, value: str) -> Any:
    """`value` converted for field `key` of `probe` (a throw-away copy of the config)."""
    current = getattr(probe, key)
    if value.lower() in _NONE:
        return None
    if value[:1] in "[{":
        return _json_value(key, value)
    if current is None or isinstance(current, (list, tuple, dict)):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # a string for a field that is unset now (its type is checked below)
    expected = {bool: "true/false", int: "an integer", float: "a number"}.get(type(current), "a string")
    try:
        probe.update_from_string(f"{key}={value}")  # transformers' own conversion for scalar fields
    except Exception as error:  # ValueError/TypeError, or huggingface_hub's StrictDataclassFieldValidationError
        raise ValueError(f"--config_overrides {key}={value}: expected {expected} ({error})") from error
    return getattr(probe, key)


def parse_config_overrides(overrides: str | None, config: Any) -> dict[str, Any]:
    """Parse ``--config_overrides`` into ``{field: typed value}`` for `config` (which is not changed).

    Args:
        overrides: ``"k=v,k=v"`` (see the module docstring for the syntax); None or "" gives {}.
        config: the config the overrides are for; decides the known keys and the value types.

    Raises:
        ValueError: naming the item that does not parse, the unknown key (with close valid ones),
            or the field whose type the value does not match.
    """
    if overrides is None or not overrides.strip():
        return {}
    if config is None:
        raise TypeError("parse_config_overrides needs the config the overrides are for (it decides the types)")
    known = _known_keys(config)
    probe = copy.deepcopy(config)
    parsed: dict[str, Any] = {}
    for key, value in split_overrides(overrides):
        if not hasattr(probe, key):
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"unknown config field {key!r} in --config_overrides for {type(config).__name__}{hint}. "
                f"Valid fields: {', '.join(known)}"
            )
        if key in parsed:
            raise ValueError(f"--config_overrides sets {key!r} twice")
        typed = _typed_value(probe, key, value)
        try:
            setattr(probe, key, typed)  # strict configs check the field's declared type here
        except Exception as error:  # huggingface_hub's StrictDataclassFieldValidationError is no ValueError
            raise ValueError(f"--config_overrides {key}={value}: {error}") from error
        parsed[key] = typed
    return parsed


def apply_config_overrides(config: Any, overrides: str | dict[str, Any] | None) -> Any:
    """Set each override on `config` (in place) and re-validate it; returns the config.

    A changed width or head count re-derives ``head_dim`` / ``num_key_value_heads`` unless they are
    overridden too (as a new config would derive them).
    """
    values = overrides if isinstance(overrides, dict) else parse_config_overrides(overrides, config)
    for key, value in values.items():
        setattr(config, key, value)
    if values:
        if {"hidden_size", "num_attention_heads"} & set(values) and "head_dim" not in values and hasattr(config, "head_dim"):
            config.head_dim = config.hidden_size // config.num_attention_heads
        if "num_attention_heads" in values and "num_key_value_heads" not in values and hasattr(config, "num_key_value_heads"):
            config.num_key_value_heads = config.num_attention_heads
        validate = getattr(config, "validate_architecture", None)
        if callable(validate):
            validate()
    return config


def parse_untyped_overrides(overrides: str | None) -> dict[str, Any]:
    """``"k=v,..."`` without a config to type it by: the same strict splitting, values as JSON where they
    parse (``[0,1]``, ``2``, ``0.5``, ``true``), ``none``/``null`` as None, else the string itself.
    Prefer `parse_config_overrides`, which also checks keys and types; use this only where the config
    is not built yet, and check the result by building it."""
    if overrides is None or not overrides.strip():
        return {}
    parsed: dict[str, Any] = {}
    for key, value in split_overrides(overrides):
        if key in parsed:
            raise ValueError(f"--config_overrides sets {key!r} twice")
        if value.lower() in _NONE:
            parsed[key] = None
        elif value.lower() in ("true", "false"):
            parsed[key] = value.lower() == "true"
        elif value[:1] in "[{":
            parsed[key] = _json_value(key, value)
        else:
            try:
                parsed[key] = json.loads(value)
            except json.JSONDecodeError:
                parsed[key] = value
    return parsed
