"""A small Swift lexer, enough for the scripts beside it.

It splits Swift source into identifiers, numbers, punctuation, string literals and comments,
keeping each token's offsets so that a script can rewrite the text in place. It knows the
lexical forms the generated bindings and the examples use: nested block comments, string
interpolation (with strings nested inside), multi-line and raw (`#"..."#`) strings, and
backticked identifiers. It does not know regex literals (`/.../`), which the bindings and
examples do not use; a slash is always an operator here.
"""

from __future__ import annotations

import dataclasses
import re

IDENT_START = re.compile(r"[A-Za-z_]")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NUMBER = re.compile(
    r"0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|[0-9][0-9_]*(\.[0-9][0-9_]*)?([eE][+-]?[0-9]+)?"
)
# Longest first, so that `->` is one token and not `-` then `>`.
PUNCTUATION = ["...", "..<", "->", "?.", "==", "!=", "<=", ">=", "&&", "||", "+=", "-=", "??"]


class LexError(Exception):
    """The source has a form this lexer does not know (or is not Swift)."""


@dataclasses.dataclass(frozen=True)
class Token:
    kind: str  # "ident", "number", "punct", "string", "comment", "newline"
    text: str  # for a backticked identifier, the name without backticks
    start: int  # offsets into the source, `end` exclusive
    end: int
    backticked: bool = False

    def is_punct(self, text: str) -> bool:
        return self.kind == "punct" and self.text == text

    def is_ident(self, text: str | None = None) -> bool:
        return self.kind == "ident" and (text is None or self.text == text)


def line_of(source: str, offset: int) -> int:
    return source.count("\n", 0, offset) + 1


def _skip_block_comment(source: str, i: int) -> int:
    """`i` at `/*`; returns the offset after the matching `*/` (block comments nest)."""
    depth = 0
    while i < len(source):
        if source.startswith("/*", i):
            depth += 1
            i += 2
        elif source.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    raise LexError(f"line {line_of(source, i)}: unterminated block comment")


def _skip_string(source: str, i: int) -> int:
    """`i` at the literal's opening (`#`s, then `"` or `\"\"\"`); returns the offset after it."""
    start = i
    hashes = 0
    while source.startswith("#", i):
        hashes += 1
        i += 1
    multiline = source.startswith('"""', i)
    i += 3 if multiline else 1
    close = ('"""' if multiline else '"') + "#" * hashes
    escape = "\\" + "#" * hashes
    while i < len(source):
        if source.startswith(escape, i):
            i += len(escape)
            if source.startswith("(", i):
                i = _skip_interpolation(source, i)
            else:
                i += 1
        elif source.startswith(close, i):
            return i + len(close)
        elif source[i] == "\n" and not multiline:
            break
        else:
            i += 1
    raise LexError(f"line {line_of(source, start)}: unterminated string literal")


def _skip_interpolation(source: str, i: int) -> int:
    """`i` at the `(` of `\\(`; returns the offset after the matching `)`."""
    depth = 0
    while i < len(source):
        c = source[i]
        if c == '"' or (c == "#" and re.match(r'#+"', source[i:])):
            i = _skip_string(source, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise LexError(f"line {line_of(source, i)}: unterminated string interpolation")


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(source)
    while i < n:
        c = source[i]
        if c == "\n":
            tokens.append(Token("newline", "\n", i, i + 1))
            i += 1
        elif c in " \t\r":
            i += 1
        elif source.startswith("//", i):
            end = source.find("\n", i)
            end = n if end < 0 else end
            tokens.append(Token("comment", source[i:end], i, end))
            i = end
        elif source.startswith("/*", i):
            end = _skip_block_comment(source, i)
            tokens.append(Token("comment", source[i:end], i, end))
            i = end
        elif c == '"' or (c == "#" and re.match(r'#+"', source[i:])):
            end = _skip_string(source, i)
            tokens.append(Token("string", source[i:end], i, end))
            i = end
        elif c == "`":
            end = source.find("`", i + 1)
            if end < 0 or not IDENT.fullmatch(source[i + 1 : end]):
                raise LexError(f"line {line_of(source, i)}: malformed backticked identifier")
            tokens.append(Token("ident", source[i + 1 : end], i, end + 1, backticked=True))
            i = end + 1
        elif IDENT_START.match(c) or (c == "$" and i + 1 < n and source[i + 1].isalnum()):
            # `$0` (a closure's first argument) counts as an identifier.
            match = re.compile(r"\$[A-Za-z0-9_]+" if c == "$" else IDENT.pattern).match(source, i)
            tokens.append(Token("ident", match.group(), i, match.end()))
            i = match.end()
        elif c.isdigit():
            match = NUMBER.match(source, i)
            tokens.append(Token("number", match.group(), i, match.end()))
            i = match.end()
        else:
            for punct in PUNCTUATION:
                if source.startswith(punct, i):
                    break
            else:
                punct = c
            tokens.append(Token("punct", punct, i, i + len(punct)))
            i += len(punct)
    return tokens


def code_tokens(tokens: list[Token]) -> list[Token]:
    """The tokens without comments and line breaks."""
    return [token for token in tokens if token.kind not in ("comment", "newline")]


OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {")", "]", "}"}


def matching(tokens: list[Token], i: int) -> int:
    """`tokens[i]` is `(`, `[` or `{`; returns the index of its closing bracket."""
    stack = []
    for j in range(i, len(tokens)):
        token = tokens[j]
        if token.kind != "punct":
            continue
        if token.text in OPENERS:
            stack.append(OPENERS[token.text])
        elif token.text in CLOSERS:
            if not stack or stack.pop() != token.text:
                raise LexError(f"unbalanced `{token.text}` at offset {token.start}")
            if not stack:
                return j
    raise LexError(f"unclosed `{tokens[i].text}` at offset {tokens[i].start}")


# Words that must be backticked to be used as an enum case name: the Swift book's keywords
# used in declarations, statements, expressions and types (the list uniffi's Swift generator
# quotes too). Contextual keywords (`open`'s siblings `convenience`, `get`, ...) need none.
SWIFT_KEYWORDS = frozenset(
    """
    associatedtype class deinit enum extension fileprivate func import init inout internal let
    open operator private precedencegroup protocol public rethrows static struct subscript
    typealias var break case catch continue default defer do else fallthrough for guard if in
    repeat return throw switch where while Any as await false is nil self Self super throws
    true try
    """.split()
)
