"""Configuration: dataclass defaults <- ``--config FILE.yaml`` <- ``key=value`` overrides.

Every verb describes its options as a dataclass (nested dataclasses allowed). A YAML file and
command-line ``key=value`` pairs (dotted keys for nested fields, values parsed as YAML so
``n=4``, ``temperature=0.7``, ``rubrics=[a,b]`` have their natural types) are layered on top.
Unknown keys and wrongly-typed values are user errors that name the file and key.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlaif.errors import UserError, where
from rlaif.io.redact import redact

T = TypeVar("T")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict ``{"a": {"b": 1}, "c": "x"}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"override '{pair}': expected key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a syntax error becomes a one-line error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        from rlaif.io.records import not_utf8

        raise not_utf8(path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise UserError(f"{where(path, line)}invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option: value at the top level")
    return data


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` (from YAML or a key=value string) as type ``tp``, or a one-line UserError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), key, source)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"{source}option '{key}': expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple, dict) or dataclasses.is_dataclass(tp):
        return _coerce_container(value, tp, key, source)
    return _coerce_scalar(value, tp, key, source)


def _coerce_union(value: Any, members: tuple[Any, ...], key: str, source: str) -> Any:
    """The first member type that accepts ``value`` (None for an Optional)."""
    if value is None and type(None) in members:
        return None
    errors = []
    for member in members:
        if member is type(None):
            continue
        try:
            return _coerce(value, member, key, source)
        except UserError as e:
            errors.append(e)
    raise errors[0] if errors else UserError(f"{source}option '{key}': bad value {value!r}")


def _coerce_container(value: Any, tp: Any, key: str, source: str) -> Any:
    """A list ("a,b" splits on commas), a mapping, or a nested config dataclass."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        return [_coerce(item, inner, key, source) for item in value]
    if dataclasses.is_dataclass(tp) and isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise UserError(f"{source}option '{key}': expected a mapping, got {value!r}")
    if origin is dict:
        value_type = args[1] if len(args) == 2 else Any
        return {name: _coerce(item, value_type, f"{key}.{name}", source) for name, item in value.items()}
    return merge(tp(), value, source, prefix=key + ".")


def _coerce_scalar(value: Any, tp: Any, key: str, source: str) -> Any:
    """bool, int, float, str or another plain type; bools never pass as numbers."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is bool:
        raise UserError(f"{source}option '{key}': expected true/false, got {value!r}")
    if tp is float and is_number:
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and (isinstance(value, str) or is_number):
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise UserError(f"{source}option '{key}': expected {getattr(tp, '__name__', tp)}, got {value!r}")


def merge(cfg: T, updates: dict[str, Any], source: str = "", prefix: str = "") -> T:
    """Return a copy of dataclass ``cfg`` with ``updates`` applied (nested, type-checked)."""
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            valid = ", ".join(sorted(fields))
            raise UserError(f"{source}unknown option '{prefix}{key}' (valid: {valid})")
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[name] = merge(current, value, source, prefix=f"{prefix}{name}.")
        else:
            changes[name] = _coerce(value, hints[name], prefix + name, source)
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


def load_config(cls: type[T], config_file: str | Path | None = None, overrides: list[str] | None = None,
                base: T | None = None, *, flags: dict[str, Any] | None = None,
                inherit: dict[str, str] | None = None) -> T:
    """Build a ``cls`` instance: defaults (or ``base``) <- YAML file <- ``key=value`` overrides <- ``flags``
    (command-line flags such as ``--out``, already as ``{key: value}``).

    ``inherit={"judge": "policy"}``: the nested config ``judge`` starts from the final ``policy`` (all
    layers applied), then only the ``judge.*`` keys given in the layers are applied on top of it.
    """
    layers = [(read_yaml(config_file), f"{config_file}: ")] if config_file else []
    layers += [(parse_overrides(overrides or []), "command line: "), (flags or {}, "command line: ")]
    cfg = base if base is not None else cls()
    held: list[tuple[str, dict[str, Any], str]] = []  # (child, its keys, source) for inherit
    for data, source in layers:
        data = dict(data)
        for child in inherit or {}:
            if child in data:
                value = data.pop(child)
                if not isinstance(value, dict):
                    raise UserError(f"{source}option '{child}': expected a mapping of {child}.* options")
                held.append((child, value, source))
        cfg = merge(cfg, data, source)
    for child, parent in (inherit or {}).items():
        value = getattr(cfg, parent)
        for name, data, source in held:
            if name == child:
                value = merge(value, data, source, prefix=f"{child}.")
        cfg = dataclasses.replace(cfg, **{child: value})  # type: ignore[type-var]
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (for manifests, summaries and checkpoint settings),
    credentials in URLs redacted (``base_url``): what is written never holds a password."""
    return redact(dataclasses.asdict(cfg))


def flatten_dict(nested: dict[str, Any], prefix: str = "", keep_empty: bool = False) -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": 2}`` -> ``{"a.b": 1, "c": 2}`` (dotted keys, in the nested order). An
    empty mapping leaves no key, or with ``keep_empty`` stays a leaf (``{"d": {}}`` -> ``{"d": {}}``)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict) and (value or not keep_empty):
            flat.update(flatten_dict(value, f"{prefix}{key}.", keep_empty))
        else:
            flat[prefix + key] = value
    return flat


def describe_config(cls: type, prefix: str = "") -> str:
    """One line per config key (dotted for nested), with default and help, for ``--help``."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default: Any
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if dataclasses.is_dataclass(default):
            lines.append(describe_config(type(default), prefix + f.name + "."))
            continue
        tp = hints[f.name]
        tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        help_ = f.metadata.get("help", "")
        lines.append(f"  {prefix}{f.name}={default!r}  ({tname}){'  ' + help_ if help_ else ''}")
    return "\n".join(lines)


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type | None = None) -> None:
    """Add ``--config`` and ``key=value`` overrides; list every config key in the help."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (overridden by key=value)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override any config option, dotted for nested ones (e.g. policy.model=DIR)")
    if config_cls is not None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = "config options (key=value or in --config YAML):\n" + describe_config(config_cls)


NO_OFF: Any = object()  # `option`'s ``off`` when not given (None is a real "off" value)


def option(default: Any, help: str, *, off: Any = NO_OFF, parent: str | None = None, **kw: Any) -> Any:
    """A dataclass field with its ``--help`` text; a class or lambda default is a fresh one per instance.

    Markers, for options added after runs were checkpointed (read by a trainer's run settings):
    ``off`` = the value at which the option changes nothing, so a run at it leaves the option out of
    its settings and runs made before the option still resume; ``parent`` = an option read only when
    option ``parent`` is on, left out of the settings with it."""
    metadata = {"help": help, **({} if off is NO_OFF else {"off": off}), **({"parent": parent} if parent else {})}
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=metadata, **kw)
    return dataclasses.field(default=default, metadata=metadata, **kw)


def redefault(cls: type, name: str, default: Any) -> Any:
    """Field ``name`` of dataclass ``cls`` with another default, the same help text and markers (a
    subclass's recipe)."""
    metadata = cls.__dataclass_fields__[name].metadata
    return option(default, metadata["help"], off=metadata.get("off", NO_OFF), parent=metadata.get("parent"))
