"""Command-line options from frozen config dataclasses: one option per field, its help the
docstring written under the field, its default the field's."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import cache


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass's source, by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) \
                and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.replace("``", "").split())
    return docs


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_options(parser: argparse._ActionsContainer, cls: type, skip: tuple[str, ...] = (),
                dest_prefix: str = "") -> None:
    """Add an option per field of ``cls`` (nested dataclass fields are skipped: add them with
    their own call and a ``dest_prefix``). Options default to ``argparse.SUPPRESS``, so the
    parsed namespace holds only what was typed; the help shows the field's default."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if f.name in skip or dataclasses.is_dataclass(kind):
            continue
        default = getattr(defaults, f.name)
        kw: dict = dict(dest=dest_prefix + f.name, default=argparse.SUPPRESS,
                        help=f"{docs.get(f.name, '')} (default: {_show(default)})")
        args = typing.get_args(kind)
        if kind is bool or set(args) == {bool, type(None)}:  # (bool | None: None if not typed)
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kw.update(nargs="+", type=args[0], metavar="N")
        elif type(None) in args:  # X | None: the value, or "none"
            (inner,) = [a for a in args if a is not type(None)]
            kw.update(type=_or_none(inner), metavar=inner.__name__.upper())
        else:
            kw.update(type=kind, metavar=kind.__name__.upper())
        parser.add_argument(option(f.name), **kw)


def _show(value) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return repr(value) if isinstance(value, str) else str(value)


def _or_none(kind: type):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = kind.__name__
    return parse


def split_prefixed(values: dict, prefix: str) -> tuple[dict, dict]:
    """(values without ``prefix``, the prefixed ones with it removed)."""
    plain = {k: v for k, v in values.items() if not k.startswith(prefix)}
    nested = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
    return plain, nested
