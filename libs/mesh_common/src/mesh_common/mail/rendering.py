"""Rendering mail templates safely: Jinja2 in an immutable sandbox with strict variables and limits.

Two environments per store, both :class:`jinja2.sandbox.ImmutableSandboxedEnvironment` with
``StrictUndefined`` (a misspelt variable is an error, never an empty string): one for the HTML
body with autoescaping, one for the subject and the text body without. Parts (signatures, layouts)
are included by name (``{% include "signature" %}``) and resolve to the part's text or HTML
variant to match the body being rendered.

The sandbox refuses access to internals (``{{ ''.__class__.__mro__ }}``) and to methods that
change data. On top, :class:`RenderLimits` bounds one render: output characters per field,
"operations" (loop iterations plus calls, so nested loops and recursive macros stop), the size
of strings built with ``*``, ``+``, ``~``, ``join`` and ``replace``, numeric arguments of
padding/wrapping filters, and exponents. Limits stop accidents and naive bombs; people with
write access to templates are still trusted not to craft resource exhaustion, and every change
is audited.

Failures become :class:`TemplateProblem` entries (template, field, line, kind, message), which the
store reports as one 422. This module must not touch the database.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from jinja2 import (
    BaseLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    nodes,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup
from pydantic import BaseModel

ProblemKind = Literal["syntax", "undefined", "security", "limit", "missing-part", "error"]
Variant = Literal["text", "html"]


class TemplateProblem(BaseModel):
    """One reason a template cannot be used."""

    template: str  # the template (or part) where it happened
    field: str  # subject | text | html
    line: int | None
    kind: ProblemKind
    message: str
    via: str | None = None  # the mail template being rendered when a part failed

    def describe(self) -> str:
        where = f"{self.template} {self.field}" + (f" line {self.line}" if self.line else "")
        return f"{where}: {self.message}" + (f" (rendering {self.via})" if self.via else "")


@dataclass(frozen=True)
class RenderLimits:
    """Bounds of one render (see the module docstring)."""

    max_output_chars: int = 1_000_000
    max_operations: int = 200_000
    max_string_chars: int = 1_000_000
    max_int_argument: int = 10_000
    max_exponent: int = 100


class RenderLimitExceeded(SecurityError):
    """A render went over one of its :class:`RenderLimits`."""


@dataclass
class _Budget:
    limits: RenderLimits
    operations: int = 0

    def spend(self, n: int = 1) -> None:
        self.operations += n
        if self.operations > self.limits.max_operations:
            raise RenderLimitExceeded(
                f"more than {self.limits.max_operations} loop iterations and calls"
            )


_budget: ContextVar[_Budget | None] = ContextVar("mesh_mail_render_budget", default=None)
_parts: ContextVar[Mapping[str, tuple[str, str | None]] | None] = ContextVar(
    "mesh_mail_render_parts", default=None
)

# Filters whose numeric arguments size their output or their work.
_SIZED_FILTERS = ("center", "indent", "wordwrap", "truncate", "batch", "slice", "format")
_SIZED_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "format"})
_WIDE_FORMAT = re.compile(r"\d{6,}")
# Compiled templates kept per environment (mail fields and included parts).
_CACHED_TEMPLATES = 256


def _finalize(value: Any) -> Any:
    # ``None`` prints as nothing, not "None" (optional fields in mails).
    return "" if value is None else value


class _PartLoader(BaseLoader):
    """Resolves ``{% include "name" %}`` to the text or HTML variant of a part."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant

    def get_source(
        self, environment: Any, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        part = (_parts.get() or {}).get(template)
        if part is None:
            raise TemplateNotFound(template, f"there is no part named {template!r}")
        index = 0 if self.variant == "text" else 1
        source = part[index]
        if source is None:
            raise TemplateNotFound(template, f"part {template!r} has no HTML variant")

        def uptodate() -> bool:
            # The compiled part stays cached while the parts in effect hold the same source.
            current = (_parts.get() or {}).get(template)
            return current is not None and current[index] == source

        return source, f"{template}:{self.variant}", uptodate


class MailEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with the render limits; one per variant (text / HTML)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, variant: Variant, limits: RenderLimits) -> None:
        super().__init__(
            undefined=StrictUndefined,
            autoescape=variant == "html",
            loader=_PartLoader(variant),
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=_finalize,
            # Included parts are cached and checked against the parts in effect at each use.
            cache_size=_CACHED_TEMPLATES,
            auto_reload=True,
        )
        self.limits = limits
        self._compiled: dict[tuple[str, str], Template] = {}
        self._compiled_lock = threading.Lock()
        self.globals.pop("lipsum", None)
        self.globals["range"] = self._range
        self.globals["_mesh_loop"] = self._loop
        self.globals["_mesh_concat"] = self._concat
        for name in _SIZED_FILTERS:
            self.filters[name] = self._guard_ints(self.filters[name])
        self.filters["join"] = self._guard_join(self.filters["join"])
        self.filters["replace"] = self._guard_replace(self.filters["replace"])

    # ------------------------------------------------------------------ limits

    def _check_int(self, value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > self.limits.max_int_argument:
                raise RenderLimitExceeded(
                    f"the number {value} is over the limit of {self.limits.max_int_argument}"
                )

    def _check_size(self, size: int) -> None:
        if size > self.limits.max_string_chars:
            raise RenderLimitExceeded(
                f"a value of {size} characters is over the limit of {self.limits.max_string_chars}"
            )

    def _check_format(self, fmt: Any) -> None:
        if isinstance(fmt, str) and _WIDE_FORMAT.search(fmt):
            raise RenderLimitExceeded("format widths of more than five digits are not allowed")

    def _range(self, *args: int) -> range:
        numbers = range(*args)
        if len(numbers) > self.limits.max_operations:
            raise RenderLimitExceeded(f"range of {len(numbers)} numbers is too long")
        return numbers

    def _loop(self, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = _budget.get()
        for item in iterable:
            if budget is not None:
                budget.spend()
            yield item

    def _concat(self, *values: Any) -> str:
        if self.autoescape and any(hasattr(v, "__html__") for v in values):
            result: str = Markup("").join(values)
        else:
            result = "".join(str(v) for v in values)
        self._check_size(len(result))
        return result

    def _guard_ints(self, func: Callable[..., Any]) -> Callable[..., Any]:
        skip = 2 if getattr(func, "jinja_pass_arg", None) is not None else 1

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            for value in (*args[skip:], *kwargs.values()):
                self._check_int(value)
            if func.__name__ == "do_format" and len(args) >= skip:
                self._check_format(args[skip - 1])
            return func(*args, **kwargs)

        return guarded

    def _guard_join(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def guarded(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
            items = list(value)
            self._check_size(len(str(d)) * len(items))
            return func(eval_ctx, items, d, attribute)

        return guarded

    def _guard_replace(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def guarded(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> Any:
            text = str(s)
            hits = text.count(str(old)) if str(old) else len(text) + 1
            self._check_size(len(text) + hits * len(str(new)))
            return func(eval_ctx, s, old, new, count)

        return guarded

    # ------------------------------------------------------------------ sandbox hooks

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget.get()
        if budget is not None:
            budget.spend()
        # str.format arrives wrapped by the sandbox (wrap_str_format); look through the wrapper.
        target = getattr(__obj, "__wrapped__", __obj)
        bound_to = getattr(target, "__self__", None)
        name = getattr(target, "__name__", "")
        if isinstance(bound_to, str):
            if name in _SIZED_METHODS:
                for value in (*args, *kwargs.values()):
                    __self._check_int(value)
                if name == "format":
                    __self._check_format(bound_to)
            elif name == "replace" and len(args) >= 2:
                old, new = str(args[0]), str(args[1])
                hits = bound_to.count(old) if old else len(bound_to) + 1
                __self._check_size(len(bound_to) + hits * len(new))
            elif name == "join" and args:
                items = list(args[0])
                __self._check_size(len(bound_to) * len(items))
                args = (items, *args[1:])
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > self.limits.max_exponent:
                raise RenderLimitExceeded(f"exponent {right} is over {self.limits.max_exponent}")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    self._check_size(len(seq) * n)
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                self._check_size(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            self._check_format(left)
            for value in right if isinstance(right, tuple) else (right,):
                if isinstance(value, str):
                    self._check_size(len(left) + len(value))
        return super().call_binop(context, operator, left, right)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Route every ``for`` loop through the operation budget and every ``~`` through the
        size check (both are plain Python in compiled templates, out of the sandbox's reach)."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(
                nodes.Name("_mesh_loop", "load"), [loop.iter], [], None, None
            ).set_lineno(loop.lineno)
        for parent in list(tree.find_all(nodes.Node)):
            for field, value in parent.iter_fields():
                if isinstance(value, nodes.Concat):
                    setattr(parent, field, self._concat_call(value))
                elif isinstance(value, list):
                    value[:] = [
                        self._concat_call(v) if isinstance(v, nodes.Concat) else v for v in value
                    ]
        return tree

    @staticmethod
    def _concat_call(node: nodes.Concat) -> nodes.Call:
        # The same list object: nested ``~`` inside it are rewritten in place later.
        call = nodes.Call(nodes.Name("_mesh_concat", "load"), node.nodes, [], None, None)
        call.set_lineno(node.lineno)
        return call

    # ------------------------------------------------------------------ compile and render

    def compile_named(self, source: str, name: str) -> Template:
        """Compile ``source`` under ``name`` (so errors report it with the line)."""
        code = self.compile(source, name=name, filename=name)
        return self.template_class.from_code(self, code, self.make_globals(None))

    def compile_cached(self, source: str, name: str) -> Template:
        """:meth:`compile_named`, remembered per (name, source): compiling costs far more than
        rendering (milliseconds per field), and a source only changes with a new version. The
        limits still apply: they are checked while rendering, through the current budget."""
        key = (name, source)
        template = self._compiled.get(key)
        if template is None:
            template = self.compile_named(source, name)
            with self._compiled_lock:  # renders may run in worker threads
                if len(self._compiled) >= _CACHED_TEMPLATES:
                    self._compiled.pop(next(iter(self._compiled)))  # the oldest entry
                self._compiled[key] = template
        return template

    def render_limited(self, template: Template, context: Mapping[str, Any]) -> str:
        """Render with the output cap (the caller holds the budget)."""
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(dict(context)):
            size += len(chunk)
            if size > self.limits.max_output_chars:
                raise RenderLimitExceeded(
                    f"the output is longer than {self.limits.max_output_chars} characters"
                )
            chunks.append(chunk)
        return "".join(chunks)


def _location(exc: BaseException, fallback: str) -> tuple[str, int | None]:
    """The innermost template frame of a render error (Jinja rewrites tracebacks to them)."""
    if isinstance(exc, TemplateSyntaxError):
        return exc.name or exc.filename or fallback, exc.lineno
    found: tuple[str, int | None] = (fallback, None)
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if ":" in filename and not filename.startswith(("/", "<")):
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def problem_of(exc: BaseException, name: str, field: str) -> TemplateProblem:
    """Turn a compile or render exception into a :class:`TemplateProblem`."""
    where, line = _location(exc, f"{name}:{field}")
    template, _, variant = where.partition(":")
    message = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    kind: ProblemKind
    if isinstance(exc, TemplateSyntaxError):
        kind, message = "syntax", exc.message or str(exc)
    elif isinstance(exc, RenderLimitExceeded):
        kind = "limit"
    elif isinstance(exc, SecurityError):
        kind = "security"
    elif isinstance(exc, UndefinedError):
        kind = "undefined"
    elif isinstance(exc, TemplateNotFound):
        kind = "missing-part"
    elif isinstance(exc, RecursionError):
        kind, message = "limit", "recursion too deep"
    else:
        kind, message = "error", f"{type(exc).__name__}: {message}"
    field_name = field if template == name else (variant or field)
    return TemplateProblem(
        template=template or name, field=field_name, line=line, kind=kind, message=message
    )


class Renderer:
    """Compiles and renders template sources with the parts in effect (no database)."""

    def __init__(
        self,
        limits: RenderLimits | None = None,
        *,
        filters: Mapping[str, Callable[..., Any]] | None = None,
        globals: Mapping[str, Any] | None = None,
    ) -> None:
        self.limits = limits or RenderLimits()
        self.text_env = MailEnvironment("text", self.limits)
        self.html_env = MailEnvironment("html", self.limits)
        for env in (self.text_env, self.html_env):
            env.filters.update(filters or {})
            env.globals.update(globals or {})

    def render_field(
        self,
        variant: Variant,
        name: str,
        field: str,
        source: str,
        context: Mapping[str, Any],
        parts: Mapping[str, tuple[str, str | None]],
    ) -> tuple[str | None, TemplateProblem | None]:
        """Render one field; returns (output, None) or (None, problem)."""
        env = self.text_env if variant == "text" else self.html_env
        budget_token = _budget.set(_Budget(self.limits))
        parts_token = _parts.set(parts)
        try:
            template = env.compile_cached(source, f"{name}:{field}")
            return env.render_limited(template, context), None
        except Exception as exc:  # every failure of an untrusted template is reported, not raised
            return None, problem_of(exc, name, field)
        finally:
            _parts.reset(parts_token)
            _budget.reset(budget_token)
