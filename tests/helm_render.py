"""A renderer for the part of Helm's template language that deploy/helm/ragraft uses,
so that the tests can render the chart where helm itself cannot be installed.

It follows Helm (Go's text/template with Sprig's functions) where the chart relies on
it, including two of its traps: numbers read from values.yaml are floats (Helm decodes
values as JSON), so `until .Values.n` fails as it does in Helm and `until (int
.Values.n)` is needed; and `{{-` / `-}}` trim all white space, newlines included.

Anything outside the subset is refused with a TemplateError naming it (an unknown
function or keyword, a field of nothing, printing a nil value, a map or a list,
comparing a number with a string), so a template that would render differently in
Helm fails its test here instead of rendering wrong.  Deliberately stricter than
Helm: a nil value is an error when printed (Helm prints nothing), and `.Files.Get`
of a file that is not there is an error (Helm returns "").

Supported: text with `{{ }}` actions, `{{- -}}` trimming and `{{/* */}}` comments;
`if` / `else if` / `else` / `end`; `range` over a list or a map, with `$i, $e :=` or
`$e :=`, and `else`; `define` and `include`; `$var :=`; fields of `.`, `$` and
variables (`.Values`, `.Release`, `.Chart`, `.Files.Get`); string, number and boolean
literals; parenthesised pipelines; pipes; the functions in FUNCTIONS.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class TemplateError(Exception):
    """The template uses something this renderer does not support, or fails as it
    would in Helm (a nil field access, a wrong argument type, `fail`)."""


class TemplateFail(TemplateError):
    """The chart's own `fail` or `required`: its message is meant for the user."""


# ------------------------------------------------------------------ values


def helm_values(value: Any) -> Any:
    """Values as Helm sees them: every number a float (they are decoded as JSON)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): helm_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [helm_values(v) for v in value]
    raise TemplateError(f"values: {value!r} is not a YAML scalar, list or map")


def merge_values(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`helm -f override.yaml`: maps merge key by key, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def truthy(value: Any) -> bool:
    """text/template's truth: false, 0, nil and empty strings, lists and maps are false."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str | list | dict | tuple):
        return len(value) > 0
    return True


def go_float(value: float) -> str:
    """fmt's %v of a float64 for the whole numbers below 1e6 the chart prints (larger
    ones print as 1e+06 in Helm: refused rather than guessed)."""
    if value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    raise TemplateError(f"printing the float {value!r} is outside this renderer's subset")


def strval(value: Any) -> str:
    """A value as Go's fmt prints it, for the kinds a chart prints."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if value is None:
        raise TemplateError("printing a nil value (a missing key in values.yaml?)")
    raise TemplateError(f"printing a {type(value).__name__} ({value!r}); use toYaml")


def go_quote(text: str) -> str:
    """Go's %q of a string (the escapes a chart's strings need)."""
    return json.dumps(text, ensure_ascii=False)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "nil"
    raise TemplateError(f"cannot compare a {type(value).__name__}")


def _comparable(a: Any, b: Any, op: str) -> None:
    if _kind(a) != _kind(b):
        raise TemplateError(
            f"{op}: incompatible types for comparison ({_kind(a)} {a!r}, {_kind(b)} {b!r}); "
            "convert with int"
        )


def _go_int(value: Any, what: str) -> int:
    """An argument a Go function declares as int: a float (any number from values)
    is refused, as Helm refuses it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TemplateError(
            f"{what}: wrong type for value; expected int; got {_kind(value)} {value!r} "
            "(numbers from values are floats: convert with int)"
        )
    return value


def _to_int(value: Any) -> int:
    """Sprig's toInt / int: numbers truncate, numeric strings parse, the rest is 0."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            return 0
    return 0


def _plain(value: Any) -> Any:
    """For toYaml: whole floats back to ints, as sigs.k8s.io/yaml writes them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    text = yaml.safe_dump(_plain(value), default_flow_style=False, sort_keys=True)
    return text.removesuffix("\n").removesuffix("\n...")


def _indent(width: Any, text: Any) -> str:
    pad = " " * _go_int(width, "indent")
    return pad + strval(text).replace("\n", "\n" + pad)


def _printf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise TemplateError("printf: the format must be a string")
    values = list(args)
    out: list[str] = []
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        verb = fmt[i + 1 : i + 2]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        if not values:
            raise TemplateError(f"printf {fmt!r}: too few arguments")
        value = values.pop(0)
        if verb in ("s", "v"):
            out.append(strval(value))
        elif verb == "d":
            out.append(str(_go_int(value, "printf %d")))
        elif verb == "q":
            out.append(go_quote(strval(value)))
        else:
            raise TemplateError(f"printf: the verb %{verb} is outside this renderer's subset")
    if values:
        raise TemplateError(f"printf {fmt!r}: too many arguments")
    return "".join(out)


def _default(default: Any, *given: Any) -> Any:
    if not given or not truthy(given[0]):
        return default
    return given[0]


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise TemplateError("eq: needs at least two arguments")
    for b in others:
        _comparable(a, b, "eq")
        if a == b:
            return True
    return False


def _ne(a: Any, b: Any) -> bool:
    _comparable(a, b, "ne")
    return bool(a != b)


def _ordered(op: str, test: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        _comparable(a, b, op)
        if isinstance(a, bool) or a is None:
            raise TemplateError(f"{op}: invalid type for comparison")
        return test(a, b)

    return compare


def _until(count: Any) -> list[int]:
    return list(range(_go_int(count, "until")))


def _trunc(length: Any, text: Any) -> str:
    n = _go_int(length, "trunc")
    if n < 0:
        raise TemplateError("trunc with a negative length is outside this renderer's subset")
    return strval(text)[:n]


def _fail(message: Any) -> str:
    raise TemplateFail(strval(message))


def _required(message: Any, value: Any) -> Any:
    if value is None or value == "":
        raise TemplateFail(strval(message))
    return value


def _join(separator: Any, items: Any) -> str:
    if not isinstance(items, list):
        raise TemplateError("join: the second argument must be a list")
    return strval(separator).join(strval(item) for item in items)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "quote": lambda *args: " ".join(go_quote(strval(a)) for a in args if a is not None),
    "default": _default,
    "indent": _indent,
    "nindent": lambda width, text: "\n" + _indent(width, text),
    "toYaml": to_yaml,
    "b64enc": lambda text: base64.b64encode(strval(text).encode()).decode(),
    "printf": _printf,
    "int": _to_int,
    "add": lambda *args: sum(_to_int(a) for a in args),
    "sub": lambda a, b: _to_int(a) - _to_int(b),
    "trunc": _trunc,
    "trimSuffix": lambda suffix, text: strval(text).removesuffix(strval(suffix)),
    "until": _until,
    "not": lambda value: not truthy(value),
    "eq": _eq,
    "ne": _ne,
    "lt": _ordered("lt", lambda a, b: a < b),
    "gt": _ordered("gt", lambda a, b: a > b),
    "le": _ordered("le", lambda a, b: a <= b),
    "ge": _ordered("ge", lambda a, b: a >= b),
    "fail": _fail,
    "required": _required,
    "join": _join,
}
LAZY = ("and", "or", "include")  # evaluated by the renderer itself


# ------------------------------------------------------------------ lexing

_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.DOTALL)
_SPACE = " \t\r\n"


def _split(source: str, name: str) -> list[tuple[str, str, int]]:
    """Text and actions, `{{-` / `-}}` applied: (kind, body, line)."""
    parts: list[tuple[str, str, int]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[pos : match.start()]
        if trim_next:
            text = text.lstrip(_SPACE)
        if match.group(1):
            text = text.rstrip(_SPACE)
        if text:
            parts.append(("text", text, source.count("\n", 0, pos) + 1))
        parts.append(("action", match.group(2).strip(), source.count("\n", 0, match.start()) + 1))
        trim_next = bool(match.group(3))
        pos = match.end()
    rest = source[pos:]
    if trim_next:
        rest = rest.lstrip(_SPACE)
    if "{{" in rest or "}}" in rest:
        raise TemplateError(
            f"{name}: an unclosed or stray {{{{ }}}} after line {source.count(chr(10), 0, pos) + 1}"
        )
    if rest:
        parts.append(("text", rest, source.count("\n", 0, pos) + 1))
    return parts


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<declare>:=)
  | (?P<assign>=)
  | (?P<punct>[()|,])
  | (?P<variable>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    spaced: bool = False  # white space before it (`(x) .A` is two operands, `(x).A` one)


def _tokens(body: str, where: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while pos < len(body):
        match = _TOKEN.match(body, pos)
        if match is None:
            raise TemplateError(f"{where}: cannot read {body[pos:]!r} in {{{{ {body} }}}}")
        kind = match.lastgroup or ""
        if kind != "space":
            out.append(Token(kind, match.group(), pos > 0 and body[pos - 1] in _SPACE))
        pos = match.end()
    return out


# ------------------------------------------------------------------ parsing


@dataclass
class Operand:
    kind: str  # literal, field, variable, ident, pipeline
    value: Any
    path: tuple[str, ...] = ()


@dataclass
class Pipeline:
    commands: list[list[Operand]]
    declare: tuple[str, ...] = ()
    where: str = ""


@dataclass
class Node:
    kind: str  # text, output, if, range
    text: str = ""
    pipeline: Pipeline | None = None
    branches: list[tuple[Pipeline, list[Node]]] = field(default_factory=list)
    body: list[Node] = field(default_factory=list)
    otherwise: list[Node] = field(default_factory=list)


class _Parser:
    def __init__(self, tokens: list[Token], where: str) -> None:
        self.tokens, self.pos, self.where = tokens, 0, where

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise TemplateError(f"{self.where}: the action ends too early")
        self.pos += 1
        return token

    def pipeline(self, allow_declare: int = 1) -> Pipeline:
        declare: tuple[str, ...] = ()
        names: list[str] = []
        save = self.pos
        while True:  # `$a :=` or `$a, $b :=`
            token = self.peek()
            if token is None or token.kind != "variable" or "." in token.text:
                break
            names.append(token.text)
            self.pos += 1
            after = self.peek()
            if after is not None and after.kind == "punct" and after.text == ",":
                self.pos += 1
                continue
            if after is not None and after.kind == "declare":
                self.pos += 1
                if len(names) > allow_declare:
                    raise TemplateError(f"{self.where}: too many variables declared")
                declare = tuple(names)
            elif after is not None and after.kind == "assign":
                raise TemplateError(f"{self.where}: `=` (re-assignment) is outside the subset")
            break
        if not declare:
            self.pos = save
        commands = [self.command()]
        while (token := self.peek()) is not None and token.kind == "punct" and token.text == "|":
            self.pos += 1
            commands.append(self.command())
        return Pipeline(commands, declare, self.where)

    def command(self) -> list[Operand]:
        operands: list[Operand] = []
        while (token := self.peek()) is not None:
            if token.kind == "punct" and token.text in "|)":
                break
            operands.append(self.operand())
        if not operands:
            raise TemplateError(f"{self.where}: an empty command")
        return operands

    def operand(self) -> Operand:
        token = self.take()
        if token.kind == "string":
            return Operand("literal", json.loads(token.text))
        if token.kind == "raw":
            return Operand("literal", token.text[1:-1])
        if token.kind == "number":
            text = token.text
            return Operand("literal", float(text) if "." in text else int(text))
        if token.kind == "field":
            path = tuple(p for p in token.text.split(".") if p)
            return Operand("field", None, path)
        if token.kind == "variable":
            name, *path = token.text.split(".")
            return Operand("variable", name, tuple(path))
        if token.kind == "ident":
            if token.text in ("true", "false"):
                return Operand("literal", token.text == "true")
            if token.text == "nil":
                return Operand("literal", None)
            return Operand("ident", token.text)
        if token.kind == "punct" and token.text == "(":
            inner = self.pipeline(allow_declare=0)
            closing = self.take()
            if closing.text != ")":
                raise TemplateError(f"{self.where}: expected ) but found {closing.text!r}")
            after = self.peek()
            if after is not None and after.kind == "field" and not after.spaced:
                raise TemplateError(f"{self.where}: a field of a (pipeline) is outside the subset")
            return Operand("pipeline", inner)
        raise TemplateError(f"{self.where}: unexpected {token.text!r}")

    def done(self) -> None:
        if self.peek() is not None:
            raise TemplateError(f"{self.where}: unexpected {self.peek()!r} at the end")


_UNSUPPORTED = ("with", "template", "block", "break", "continue", "tpl")


def parse(source: str, name: str) -> tuple[list[Node], dict[str, list[Node]]]:
    """A template's nodes and the templates it defines."""
    parts = _split(source, name)
    defines: dict[str, list[Node]] = {}
    stack: list[tuple[str, Node | None, list[Node], str]] = []  # (keyword, node, body, name)
    top: list[Node] = []
    current = top
    for kind, body, line in parts:
        where = f"{name}:{line}"
        if kind == "text":
            current.append(Node("text", text=body))
            continue
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise TemplateError(f"{where}: a comment must end with */ right before }}}}")
            continue
        tokens = _tokens(body, where)
        if not tokens:
            raise TemplateError(f"{where}: an empty action")
        head = tokens[0]
        keyword = head.text if head.kind == "ident" else ""
        if keyword in _UNSUPPORTED:
            raise TemplateError(f"{where}: {keyword!r} is outside this renderer's subset")
        if keyword == "if":
            parser = _Parser(tokens[1:], where)
            node = Node("if")
            node.branches.append((parser.pipeline(), []))
            parser.done()
            current.append(node)
            stack.append(("if", node, current, ""))
            current = node.branches[-1][1]
        elif keyword == "range":
            parser = _Parser(tokens[1:], where)
            node = Node("range", pipeline=parser.pipeline(allow_declare=2))
            parser.done()
            current.append(node)
            stack.append(("range", node, current, ""))
            current = node.body
        elif keyword == "else":
            if not stack or stack[-1][0] not in ("if", "range", "else"):
                raise TemplateError(f"{where}: else without if or range")
            keyword_open, node, parent, _ = stack[-1]
            assert node is not None
            if len(tokens) > 1 and tokens[1].text == "if":
                if node.kind != "if" or node.otherwise:
                    raise TemplateError(f"{where}: else if after else, or in a range")
                parser = _Parser(tokens[2:], where)
                node.branches.append((parser.pipeline(), []))
                parser.done()
                current = node.branches[-1][1]
            elif len(tokens) == 1:
                if keyword_open == "else":
                    raise TemplateError(f"{where}: a second else")
                stack[-1] = ("else", node, parent, "")
                current = node.otherwise
            else:
                raise TemplateError(f"{where}: else {tokens[1].text!r} is outside the subset")
        elif keyword == "end":
            if len(tokens) != 1 or not stack:
                raise TemplateError(f"{where}: end without a block")
            keyword_open, node, parent, define_name = stack.pop()
            if keyword_open == "define":
                defines[define_name] = current
            current = parent
        elif keyword == "define":
            if len(tokens) != 2 or tokens[1].kind != "string" or stack:
                raise TemplateError(f'{where}: write {{{{ define "name" }}}} at the top level')
            define_name = json.loads(tokens[1].text)
            if define_name in defines:
                raise TemplateError(f"{where}: {define_name!r} is defined twice")
            stack.append(("define", None, current, define_name))
            current = []
        else:
            parser = _Parser(tokens, where)
            pipeline = parser.pipeline()
            parser.done()
            current.append(Node("output", pipeline=pipeline))
    if stack:
        raise TemplateError(f"{name}: {stack[-1][0]} without end")
    return top, defines


# ------------------------------------------------------------------ evaluation


class Files:
    """`.Files`: the chart's own files (Helm reads nothing outside the chart)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def Get(self, name: Any) -> str:  # Helm's name for it
        path = (self.root / strval(name)).resolve()
        if self.root.resolve() not in path.parents:
            raise TemplateError(f".Files.Get {name!r}: outside the chart")
        if not path.is_file():
            raise TemplateError(f".Files.Get {name!r}: no such file in the chart")
        return path.read_text(encoding="utf-8")


class _Method:
    def __init__(self, function: Callable[..., Any], name: str) -> None:
        self.function, self.name = function, name


class Renderer:
    def __init__(self, defines: dict[str, list[Node]]) -> None:
        self.defines = defines

    def render(self, nodes: list[Node], dot: Any) -> str:
        return self._block(nodes, dot, [{"$": dot}])

    def _block(self, nodes: list[Node], dot: Any, scopes: list[dict[str, Any]]) -> str:
        out: list[str] = []
        scopes = [*scopes, {}]
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "output":
                assert node.pipeline is not None
                value = self._pipeline(node.pipeline, dot, scopes)
                if node.pipeline.declare:
                    scopes[-1][node.pipeline.declare[0]] = value
                else:
                    out.append(strval(value))
            elif node.kind == "if":
                for condition, body in node.branches:
                    if truthy(self._pipeline(condition, dot, scopes)):
                        out.append(self._block(body, dot, scopes))
                        break
                else:
                    out.append(self._block(node.otherwise, dot, scopes))
            elif node.kind == "range":
                out.append(self._range(node, dot, scopes))
        return "".join(out)

    def _range(self, node: Node, dot: Any, scopes: list[dict[str, Any]]) -> str:
        assert node.pipeline is not None
        items = self._pipeline(node.pipeline, dot, scopes)
        pairs: list[tuple[Any, Any]]
        if items is None:
            pairs = []
        elif isinstance(items, list):
            pairs = list(enumerate(items))
        elif isinstance(items, dict):
            pairs = [(k, items[k]) for k in sorted(items)]
        else:
            raise TemplateError(f"{node.pipeline.where}: range over a {_kind(items)}")
        if not pairs:
            return self._block(node.otherwise, dot, scopes)
        names = node.pipeline.declare
        out = []
        for key, element in pairs:
            frame: dict[str, Any] = {}
            if len(names) == 1:
                frame[names[0]] = element
            elif len(names) == 2:
                frame[names[0]], frame[names[1]] = key, element
            out.append(self._block(node.body, element, [*scopes, frame]))
        return "".join(out)

    def _pipeline(self, pipeline: Pipeline, dot: Any, scopes: list[dict[str, Any]]) -> Any:
        value: Any = _NOTHING
        for command in pipeline.commands:
            value = self._command(command, value, dot, scopes, pipeline.where)
        return value

    def _command(
        self,
        command: list[Operand],
        piped: Any,
        dot: Any,
        scopes: list[dict[str, Any]],
        where: str,
    ) -> Any:
        head, rest = command[0], command[1:]
        extra = [] if piped is _NOTHING else [piped]
        if head.kind == "ident":
            name = head.value
            if name in ("and", "or"):
                return self._logic(name, rest, extra, dot, scopes, where)
            args = [self._operand(o, dot, scopes, where) for o in rest] + extra
            if name == "include":
                return self._include(args, where)
            function = FUNCTIONS.get(name)
            if function is None:
                raise TemplateError(f"{where}: the function {name!r} is outside this subset")
            try:
                return function(*args)
            except TemplateFail:
                raise
            except TemplateError as exc:  # the function's own complaint: say where
                raise TemplateError(f"{where}: {exc}") from None
            except TypeError as exc:
                raise TemplateError(f"{where}: {name}: wrong arguments ({exc})") from None
        value = self._operand(head, dot, scopes, where)
        if isinstance(value, _Method):
            args = [self._operand(o, dot, scopes, where) for o in rest] + extra
            return value.function(*args)
        if rest or extra:
            raise TemplateError(f"{where}: arguments given to a value that is not a function")
        return value

    def _logic(
        self,
        name: str,
        operands: list[Operand],
        extra: list[Any],
        dot: Any,
        scopes: list[dict[str, Any]],
        where: str,
    ) -> Any:
        values: Iterator[Any] = itertools.chain(
            (self._operand(o, dot, scopes, where) for o in operands), extra
        )
        if len(operands) + len(extra) < 2:
            raise TemplateError(f"{where}: {name} needs at least two arguments")
        last: Any = None
        for last in values:  # short-circuit, as Go 1.18+ does
            if name == "and" and not truthy(last):
                return last
            if name == "or" and truthy(last):
                return last
        return last

    def _include(self, args: list[Any], where: str) -> str:
        if len(args) != 2 or not isinstance(args[0], str):
            raise TemplateError(f'{where}: write include "name" context')
        body = self.defines.get(args[0])
        if body is None:
            raise TemplateError(f"{where}: include of {args[0]!r}, which is not defined")
        return self.render(body, args[1])

    def _operand(self, operand: Operand, dot: Any, scopes: list[dict[str, Any]], where: str) -> Any:
        if operand.kind == "literal":
            return operand.value
        if operand.kind == "pipeline":
            return self._pipeline(operand.value, dot, scopes)
        if operand.kind == "field":
            return self._path(dot, operand.path, where, ".")
        if operand.kind == "variable":
            for scope in reversed(scopes):
                if operand.value in scope:
                    return self._path(scope[operand.value], operand.path, where, operand.value)
            raise TemplateError(f"{where}: undefined variable {operand.value}")
        if operand.kind == "ident":
            raise TemplateError(f"{where}: the function {operand.value!r} used as an argument")
        raise TemplateError(f"{where}: cannot evaluate {operand!r}")

    def _path(self, value: Any, path: tuple[str, ...], where: str, start: str) -> Any:
        walked = start
        for i, name in enumerate(path):
            if isinstance(value, _Root):
                if name not in value.fields:
                    raise TemplateError(f"{where}: .{name} is not one of {sorted(value.fields)}")
                value = value.fields[name]
            elif isinstance(value, Files):
                if name != "Get" or i != len(path) - 1:
                    raise TemplateError(f"{where}: .Files.{name} is outside the subset")
                return _Method(value.Get, "Files.Get")
            elif isinstance(value, dict):
                value = value.get(name)
            elif value is None:
                raise TemplateError(f"{where}: nil pointer evaluating {walked}.{name}")
            else:
                raise TemplateError(f"{where}: {walked} is a {_kind(value)}: it has no .{name}")
            walked = f"{walked.rstrip('.')}.{name}"
        return value


_NOTHING = object()


@dataclass
class _Root:
    fields: dict[str, Any]


# ------------------------------------------------------------------ charts


@dataclass
class Chart:
    root: Path
    metadata: dict[str, Any]
    values: dict[str, Any]
    templates: dict[str, str]  # file name -> source


def load_chart(root: Path) -> Chart:
    metadata = yaml.safe_load((root / "Chart.yaml").read_text(encoding="utf-8"))
    values = yaml.safe_load((root / "values.yaml").read_text(encoding="utf-8")) or {}
    templates = {
        p.name: p.read_text(encoding="utf-8") for p in sorted((root / "templates").iterdir())
    }
    return Chart(root, metadata, values, templates)


def render_chart(
    root: Path,
    overrides: Mapping[str, Any] | None = None,
    release: str = "ragraft",
    namespace: str = "default",
) -> dict[str, str]:
    """Every template of the chart rendered (files whose names start with _ hold only
    definitions, as in Helm): file name -> text."""
    chart = load_chart(root)
    values = merge_values(chart.values, overrides or {})
    defines: dict[str, list[Node]] = {}
    parsed: dict[str, list[Node]] = {}
    for name, source in chart.templates.items():
        nodes, found = parse(source, f"templates/{name}")
        clash = set(found) & set(defines)
        if clash:
            raise TemplateError(f"templates/{name}: {sorted(clash)} already defined")
        defines.update(found)
        parsed[name] = nodes
    renderer = Renderer(defines)
    dot = _Root(
        {
            "Values": helm_values(values),
            "Release": {
                "Name": release,
                "Namespace": namespace,
                "Service": "Helm",
                "IsInstall": True,
                "IsUpgrade": False,
            },
            "Chart": {
                "Name": chart.metadata["name"],
                "Version": chart.metadata["version"],
                "AppVersion": chart.metadata.get("appVersion"),
            },
            "Files": Files(root),
        }
    )
    return {
        name: renderer.render(nodes, dot)
        for name, nodes in parsed.items()
        if not name.startswith("_")
    }


def manifests(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of the rendered .yaml templates (empty documents dropped)."""
    objects: list[dict[str, Any]] = []
    for name, text in rendered.items():
        if not name.endswith((".yaml", ".yml")):
            continue
        for document in yaml.safe_load_all(text):
            if document is None:
                continue
            if not isinstance(document, dict):
                raise TemplateError(f"templates/{name}: a document that is not a map")
            objects.append(document)
    return objects
