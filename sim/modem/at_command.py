"""Module-side parsing of one AT command line (A76XX AT Command Manual V1.09 §1.5).

`AT` is case-insensitive; after it come either basic commands (`E0`, `I`, `Z`, `&W`) or one
extended command in its four forms: `+X` (execute), `+X?` (read), `+X=?` (test) and
`+X=<args>` (write). Arguments are comma-separated; strings are double-quoted and may hold
commas. A missing argument (`a,,b`) is None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: Longest command line the module accepts (§1.5.2); longer lines get ERROR.
MAX_LINE = 3071


class AtSyntaxError(ValueError):
    """The line is not a well-formed AT command: the module answers ERROR."""


@dataclass(frozen=True)
class Arg:
    text: str
    quoted: bool

    def as_int(self, low: int, high: int) -> int:
        if self.quoted or not self.text.lstrip("-").isdigit():
            raise AtSyntaxError(f"not a number: {self.text!r}")
        value = int(self.text)
        if not low <= value <= high:
            raise AtSyntaxError(f"{value} outside {low}..{high}")
        return value


@dataclass(frozen=True)
class AtCommand:
    name: str  # "+CSQ", "E", "I", "" for a bare AT; upper case
    form: str  # "exec" | "read" | "test" | "write"
    args: tuple[Arg | None, ...] = ()
    basic_value: str = ""  # the digits after a basic command: "0" in ATE0

    def arg(self, i: int) -> Arg | None:
        return self.args[i] if i < len(self.args) else None

    def int_arg(self, i: int, low: int, high: int, default: int | None = None) -> int:
        arg = self.arg(i)
        if arg is None:
            if default is None:
                raise AtSyntaxError(f"argument {i + 1} missing")
            return default
        return arg.as_int(low, high)

    def str_arg(self, i: int, default: str | None = None) -> str:
        arg = self.arg(i)
        if arg is None:
            if default is None:
                raise AtSyntaxError(f"argument {i + 1} missing")
            return default
        return arg.text


def parse_line(line: str) -> AtCommand:
    """Parse one line (without its CR); raises AtSyntaxError for anything malformed."""
    if len(line) > MAX_LINE:
        raise AtSyntaxError("line too long")
    if line[:2].upper() != "AT":
        raise AtSyntaxError("no AT prefix")
    body = line[2:]
    if not body:
        return AtCommand("", "exec")
    if body[0] in "+*$":
        return _extended(body)
    head = body[0].upper()
    if head == "&":
        head, body = body[:2].upper(), body[1:]
    rest = body[1:]
    if rest and not rest.isdigit():
        raise AtSyntaxError(f"bad basic command {line!r}")
    return AtCommand(head, "exec", basic_value=rest)


def _extended(body: str) -> AtCommand:
    end = 1
    while end < len(body) and (body[end].isalnum() or body[end] == "_"):
        end += 1
    name, rest = body[:end].upper(), body[end:]
    if len(name) < 2:
        raise AtSyntaxError("empty command name")
    if rest == "":
        return AtCommand(name, "exec")
    if rest == "?":
        return AtCommand(name, "read")
    if rest == "=?":
        return AtCommand(name, "test")
    if rest.startswith("="):
        return AtCommand(name, "write", split_args(rest[1:]))
    raise AtSyntaxError(f"bad command {body!r}")


def split_args(text: str) -> tuple[Arg | None, ...]:
    args: list[Arg | None] = []
    i = 0
    while True:
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == '"':
            close = text.find('"', i + 1)
            if close < 0:
                raise AtSyntaxError("unterminated string")
            args.append(Arg(text[i + 1 : close], True))
            i = close + 1
            while i < len(text) and text[i] == " ":
                i += 1
        else:
            comma = text.find(",", i)
            value = (text[i:] if comma < 0 else text[i:comma]).strip()
            if '"' in value:
                raise AtSyntaxError("stray quote")
            args.append(Arg(value, False) if value else None)
            i = len(text) if comma < 0 else comma
        if i >= len(text):
            return tuple(args)
        if text[i] != ",":
            raise AtSyntaxError("junk after argument")
        i += 1
        if i == len(text):
            args.append(None)
            return tuple(args)


class ModemError(Exception):
    """A command fails with these lines and this final code (e.g. +CMQTTPUB: 0,11 / ERROR)."""

    def __init__(self, final: str, lines: tuple[str, ...] = ()) -> None:
        super().__init__(final)
        self.final = final
        self.lines = lines


@dataclass
class DataWait:
    """After a prompt: either exactly `length` bytes, or SMS text up to Ctrl-Z / ESC."""

    on_data: Callable[[bytes, float], None]
    length: int | None  # None: SMS text mode
    echo: bool = False
    buffer: bytearray = field(default_factory=bytearray)
