"""A Jinja2 sandbox with limits on time, value size and output size, for untrusted rubric templates.

jinja2's `ImmutableSandboxedEnvironment` blocks attribute tricks but not resource use: ``{{ 9**9**9 }}``
is one C call that holds the interpreter lock for minutes (no timer thread or signal can stop it),
``{{ 'x'*10**10 }}`` allocates 10 GB, nested loops run for hours. So every operation that can grow a
value is checked *before* it runs (the sandbox routes intercepted operators to `call_binop`, and
intercepted operators are never constant-folded at compile time), and everything that can repeat
(loop iterations, calls of functions, methods, macros and filters) checks a per-render deadline:

- ``*``, ``**``, ``+``, ``%``: integer results at most `MAX_INT_BITS` bits, strings and lists at
  most `MAX_VALUE` items; ``~`` concatenation and every call or filter result at most `MAX_VALUE`;
- integer arguments of calls and filters (widths, counts) at most `MAX_VALUE`; ``replace``,
  ``indent`` and ``join`` are bounded from their inputs before they run; format strings may not
  hold a 7-digit width;
- the rendered text at most `MAX_OUTPUT` characters, the whole render at most `RENDER_SECONDS`.

A template that trips one gets `TemplateLimit`; `rlaif.judging.templates.render` turns it into a
one-line RubricError naming the rubric file and template line.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_OUTPUT = 1_000_000  # characters of rendered text
MAX_VALUE = 1_000_000  # characters / items of any value a template builds
MAX_INT_BITS = 32_768  # about 10,000 decimal digits
RENDER_SECONDS = 2.0  # one render, wall clock
_BIG_WIDTH = re.compile(r"\d{7,}")
_state = threading.local()  # .deadline of the render running on this thread


class TemplateLimit(SecurityError):
    """A template exceeded a resource limit (the message says which)."""


def tick() -> None:
    """Raise TemplateLimit once this thread's render is past its deadline."""
    deadline = getattr(_state, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateLimit(f"rendering took longer than {RENDER_SECONDS:g} s")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set)) else 0


def _check_value(value: Any, what: str = "a value") -> Any:
    if _size(value) > MAX_VALUE:
        raise TemplateLimit(f"{what} longer than {MAX_VALUE:,} items")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimit(f"an integer over {MAX_INT_BITS:,} bits")
    return value


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would exceed the limits, before computing it."""
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
        if right * left.bit_length() > MAX_INT_BITS:
            raise TemplateLimit(f"'**' result over {MAX_INT_BITS:,} bits")
    elif operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"'*' result over {MAX_INT_BITS:,} bits")
        elif isinstance(left, int) or isinstance(right, int):
            count, seq = (left, right) if isinstance(left, int) else (right, left)
            if count > 0 and _size(seq) * count > MAX_VALUE:
                raise TemplateLimit(f"'*' result longer than {MAX_VALUE:,} items")
    elif operator == "+" and _size(left) + _size(right) > MAX_VALUE:
        raise TemplateLimit(f"'+' result longer than {MAX_VALUE:,} items")
    elif operator == "%" and isinstance(left, str):
        _check_format(left)
        args = right if isinstance(right, tuple) else (right,)
        if "*" in left:
            _check_ints(args)


def _check_format(text: str) -> None:
    if _BIG_WIDTH.search(text):
        raise TemplateLimit("a format width of 7 or more digits")


def _check_ints(args: Iterable[Any]) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_VALUE:
            raise TemplateLimit(f"an argument over {MAX_VALUE:,}")


def _strings(args: Iterable[Any]) -> list[str]:
    return [arg for arg in args if isinstance(arg, str)]


def _check_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], first: int = 0) -> None:
    """Bound the result of the calls and filters that multiply their input, before they run
    (``first``: the index of the first argument that is not the value itself)."""
    _check_ints(list(args[first:]) + list(kwargs.values()))
    texts = _strings(args) + _strings(kwargs.values())
    if name == "replace" and len(texts) >= 3:
        text, old, new = texts[:3]
        if len(text) + (text.count(old) if old else len(text) + 1) * len(new) > MAX_VALUE:
            raise TemplateLimit(f"'replace' result longer than {MAX_VALUE:,} characters")
    elif name == "indent" and texts:
        width = max([len(t) for t in texts[1:]] + [a for a in args[1:] if isinstance(a, int)] + [4])
        if (texts[0].count("\n") + 1) * (width + 1) + len(texts[0]) > MAX_VALUE:
            raise TemplateLimit(f"'indent' result longer than {MAX_VALUE:,} characters")
    elif name == "join":
        for sequence in (a for a in args if isinstance(a, (list, tuple))):
            sep = max((len(t) for t in texts), default=0)
            if sum(_size(x) or 8 for x in sequence) + sep * len(sequence) > MAX_VALUE:
                raise TemplateLimit(f"'join' result longer than {MAX_VALUE:,} characters")
    elif name in ("format", "format_map") and texts:
        _check_format(texts[0])


def _guard_filter(name: str, func: Any) -> Any:
    first = 2 if getattr(func, "jinja_pass_arg", None) else 1  # after the context (if passed) and the value

    @functools.wraps(func)  # keeps jinja_pass_arg (pass_context, ...)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        _check_call(name, args, kwargs, first)
        return _check_value(func(*args, **kwargs), f"filter '{name}' result")
    return guarded


class _Guards(NodeTransformer):
    """Route loop iterables and ``~`` concatenations through the environment's checks."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("guard_iter"), [node.iter], [], None, None,
                               lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.EnvironmentAttribute("guard_value"), [node], [], None, None, lineno=node.lineno)


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the limits in this module's docstring."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _guard_filter(name, func) for name, func in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        tick()
        _check_binop(operator, left, right)
        return _check_value(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's API)
        tick()
        name = getattr(__obj, "__name__", "")
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)  # str.format is wrapped
        if isinstance(owner, str):  # str methods: replace, join, center, format, ...
            if name == "join" and args and not isinstance(args[0], (list, tuple)):
                args = (_check_value(list(args[0])), *args[1:])
            _check_call(name, (owner, *args), kwargs, 1)
        else:
            _check_ints(list(args) + list(kwargs.values()))
        return _check_value(ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs),
                            f"'{name or 'call'}' result")

    def guard_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Loop items, checking the deadline before each."""
        for item in iterable:
            tick()
            yield item

    def guard_value(self, value: Any) -> Any:
        tick()
        return _check_value(value, "a '~' result")

    def limited_template(self, source: str) -> Any:
        """Compile ``source`` with loops and concatenations guarded (TemplateSyntaxError as usual)."""
        return self.from_string(_Guards().visit(self.parse(source)))


def render_limited(template: Any, variables: dict[str, Any]) -> str:
    """Render with a deadline of `RENDER_SECONDS` and at most `MAX_OUTPUT` characters."""
    previous = getattr(_state, "deadline", None)
    _state.deadline = time.monotonic() + RENDER_SECONDS
    try:
        out, size = [], 0
        for chunk in template.generate(**variables):
            tick()
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise TemplateLimit(f"rendered text longer than {MAX_OUTPUT:,} characters")
            out.append(chunk)
        return "".join(out)
    finally:
        _state.deadline = previous
