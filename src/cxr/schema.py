"""The machinery of the typed params tree (:mod:`cxr.config` holds the tree itself): the
:class:`Section` base every section model derives from, :func:`parse` and the translation of
pydantic's errors into one :class:`ConfigError` whose message names the key, what was found and what
was expected, and :func:`read_yaml`, which refuses what DVC refuses (a key given twice) and names the
line of bad YAML.
"""

from __future__ import annotations

import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

S = TypeVar("S", bound="Section")
Fraction = Annotated[float, Field(ge=0, le=1)]  # a probability or a share
NonNegative = Annotated[int, Field(ge=0)]


class ConfigError(ValueError):
    """A params.yaml value is missing, unknown or of the wrong type; ``problems`` lists each one."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class Section(BaseModel):
    """A section of params.yaml (or a nested part of one): unknown keys refused, values converted the way
    ``dvc exp run -S`` writes them. Built from params with :func:`parse`, whose errors name the key
    (calling the class directly, as code does with known values, raises pydantic's ValidationError)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_by_name=True)

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes``, validated again."""
        return parse(type(self), {**self.model_dump(), **changes})


def parse(cls: type[S], data: Any, where: str = "") -> S:
    """``cls`` from ``data`` (a mapping, or None for all defaults); errors name ``where``.key."""
    try:
        return cls.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise config_error(exc, cls, where) from None


def section(params: dict[str, Any], name: str, cls: type[S]) -> S:
    """The model of top-level section ``name`` of ``params``."""
    return parse(cls, params.get(name) or {}, name)


# --------------------------------------------------------------------------------------------
# pydantic's errors -> one message a user can act on
# --------------------------------------------------------------------------------------------

_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "tuple": "a list",
    "dict": "a mapping",
    "model": "a mapping",
}


def config_error(exc: ValidationError, cls: type[BaseModel], where: str) -> ConfigError:
    """One ConfigError for all of ``exc``'s errors, each naming its key; unknown keys grouped per section, and
    the members of a union (``train.calibrate``: true, false or auto) said as one key's alternatives."""
    messages: list[str] = []
    unknown: dict[tuple[Any, ...], list[str]] = {}
    alternatives: dict[tuple[Any, ...], tuple[list[str], Any]] = {}  # a union field's loc -> (expected, found)
    for err in exc.errors(include_url=False):
        if err["type"] == "extra_forbidden":
            unknown.setdefault(err["loc"][:-1], []).append(str(err["loc"][-1]))
        elif _union_member(cls, err["loc"]):  # pydantic names the member tried: ('train', 'calibrate', 'bool')
            expected, _ = alternatives.setdefault(err["loc"][:-1], ([], err.get("input")))
            expected.append(_expected(err) or err["msg"])
        else:
            messages.append(_message(err, cls, where))
    for loc, (expected, found) in alternatives.items():
        messages.append(f"{_path(where, loc)}: expected {_either(expected)}, found {short(found)}")
    for parent, keys in unknown.items():
        model = _model_at(cls, parent)
        valid = sorted(model.model_fields) if model else []
        messages.insert(
            0, f"{_path(where, parent) or cls.__name__}: unknown key(s) {few(keys)}; valid keys are {valid}"
        )
    problems = list(dict.fromkeys(messages))
    return ConfigError("; ".join(problems), problems)


SHOWN_KEYS = 5  # unknown keys named in a message; 10,000 of them used to make one line of 199 KB
_SHORT = reprlib.Repr()  # a value found in params.yaml may be a 1 MB string or a huge list
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6
_SHORT.maxlevel = 2


def few(keys: list[str]) -> str:
    """The first :data:`SHOWN_KEYS` of ``keys`` (sorted), and how many more."""
    keys = sorted(keys)
    more = f" and {len(keys) - SHOWN_KEYS:,} more" if len(keys) > SHOWN_KEYS else ""
    return f"{keys[:SHOWN_KEYS]}{more}"


def short(value: Any) -> str:
    """``repr(value)``, cut short (:data:`_SHORT`)."""
    return _SHORT.repr(value)


def _path(where: str, loc: tuple[Any, ...]) -> str:
    out = where
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else (f"{out}.{part}" if out else str(part))
    return out


def _expected(err: ErrorDetails) -> str | None:
    """What the value should have been, in words: pydantic's own list of a Literal's values, else the type."""
    if err["type"] == "literal_error":
        return str((err.get("ctx") or {}).get("expected", "")) or None
    return _EXPECTED.get(err["type"].split("_")[0])


def _message(err: ErrorDetails, cls: type[BaseModel], where: str) -> str:
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx") or {}
    path = _path(where, loc) or where or cls.__name__
    found = err.get("input")
    if kind == "value_error":  # a validator's own sentence, written to follow the key
        text = str(ctx.get("error", err["msg"]))
        if not loc:
            return f"{where}: {text}" if where else text
        return f"{path} {text}" if text.startswith("must") else f"{path}: {text}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"{path} must be {bounds[kind]} {limit}, found {short(found)}"
    if kind == "missing":
        return f"{path}: missing"
    if kind in ("too_short", "too_long"):
        return f"{path}: expected {ctx.get('max_length') or ctx.get('min_length')} values, found {short(found)}"
    if expected := _expected(err):
        return f"{path}: expected {expected}, found {short(found)}"
    return f"{path}: {err['msg']}, found {short(found)}"


def _either(choices: list[str]) -> str:
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model found at ``loc`` below ``cls`` (None where loc leaves the models); the keys of a
    mapping of sections (``models.<name>``) and list indices are stepped over."""
    model: type[BaseModel] | None = cls
    parts = [p for p in loc if not isinstance(p, int)]
    while parts and model is not None:
        part = parts.pop(0)
        if part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        if typing.get_origin(annotation) is dict and parts:
            parts.pop(0)  # the mapping's key
        inner = [t for t in _flatten_type(annotation) if isinstance(t, type)]
        model = next((t for t in inner if issubclass(t, BaseModel)), None)
    return model


def _flatten_type(tp: Any) -> list[Any]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Annotated:
        return _flatten_type(args[0])
    return [a for arg in args for a in _flatten_type(arg)] if args else [tp]


def _union_member(cls: type[BaseModel], loc: tuple[Any, ...]) -> bool:
    """Whether ``loc`` ends in the member of a union field that pydantic tried (its tag, e.g. ``bool``), not
    in a key: the field before it is a union of more than a type and None."""
    if len(loc) < 2 or not isinstance(loc[-1], str):
        return False
    model = _model_at(cls, loc[:-2])
    field = model.model_fields.get(str(loc[-2])) if model else None
    if field is None or typing.get_origin(field.annotation) not in (typing.Union, types.UnionType):
        return False
    return len([t for t in typing.get_args(field.annotation) if t is not type(None)]) > 1


# --------------------------------------------------------------------------------------------
# Loading the file
# --------------------------------------------------------------------------------------------


MAX_DEPTH = 32  # params.yaml nests 4 deep; 5,000 levels used to end in a RecursionError of 3,000 lines


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses what params.yaml never needs and a hostile file uses: a key given twice in
    one mapping (PyYAML keeps the last one without a word, `lr: 0.1` ... `lr: 0.001` trains with 0.001,
    where DVC refuses the file), anchors and aliases (nine levels of aliases expand to gigabytes: an
    alias bomb), and nesting over :data:`MAX_DEPTH`; each refused as its node is composed, before
    anything is built from it."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            what = f"alias *{event.anchor}" if isinstance(event, yaml.AliasEvent) else f"anchor &{event.anchor}"
            raise yaml.composer.ComposerError(
                None, None, f"found the YAML {what}: params.yaml takes no anchors or aliases", event.start_mark
            )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"found nesting over {MAX_DEPTH} levels deep: params.yaml nests a few", event.start_mark
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {first})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _hint(problem: str, name: str) -> str:
    if re.search(r"'\\t'|\btabs?\b", problem):
        return "Fix: YAML indents with spaces only; replace the tabs"
    if "appears twice" in problem:
        return "Fix: keep one of them"
    if "anchor" in problem or "alias" in problem:
        return "Fix: write the values out where the alias stands"
    if "levels deep" in problem:
        return f"Fix: the file is damaged or was generated by mistake; restore it (git checkout {name})"
    return "Fix: correct the YAML there (an unclosed quote or bracket, a missing colon, bad indentation)"


def _line_column(text: str, position: int) -> str:
    line_start = text.rfind("\n", 0, position) + 1
    return f"line {text.count(chr(10), 0, position) + 1}, column {position - line_start + 1}"


def read_yaml(path: str | Path) -> Any:
    """A YAML file (params.yaml, a configs/ recipe) as Python data; bad YAML is a ConfigError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path} (run from the repository root, or pass --params)")
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.reader.ReaderError as exc:  # a NUL or other control character: no mark, a position
        raise ConfigError(
            f"{path} {_line_column(text, exc.position)}: not valid YAML: the character #x{exc.character:04x} "
            "(a control character), expected printable text. Fix: the file is damaged or binary; remove the "
            f"character, or restore the file (git checkout {path.name})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{where}: not valid YAML: {' '.join(problem.split())}. {_hint(problem, path.name)}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
