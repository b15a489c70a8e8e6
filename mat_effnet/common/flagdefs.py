"""absl flags derived from the library's config dataclasses.

A setting's default, type, allowed values and help text are defined once, on
its dataclass field (`setting`, here); this module turns the
fields into flags with the same flat names and turns parsed flags back into
the dataclass. The library declares its fields with `setting` and takes
dataclasses or plain arguments; only binaries define and read flags.

Field types map to flags as: bool -> DEFINE_bool, int -> DEFINE_integer,
float -> DEFINE_float, str with choices -> DEFINE_enum, str -> DEFINE_string,
tuple -> DEFINE_list. A field that is itself a dataclass is a section: its
fields become flags too (names are unique across sections).
"""

from __future__ import annotations

import dataclasses
import sys
import typing

from absl import flags



def setting(default, help: str, choices: tuple | None = None, **kwargs):  # noqa: A002
    """A config field with its flag's help text (and allowed values)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda: tuple(default), metadata=meta, **kwargs)
    return dataclasses.field(default=default, metadata=meta, **kwargs)

def _leaf_fields(cls) -> list[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out.extend(_leaf_fields(kind))
        else:
            out.append((f, kind))
    return out


def _base_type(kind):
    """int for ``int | None``, and so on."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return args[0] if args else str
    return typing.get_origin(kind) or kind


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _selected(cls, only, exclude):
    for f, kind in _leaf_fields(cls):
        if f.name in exclude or (only is not None and f.name not in only):
            continue
        yield f, kind


def define_flags(cls, flag_values=flags.FLAGS, *, only=None, exclude=(),
                 overrides: dict | None = None) -> list[str]:
    """Defines one flag per leaf field of ``cls`` (or of ``only``); returns their names.

    ``overrides`` replaces some defaults for this binary only (the demo's
    from-scratch recipe, say), without restating help texts or types.
    """
    overrides = overrides or {}
    # The flags belong to the binary that asked for them, so its --help lists them.
    caller = sys._getframe(1).f_globals.get("__name__", "")
    module_name = sys.argv[0] if caller == "__main__" else caller
    names = []
    for f, kind in _selected(cls, only, exclude):
        help_text = f.metadata.get("help", f.name)
        default = overrides.get(f.name, _default(f))
        base = _base_type(kind)
        choices = f.metadata.get("choices")
        where = {"flag_values": flag_values, "module_name": module_name}
        if base is bool:
            flags.DEFINE_bool(f.name, default, help_text, **where)
        elif choices:
            flags.DEFINE_enum(f.name, default, list(choices), help_text, **where)
        elif base is int:
            flags.DEFINE_integer(f.name, default, help_text, **where)
        elif base is float:
            flags.DEFINE_float(f.name, default, help_text, **where)
        elif base in (tuple, list):
            listed = None if default is None else [str(v) for v in default]
            flags.DEFINE_list(f.name, listed, help_text, **where)
        else:
            flags.DEFINE_string(f.name, default, help_text, **where)
        names.append(f.name)
    return names


def flat_values(cls, flag_values=flags.FLAGS, *, only=None, exclude=()) -> dict:
    """{field name: parsed flag value} for the leaf fields of ``cls`` (or of ``only``)."""
    out = {}
    for f, kind in _selected(cls, only, exclude):
        value = flag_values[f.name].value
        if _base_type(kind) in (tuple, list) and value is not None:
            # A list flag holds strings: give them the type of the default's items.
            sample = _default(f)
            item = type(sample[0]) if sample else str
            try:
                value = tuple(item(v) for v in value)
            except ValueError:
                value = tuple(value)  # left for the dataclass to refuse by name
        out[f.name] = value
    return out


def build(cls, flag_values=flags.FLAGS, *, only=None, exclude=(), **extra):
    """The nested dataclass ``cls`` from parsed flags (and ``extra`` fields)."""
    values = {**flat_values(cls, flag_values, only=only, exclude=exclude), **extra}
    return _nest(cls, values)


def _nest(cls, values: dict):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            kwargs[f.name] = _nest(kind, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)
