"""Names with options (`name` or `name:key=value,key=value`), typed configs, and lazy registries.

Spec strings exist only at the edges (CLI, `get_pruner`, `load_dataset`, `load_model`). They are parsed
once here into a config dataclass; nothing inside the library passes spec strings around.
Registries hold `module:attr` targets so that `evtp --help` and `evtp list` never import torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import re
import types
import typing
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Generic,
    Iterable,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

from evtp_cli.errors import SpecError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY_VALUE_START = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Spec:
    """A parsed name with options; option values are still strings (typed by `build_config`)."""

    name: str
    options: dict[str, str]

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.options.items())


def parse_spec(text: str) -> Spec:
    """Parse `name` or `name:key=value,key=value`. Raises SpecError on malformed input."""
    text = text.strip()
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not _NAME_RE.match(name):
        raise SpecError(
            f"malformed name {text!r}: expected 'name' or 'name:key=value,key=value'"
        )
    options: dict[str, str] = {}
    if sep:
        if not rest.strip():
            raise SpecError(f"malformed spec {text!r}: nothing after ':' (write 'name:key=value')")
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or not _KEY_RE.match(key):
                raise SpecError(
                    f"malformed option {part!r} in {text!r}: options are written key=value"
                )
            if key in options:
                raise SpecError(f"option {key!r} given twice in {text!r}")
            options[key] = value.strip()
    return Spec(name, options)


def split_list_option(values: Iterable[str]) -> list[str]:
    """Expand repeated and comma-separated list options into spec strings.

    A comma starts a new item unless what follows it is `key=value`, so
    `synthetic-image:seed=1,n=50,synthetic-video` is two items.
    """
    items: list[str] = []
    for value in values:
        current: str | None = None
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if current is not None and _KEY_VALUE_START.match(part):
                current += "," + part
            else:
                if current is not None:
                    items.append(current)
                current = part
        if current is not None:
            items.append(current)
    return items


# ---------------------------------------------------------------------------------------------
# typed configs

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a string option (or an already-typed Python value) to the field's type."""
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value in choices:
            return value
        as_str = str(value)
        for choice in choices:
            if str(choice) == as_str:
                return choice
        named = [str(c) for c in choices if str(c)]  # "" (unset) is a valid default, not a choice to offer
        raise SpecError(f"{where}: {value!r} is not one of {', '.join(named)}")
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            if type(None) in get_args(hint):
                return None
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, where)
            except SpecError as exc:
                errors.append(str(exc))
        raise SpecError(errors[0] if errors else f"{where}: cannot read {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        low = str(value).lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SpecError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise SpecError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise SpecError(f"{where}: expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            raise SpecError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        return str(value)
    return value


C = TypeVar("C")


def build_config(config_cls: type[C], options: dict[str, Any], owner: str, name: str = "NAME") -> C:
    """Build a config dataclass from option values; unknown keys list the known ones, missing required
    keys are named with an example spec (`name:key=...`)."""
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(config_cls)
    unknown = sorted(set(options) - set(fields))
    if unknown:
        known = ", ".join(fields) or "(none)"
        raise SpecError(f"unknown option {unknown[0]!r} for {owner}; known options: {known}")
    missing = [key for key, f in fields.items() if key not in options
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        example = ",".join(f"{key}=..." for key in missing)
        raise SpecError(f"{owner} needs option{'s' if len(missing) > 1 else ''} {', '.join(missing)}, e.g. {name}:{example}")
    kwargs = {
        key: _coerce(value, hints[key], f"{owner} option {key!r}") for key, value in options.items()
    }
    try:
        config = config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{owner}: {exc}") from None
    return config


def option_rows(config_cls: type) -> list[tuple[str, str, str]]:
    """(key, type, default) of each option of a config dataclass, for `evtp list NAME`; a Literal's type
    lists its choices, and a key without a default says it is required."""
    hints = typing.get_type_hints(config_cls)
    rows = []
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        hint = hints.get(f.name, f.type)
        if get_origin(hint) is Literal:
            kind = " | ".join(str(c) for c in get_args(hint) if str(c))
        else:
            kind = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        if f.default is not dataclasses.MISSING:
            default = repr(f.default) if isinstance(f.default, str) else str(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = str(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((f.name, kind, default))
    return rows


# ---------------------------------------------------------------------------------------------
# registries

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: a lazily imported `module:attr` target (or the object itself)."""

    name: str
    target: str | Callable[..., T]
    description: str

    def load(self) -> Any:
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attr = self.target.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)


class Registry(Generic[T]):
    """A typed name -> builder registry. Duplicate names are rejected; unknown names list the known.

    A target is a class or factory with a `Config` dataclass attribute; `build` parses the options
    into that config and calls `target(config)`.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str, target: str | Callable[..., T], description: str) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, target, description)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.entry_point_group or ""):
            if ep.name not in self._entries:
                self._entries[ep.name] = Entry(ep.name, ep.value, f"(plugin {ep.value})")

    def names(self) -> list[str]:
        self._load_entry_points()
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        self._load_entry_points()
        return list(self._entries.values())

    def entry(self, name: str) -> Entry[T]:
        self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries) or "(none)"
            raise SpecError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def load(self, name: str) -> Any:
        return self.entry(name).load()

    def build(self, spec: str | Spec, **overrides: Any) -> T:
        parsed = parse_spec(spec) if isinstance(spec, str) else spec
        target = self.load(parsed.name)
        options: dict[str, Any] = {**parsed.options, **overrides}
        config = build_config(target.Config, options, f"{self.kind} {parsed.name!r}", parsed.name)
        return target(config)

    def config_of(self, spec: str | Spec, **overrides: Any) -> Any:
        """Parse and validate a spec into its config without building the object."""
        parsed = parse_spec(spec) if isinstance(spec, str) else spec
        target = self.load(parsed.name)
        return build_config(target.Config, {**parsed.options, **overrides}, f"{self.kind} {parsed.name!r}", parsed.name)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries
