#!/usr/bin/env python3
"""Checks Swift code that uses the Fieldsync API against the API as declared.

No Swift compiler runs where the bindings are generated, so this stands in for part of one.
It reads the declarations of the package's sources (the generated Fieldsync.swift and the
hand-written files beside it) and of each checked file, then walks each checked file and
reports, with its line:

- a type name (an identifier starting with a capital) that is neither declared there nor a
  platform type this script knows (`String`, `Task`, `BGTaskScheduler`, ...);
- a member (`.name`) that no declaration has: on a receiver whose type it knows, a member of
  that type (or of the protocols and extensions it has); on one whose type it does not know,
  a member of any of the package's types, or a platform member this script knows;
- a call whose argument labels fit no declaration of that name: labels in order, defaulted
  parameters skipped, trailing closures given to function-typed parameters; an enum case used
  as a pattern (`catch FieldsyncError.notFound(let collection, let id, _)`) must have as many
  elements as the case has associated values, and the labels it gives must be the case's;
- a call of a free function neither declared nor known as a platform function.

It knows the type of a variable from a type annotation, an initializer call (`Store(...)`),
the declared type of a method, property or case of the package (`store.query(...)` is
`[Record]`), a `for ... in` over such a sequence, and a closure parameter passed to a
package method whose parameter type it reads.

It does NOT check types: an argument of the wrong type, a missing `try` or `await`, an
optional used as a value, which overload Swift would pick or whether it would find two
equally good (ambiguity), access control, availability, Sendable checking, subscripts'
arguments, and what happens inside string interpolations. Platform APIs are known only by
name (listed below): their labels are not checked. It reads a subset of Swift, and a form it
does not know may pass unseen. A compiler remains the real check: `swift build` on a Mac
compiles the examples (the FieldsyncExamples target) and `swift test` runs the tests.

`--self-test` shows, on small snippets, that it rejects a misspelled method, a wrong
argument label, an UpperCamel error case and an unknown type, and accepts their fixes.
`--sendable` also checks that Sources/Fieldsync/Sendable.swift lists every record and enum
uniffi declares Sendable for Swift 6 compilers only.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from swift_lexer import Token, _skip_interpolation, code_tokens, line_of, matching, tokenize  # noqa: E402

PACKAGE = pathlib.Path(__file__).resolve().parent.parent
SOURCES = PACKAGE / "Sources" / "Fieldsync"

# Platform names the checked files use, known only by name. Add to them when an example uses
# a new platform API; a misspelled name of ours is caught because it is in none of these.
PLATFORM_TYPES = set(
    """
    Any AnyObject Array Bool Character ClosedRange Data Date Dictionary DispatchQueue Double
    Duration Equatable Error Float Hashable Int Int32 Int64 Mirror Never Optional Range Result
    Sendable Set String Substring TimeInterval UInt64 UInt8 URL UUID Void Task CancellationError
    AsyncStream AsyncThrowingStream AsyncSequence CheckedContinuation MainActor FileManager
    NSLock NSRange NSString JSONSerialization ProcessInfo
    ExpressibleByStringLiteral ExpressibleByIntegerLiteral ExpressibleByFloatLiteral
    ExpressibleByBooleanLiteral ExpressibleByNilLiteral LocalizedError
    BGTaskScheduler BGTask BGAppRefreshTask BGProcessingTask BGAppRefreshTaskRequest
    BGProcessingTaskRequest BackgroundTasks Foundation Fieldsync XCTest XCTestCase
    XCTestExpectation Self
    """.split()
)
PLATFORM_FUNCTIONS = set(
    """
    print max min abs precondition fatalError withCheckedThrowingContinuation
    withCheckedContinuation withTaskCancellationHandler type zip stride repeatElement
    XCTAssert XCTAssertEqual XCTAssertNotEqual XCTAssertTrue XCTAssertFalse XCTAssertNil
    XCTAssertNotNil XCTAssertThrowsError XCTAssertNoThrow XCTFail XCTUnwrap
    XCTAssertGreaterThan XCTAssertLessThan XCTAssertGreaterThanOrEqual expectation wait
    fulfillment
    """.split()
)
PLATFORM_MEMBERS = set(
    """
    path appendingPathComponent appending temporaryDirectory default createDirectory removeItem
    uuidString shared register submit setTaskCompleted expirationHandler earliestBeginDate
    requiresNetworkConnectivity requiresExternalPower map compactMap flatMap filter first last
    count isEmpty contains sorted reduce forEach joined range utf16 startIndex endIndex
    lowerBound upperBound distance lock unlock value makeAsyncIterator next yield finish
    onTermination sleep seconds milliseconds components description rounded down isNaN
    bufferingNewest bufferingOldest unbounded resume async sync children label location length
    detached currentPriority isCancelled checkCancellation makeStream self init max
    timeIntervalSince1970
    flatMap exactly terminated cancel none some concurrent global userInitiated utility fulfill
    """.split()
)
KEYWORDS = set(
    """
    associatedtype class deinit enum extension fileprivate func import init inout internal let
    open operator private precedencegroup protocol public rethrows static struct subscript
    typealias var break case catch continue default defer do else fallthrough for guard if in
    repeat return throw switch where while as await false is nil super throws true try
    final convenience required override mutating nonmutating lazy weak unowned indirect
    some any get set willSet didSet nonisolated async isolated actor consume
    """.split()
)
PRIVATE = "<private>"
CONDITION_KEYWORDS = {"if", "guard", "while", "for", "switch", "catch", "repeat"}


@dataclasses.dataclass
class Param:
    label: str | None
    type: str
    default: bool
    function: bool


@dataclasses.dataclass
class Decl:
    kind: str  # "func", "init", "case", "var", "subscript"
    name: str
    owner: str | None
    params: list[Param] | None  # None: a case or var without a parameter list
    type: str | None  # a function's return type, a var's type, a case's enum
    where: str

    def signature(self) -> str:
        labels = "".join(f"{p.label or '_'}:" for p in self.params or [])
        return f"{self.owner + '.' if self.owner else ''}{self.name}({labels})"


@dataclasses.dataclass
class TypeInfo:
    kind: str
    inherits: list[str] = dataclasses.field(default_factory=list)
    members: dict[str, list[Decl]] = dataclasses.field(default_factory=dict)


class Api:
    def __init__(self) -> None:
        self.types: dict[str, TypeInfo] = {}
        self.functions: dict[str, list[Decl]] = {}
        self.globals: dict[str, str | None] = {}

    def copy(self) -> "Api":
        api = Api()
        api.types = {
            name: TypeInfo(
                info.kind, list(info.inherits), {k: list(v) for k, v in info.members.items()}
            )
            for name, info in self.types.items()
        }
        api.functions = {k: list(v) for k, v in self.functions.items()}
        api.globals = dict(self.globals)
        return api

    def type(self, name: str, kind: str) -> TypeInfo:
        info = self.types.setdefault(name, TypeInfo(kind))
        if kind != "extension" and info.kind == "extension":
            info.kind = kind
        return info

    def members(self, type_name: str, name: str, seen: set[str] | None = None) -> list[Decl]:
        seen = seen or set()
        if type_name in seen or type_name not in self.types:
            return []
        seen.add(type_name)
        info = self.types[type_name]
        found = list(info.members.get(name, []))
        for parent in info.inherits:
            found += self.members(parent, name, seen)
        return found

    def all_members(self, name: str) -> list[Decl]:
        return [decl for info in self.types.values() for decl in info.members.get(name, [])]


# ---------------------------------------------------------------------------------------------
# Types as text


def type_text(tokens: list[Token]) -> str:
    """A type's tokens as compact text, without attributes (`@escaping`, `@Sendable`)."""
    out = []
    skip = False
    for token in tokens:
        if skip:
            skip = False
            continue
        if token.is_punct("@"):
            skip = True
            continue
        if token.kind == "ident" and token.text in ("inout", "some", "any"):
            continue
        out.append(token.text)
    # The arrow as one character, so that its `>` never closes a generic argument list.
    return "".join(out).replace("->", "→")


def strip_optional(t: str | None) -> str | None:
    if t is None:
        return None
    t = t.strip()
    while t.endswith("?") or t.endswith("!"):
        t = t[:-1]
    while t.startswith("(") and t.endswith(")") and balanced(t[1:-1]):
        t = t[1:-1]
    return t


def balanced(text: str) -> bool:
    depth = 0
    for c in text:
        depth += c in "([<"
        depth -= c in ")]>"
        if depth < 0:
            return False
    return depth == 0


def split_top(text: str, sep: str) -> list[str]:
    parts, depth, current = [], 0, ""
    i = 0
    while i < len(text):
        c = text[i]
        depth += c in "([<"
        depth -= c in ")]>"
        if c == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += c
        i += 1
    parts.append(current)
    return parts


def element_type(t: str | None) -> str | None:
    t = strip_optional(t)
    if not t:
        return None
    if t.startswith("[") and t.endswith("]") and len(split_top(t[1:-1], ":")) == 1:
        return t[1:-1]
    match = re.fullmatch(r"(?:AsyncStream|AsyncThrowingStream|Array|Set)<(.*)>", t)
    if match:
        return split_top(match.group(1), ",")[0]
    return None


def closure_params(t: str) -> list[str | None]:
    t = strip_optional(t) or ""
    arrow = None
    depth = 0
    for i, c in enumerate(t):
        depth += c in "([<"
        depth -= c in ")]>"
        if depth == 0 and c == "→":
            arrow = i
            break
    if arrow is None or not t.startswith("("):
        return []
    inner = t[1 : arrow - 1] if t[arrow - 1] == ")" else ""
    return [part or None for part in split_top(inner, ",")] if inner else []


def simple_name(t: str | None) -> str | None:
    t = strip_optional(t)
    if t and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", t):
        return t.split(".")[-1]
    return None


def is_function_type(t: str) -> bool:
    t = strip_optional(t) or ""
    return not t.startswith("[") and "→" in t


# ---------------------------------------------------------------------------------------------
# Declarations


class Source:
    def __init__(self, path: pathlib.Path, text: str) -> None:
        self.path = path
        self.text = text
        all_tokens = tokenize(text)
        self.tokens = code_tokens(all_tokens)
        # Which code tokens start a line: a declaration without a body ends at its line's end.
        starts = set()
        previous_newline = True
        for token in all_tokens:
            if token.kind == "newline":
                previous_newline = True
            elif token.kind != "comment":
                if previous_newline:
                    starts.add(token.start)
                previous_newline = False
        self.line_start = [token.start in starts for token in self.tokens]

    def where(self, i: int) -> str:
        return f"{self.path}:{line_of(self.text, self.tokens[i].start)}"


def parse_params(
    src: Source, open_index: int
) -> tuple[list[Param], list[tuple[list[int], str, str]]]:
    """The parameters in the parentheses at `open_index`, and for each the indexes of its
    name tokens, its internal name and its type (for a checker to skip and bind)."""
    t = src.tokens
    close = matching(t, open_index)
    params, bindings = [], []
    for start, end in split_args(t, open_index + 1, close):
        colon = next((k for k in range(start, end) if t[k].is_punct(":")), None)
        if colon is None:
            continue
        idents = [k for k in range(start, colon) if t[k].kind == "ident"]
        if not idents:
            continue
        external = t[idents[0]].text
        equals = next(
            (
                k
                for k in range(colon + 1, end)
                if t[k].is_punct("=") and depth_at(t, colon + 1, k) == 0
            ),
            end,
        )
        ptype = type_text(t[colon + 1 : equals])
        params.append(
            Param(
                None if external == "_" else external, ptype, equals < end, is_function_type(ptype)
            )
        )
        bindings.append((idents, t[idents[-1]].text, ptype))
    return params, bindings


def depth_at(tokens: list[Token], start: int, end: int) -> int:
    depth = 0
    for k in range(start, end):
        if tokens[k].kind == "punct" and tokens[k].text in "([{":
            depth += 1
        elif tokens[k].kind == "punct" and tokens[k].text in ")]}":
            depth -= 1
    return depth


def split_args(t: list[Token], start: int, end: int) -> list[tuple[int, int]]:
    """Top-level comma-separated ranges of tokens [start, end)."""
    parts, depth, begin = [], 0, start
    for k in range(start, end):
        token = t[k]
        if token.kind == "punct" and token.text in "([{":
            depth += 1
        elif token.kind == "punct" and token.text in ")]}":
            depth -= 1
        elif token.is_punct(",") and depth == 0:
            parts.append((begin, k))
            begin = k + 1
    if begin < end:
        parts.append((begin, end))
    return parts


def skip_generics(t: list[Token], k: int) -> int:
    if k < len(t) and t[k].is_punct("<"):
        depth = 0
        while k < len(t):
            if t[k].is_punct("<"):
                depth += 1
            elif t[k].is_punct(">"):
                depth -= 1
                if depth == 0:
                    return k + 1
            k += 1
    return k


def return_type(src: Source, k: int) -> tuple[str | None, int]:
    """After a parameter list's `)`: the declared return type, and where it ends."""
    t = src.tokens
    while k < len(t) and t[k].kind == "ident" and t[k].text in ("async", "throws", "rethrows"):
        k += 1
        if k < len(t) and t[k].is_punct("(") and t[k - 1].text == "throws":
            k = matching(t, k) + 1
    if k >= len(t) or not t[k].is_punct("->"):
        return None, k
    k += 1
    start = k
    depth = 0
    while k < len(t):
        token = t[k]
        if depth == 0 and (
            token.is_punct("{") or token.is_ident("where") or (k > start and src.line_start[k])
        ):
            break
        if token.kind == "punct" and token.text in "([<":
            depth += 1
        elif token.kind == "punct" and token.text in ")]>":
            depth -= 1
        k += 1
    return type_text(t[start:k]), k


def declare(api: Api, src: Source) -> None:
    """Adds the declarations of `src` at file and type level to `api`."""
    t = src.tokens
    stack: list[tuple[int, str | None]] = []  # (index of the closing brace, type or None)
    type_braces: dict[int, str] = {}
    i = 0
    while i < len(t):
        token = t[i]
        if token.is_punct("{"):
            stack.append((matching(t, i), type_braces.get(i)))
            i += 1
            continue
        if token.is_punct("}"):
            if stack:
                stack.pop()
            i += 1
            continue
        at_level = not stack or stack[-1][1] is not None
        owner = stack[-1][1] if stack else None
        if owner == PRIVATE:
            i += 1
            continue
        previous = t[i - 1] if i else None
        after_dot = previous is not None and previous.is_punct(".")
        if not at_level or token.kind != "ident" or after_dot or token.backticked:
            i += 1
            continue
        word = token.text
        if (
            word in ("class", "struct", "enum", "protocol", "actor", "extension")
            and i + 1 < len(t)
            and t[i + 1].kind == "ident"
            and t[i + 1].text not in ("func", "var", "let")
        ):
            name = t[i + 1].text
            k = i + 2
            while k < len(t) and t[k].is_punct("."):
                name = t[k + 1].text
                k += 2
            k = skip_generics(t, k)
            inherits = []
            if k < len(t) and t[k].is_punct(":"):
                k += 1
                while k < len(t) and not t[k].is_punct("{") and not t[k].is_ident("where"):
                    if (
                        t[k].kind == "ident"
                        and not t[k - 1].is_punct(".")
                        and not t[k - 1].is_punct("@")
                    ):
                        inherits.append(t[k].text)
                    k += 1
            while k < len(t) and not t[k].is_punct("{"):
                k += 1
            hidden = (
                i > 0 and t[i - 1].kind == "ident" and t[i - 1].text in ("private", "fileprivate")
            )
            if hidden or name.startswith(("FfiConverter", "Uniffi")):
                # Not API: members of uniffi's internals and private types stay unknown.
                type_braces[k] = PRIVATE
            else:
                info = api.type(name, word)
                info.inherits += [n for n in inherits if n not in info.inherits]
                type_braces[k] = name
            i = k
            continue
        if word == "typealias" and i + 1 < len(t):
            target = type_text(t[i + 3 : i + 4]) if i + 3 < len(t) else ""
            api.type(t[i + 1].text, "typealias").inherits.append(target)
            i += 2
            continue
        if word == "func" and i + 1 < len(t) and t[i + 1].kind == "ident":
            name = t[i + 1].text
            k = skip_generics(t, i + 2)
            if k < len(t) and t[k].is_punct("("):
                params, _ = parse_params(src, k)
                rtype, end = return_type(src, matching(t, k) + 1)
                add(api, Decl("func", name, owner, params, rtype or "Void", src.where(i)))
                i = end
                continue
        if word in ("init", "subscript") and owner is not None:
            k = i + 1
            if k < len(t) and t[k].kind == "punct" and t[k].text in "?!":
                k += 1
            k = skip_generics(t, k)
            if k < len(t) and t[k].is_punct("("):
                params, _ = parse_params(src, k)
                rtype, end = return_type(src, matching(t, k) + 1)
                add(
                    api,
                    Decl(
                        word, word, owner, params, owner if word == "init" else rtype, src.where(i)
                    ),
                )
                i = end
                continue
        if word == "case" and owner is not None and api.types[owner].kind == "enum":
            k = i + 1
            while k < len(t) and t[k].kind == "ident":
                name = t[k].text
                k += 1
                params = None
                if k < len(t) and t[k].is_punct("("):
                    params = case_params(t, k)
                    k = matching(t, k) + 1
                add(api, Decl("case", name, owner, params, owner, src.where(i)))
                if k < len(t) and t[k].is_punct(","):
                    k += 1
                    continue
                break
            i = k
            continue
        if word in ("var", "let") and i + 1 < len(t) and t[i + 1].kind == "ident":
            name = t[i + 1].text
            vtype = None
            k = i + 2
            if k < len(t) and t[k].is_punct(":"):
                start = k + 1
                k = start
                depth = 0
                while k < len(t) and not (
                    depth == 0
                    and (
                        t[k].is_punct("=")
                        or t[k].is_punct("{")
                        or (k > start and src.line_start[k])
                    )
                ):
                    if t[k].kind == "punct" and t[k].text in "([<":
                        depth += 1
                    elif t[k].kind == "punct" and t[k].text in ")]>":
                        depth -= 1
                    k += 1
                vtype = type_text(t[start:k])
            elif k + 1 < len(t) and t[k].is_punct("=") and t[k + 1].kind == "string":
                vtype = "String"
            if owner is None:
                api.globals[name] = vtype
            else:
                add(api, Decl("var", name, owner, None, vtype, src.where(i)))
            i = k
            continue
        i += 1


def case_params(t: list[Token], open_index: int) -> list[Param]:
    params = []
    for start, end in split_args(t, open_index + 1, matching(t, open_index)):
        if end - start >= 2 and t[start].kind == "ident" and t[start + 1].is_punct(":"):
            params.append(Param(t[start].text, type_text(t[start + 2 : end]), False, False))
        else:
            params.append(Param(None, type_text(t[start:end]), False, False))
    return params


def add(api: Api, decl: Decl) -> None:
    if decl.owner is None:
        api.functions.setdefault(decl.name, []).append(decl)
    else:
        api.type(decl.owner, "extension").members.setdefault(decl.name, []).append(decl)


# ---------------------------------------------------------------------------------------------
# Calls


@dataclasses.dataclass
class Args:
    labels: list[str | None]  # parenthesised arguments
    braces: list[int]  # token index of each `{` of a closure argument, None if not one
    trailing: list[tuple[str | None, int]]  # (label, index of `{`) of each trailing closure
    pattern: bool  # bindings (`let x`, `_`) among them: an enum case pattern
    end: int  # index after the call


def match_params(params: list[Param], args: Args) -> dict[int, Param] | None:
    """Matches arguments to parameters as Swift does (in order, defaulted ones skippable,
    trailing closures to function-typed ones); returns the parameter of each closure brace."""

    def positional(pi: int, ai: int, found: dict[int, Param]) -> dict[int, Param] | None:
        if ai == len(args.labels):
            return trailing(pi, 0, found)
        if pi == len(params):
            return None
        param = params[pi]
        if param.label == args.labels[ai]:
            extra = {args.braces[ai]: param} if args.braces[ai] is not None else {}
            result = positional(pi + 1, ai + 1, {**found, **extra})
            if result is not None:
                return result
        if param.default:
            return positional(pi + 1, ai, found)
        return None

    def trailing(pi: int, ti: int, found: dict[int, Param]) -> dict[int, Param] | None:
        if ti == len(args.trailing):
            return found if all(p.default for p in params[pi:]) else None
        if pi == len(params):
            return None
        label, brace = args.trailing[ti]
        param = params[pi]
        fits = param.function and (label is None and ti == 0 or label == param.label)
        if fits:
            result = trailing(pi + 1, ti + 1, {**found, brace: param})
            if result is not None:
                return result
        if param.default:
            return trailing(pi + 1, ti, found)
        return None

    return positional(0, 0, {})


def match_case(params: list[Param] | None, args: Args) -> bool:
    params = params or []
    if args.trailing or len(args.labels) != len(params):
        return False
    for param, label in zip(params, args.labels):
        if label is not None and label != param.label:
            return False
        if label is None and param.label is not None and not args.pattern:
            return False
    return True


class Checker:
    def __init__(self, api: Api, src: Source) -> None:
        self.api = api
        self.src = src
        self.t = src.tokens
        self.errors: list[str] = []
        self.env: dict[str, str | None] = dict(api.globals)
        self.handled: set[int] = set()
        self.skip: set[int] = set()
        self.closure_types: dict[int, list[str | None]] = {}
        self.generics: set[str] = set()
        self.contexts: list[tuple[int, str | None]] = []
        self.type_braces: dict[int, str] = {}
        self.local_types = set(api.types)

    def error(self, i: int, message: str) -> None:
        self.errors.append(f"{self.src.where(i)}: {message}")

    # -- the walk --------------------------------------------------------------------------

    def run(self) -> list[str]:
        t = self.t
        i = 0
        while i < len(t):
            token = t[i]
            if i in self.skip or i in self.handled:
                i += 1
                continue
            if token.is_punct("{"):
                self.contexts.append((matching(t, i), self.type_braces.get(i)))
                self.closure_parameters(i)
            elif token.is_punct("}"):
                if self.contexts:
                    self.contexts.pop()
            elif token.is_punct("#") and i + 1 < len(t) and t[i + 1].kind == "ident":
                i = self.directive(i)
                continue
            elif token.is_punct("@") and i + 1 < len(t) and t[i + 1].kind == "ident":
                i += 2
                if i < len(t) and t[i].is_punct("(") and t[i - 1].text == "available":
                    i = matching(t, i) + 1
                continue
            elif token.kind == "ident" and not token.backticked and token.text in KEYWORDS:
                i = self.keyword(i)
                continue
            elif token.kind == "ident" or (
                token.is_punct(".") and i + 1 < len(t) and t[i + 1].kind == "ident"
            ):
                self.chain(i, report=True)
            elif token.is_punct("?.") and i + 1 < len(t) and t[i + 1].kind == "ident":
                self.postfix(i, None, True)
            elif token.kind == "string" and "\\(" in token.text:
                self.interpolations(token)
            i += 1
        return self.errors

    def interpolations(self, token: Token) -> None:
        """Checks the expressions interpolated in a string literal, as code of their own."""
        text = token.text
        k = 0
        while True:
            k = text.find("\\(", k)
            if k < 0:
                return
            end = _skip_interpolation(text, k + 1)
            line = line_of(self.src.text, token.start) - 1
            inner = Source(self.src.path, "\n" * line + text[k + 2 : end - 1])
            checker = Checker(self.api, inner)
            checker.env = self.env
            checker.contexts = list(self.contexts)
            self.errors += checker.run()
            k = end

    def directive(self, i: int) -> int:
        t = self.t
        word = t[i + 1].text
        k = i + 2
        if word in ("if", "elseif"):
            while k < len(t) and not self.src.line_start[k]:
                k += 1
        elif k < len(t) and t[k].is_punct("("):
            k = matching(t, k) + 1
        return k

    def keyword(self, i: int) -> int:
        t = self.t
        word = t[i].text
        if word == "import":
            return i + 2
        if (
            word in ("class", "struct", "enum", "protocol", "actor", "extension")
            and i + 1 < len(t)
            and t[i + 1].kind == "ident"
            and t[i + 1].text not in ("func", "var", "let")
        ):
            name = t[i + 1].text
            self.local_types.add(name)
            k = skip_generics(t, i + 2)
            while k < len(t) and not t[k].is_punct("{"):
                k += 1
            self.type_braces[k] = name
            return i + 2
        if word in ("func", "init", "subscript"):
            k = i + 1
            if word == "func":
                k += 1
            if k < len(t) and t[k].kind == "punct" and t[k].text in "?!":
                k += 1
            if k < len(t) and t[k].is_punct("<"):
                end = skip_generics(t, k)
                self.generics |= {
                    t[g].text
                    for g in range(k + 1, end)
                    if t[g].kind == "ident" and (t[g - 1].is_punct("<") or t[g - 1].is_punct(","))
                }
                k = end
            if k < len(t) and t[k].is_punct("("):
                _, bindings = parse_params(self.src, k)
                for indexes, name, ptype in bindings:
                    self.skip.update(indexes)
                    self.env[name] = ptype or None
            return k
        if word == "case" and self.contexts and self.contexts[-1][1] is not None:
            # A case declared in an enum of the checked file.
            k = i + 1
            while k < len(t) and t[k].kind == "ident":
                self.skip.add(k)
                k += 1
                if k < len(t) and t[k].is_punct("("):
                    for start, end in split_args(t, k + 1, matching(t, k)):
                        if end - start >= 2 and t[start + 1].is_punct(":"):
                            self.skip.add(start)
                    k = matching(t, k)
                    break
                if k < len(t) and t[k].is_punct(","):
                    k += 1
            return i + 1
        if word in ("let", "var"):
            return self.binding(i)
        if word == "for":
            return self.for_in(i)
        if word == "as" and i + 1 < len(t) and t[i + 1].kind == "punct" and t[i + 1].text in "?!":
            return i + 2
        if word in ("self", "Self", "super"):
            self.chain(i, report=True)
        return i + 1

    def binding(self, i: int) -> int:
        t = self.t
        k = i + 1
        if k < len(t) and t[k].is_punct("("):
            for j in range(k, matching(t, k)):
                if t[j].kind == "ident":
                    self.skip.add(j)
                    self.env[t[j].text] = None
            return matching(t, k) + 1
        if k >= len(t) or t[k].kind != "ident":
            return k
        name = t[k].text
        self.skip.add(k)
        self.env[name] = None
        k += 1
        if k < len(t) and t[k].is_punct(":"):
            start = k + 1
            end = start
            depth = 0
            while end < len(t) and not (
                depth == 0
                and (
                    t[end].kind == "punct"
                    and t[end].text in "=,{)"
                    or (end > start and self.src.line_start[end])
                )
            ):
                if t[end].kind == "punct" and t[end].text in "([<":
                    depth += 1
                elif t[end].kind == "punct" and t[end].text in ")]>":
                    depth -= 1
                end += 1
            self.env[name] = type_text(t[start:end])
            return k + 1
        if k < len(t) and t[k].is_punct("="):
            expression = self.expression_type(k + 1)
            conditional = i > 0 and (
                t[i - 1].kind == "ident"
                and t[i - 1].text in ("if", "guard", "while")
                or t[i - 1].is_punct(",")
            )
            self.env[name] = strip_optional(expression) if conditional else expression
        elif k < len(t) and t[k].is_ident("as"):
            k += 1
            if k < len(t) and t[k].kind == "punct":
                k += 1
            self.env[name] = t[k].text if k < len(t) else None
        return k

    def for_in(self, i: int) -> int:
        t = self.t
        k = i + 1
        while (
            k < len(t)
            and t[k].kind == "ident"
            and t[k].text in ("try", "await", "case", "let", "var")
        ):
            k += 1
        names = []
        if k < len(t) and t[k].is_punct("("):
            names = [j for j in range(k, matching(t, k)) if t[j].kind == "ident"]
            k = matching(t, k) + 1
        elif k < len(t) and t[k].kind == "ident":
            names = [k]
            k += 1
        for j in names:
            self.skip.add(j)
        if k < len(t) and t[k].is_ident("in"):
            element = element_type(self.expression_type(k + 1))
            for j in names:
                self.env[t[j].text] = element if len(names) == 1 else None
            return k + 1
        return k

    def closure_parameters(self, brace: int) -> None:
        """`{ a, b in`, `{ (a) in`, `{ [self] a in`: binds the parameters (typed when the
        closure was passed to a package method whose parameter type is known)."""
        t = self.t
        k = brace + 1
        if k < len(t) and t[k].is_punct("["):
            k = matching(t, k) + 1
        while k < len(t) and t[k].is_punct("@"):
            k += 2
        start = k
        if k < len(t) and t[k].is_punct("("):
            end = matching(t, k)
            if end + 1 < len(t) and t[end + 1].is_ident("in"):
                names = [
                    j
                    for j in range(k + 1, end)
                    if t[j].kind == "ident" and (t[j - 1].is_punct("(") or t[j - 1].is_punct(","))
                ]
                self.bind_closure(brace, names)
            return
        names = []
        while k < len(t) and t[k].kind == "ident" and t[k].text != "in":
            names.append(k)
            k += 1
            if k < len(t) and t[k].is_punct(","):
                k += 1
            else:
                break
        if k < len(t) and t[k].is_ident("in") and k > start:
            self.bind_closure(brace, names)

    def bind_closure(self, brace: int, names: list[int]) -> None:
        types = self.closure_types.get(brace, [])
        for n, j in enumerate(names):
            self.skip.add(j)
            self.env[self.t[j].text] = types[n] if n < len(types) else None

    # -- expressions -----------------------------------------------------------------------

    def expression_type(self, k: int) -> str | None:
        t = self.t
        while k < len(t) and (
            t[k].kind == "ident"
            and t[k].text in ("try", "await")
            or t[k].kind == "punct"
            and t[k].text in "?!"
            and t[k - 1].is_ident("try")
        ):
            k += 1
        if k >= len(t):
            return None
        if t[k].kind == "string":
            return "String"
        if t[k].kind == "number":
            return "Double" if "." in t[k].text else "Int"
        if t[k].kind == "ident" or t[k].is_punct("."):
            return self.chain(k, report=False)
        return None

    def enclosing_type(self) -> str | None:
        for _, name in reversed(self.contexts):
            if name is not None:
                return name
        return None

    def ours(self, name: str | None) -> bool:
        """Declared here (not only extended: `extension Task` leaves Task a platform type)."""
        return (
            name is not None and name in self.api.types and self.api.types[name].kind != "extension"
        )

    def chain(self, i: int, report: bool) -> str | None:
        """Walks a primary expression and its postfixes from `i`; returns its type if known."""
        t = self.t
        token = t[i]
        current: str | None = None
        k = i
        if token.is_punct("."):
            if i > 0 and self.ends_expression(i - 1):
                current, k = None, i  # a member of something this walk did not start at
            else:
                current, k = self.implicit_member(i, report)
                if k is None:
                    return None
        elif token.kind == "ident":
            name = token.text
            if name in ("self", "Self"):
                current = self.enclosing_type()
                k = i + 1
            elif name[0].isupper() or name[0] == "_" and name[1:2].isupper():
                known = (
                    self.ours(name)
                    or name in self.local_types
                    or name in PLATFORM_TYPES
                    or name in self.generics
                )
                if not known and name not in PLATFORM_FUNCTIONS:
                    if report:
                        self.error(i, f"unknown type `{name}`")
                    return None
                k = i + 1
                if k < len(t) and t[k].is_punct("(") and self.ours(name):
                    args = self.arguments(k)
                    decls = self.api.members(name, "init")
                    if report:
                        self.check_init(i, decls, args, name)
                    current, k = name, args.end
                elif (
                    k < len(t)
                    and t[k].is_punct("(")
                    or (k < len(t) and t[k].is_punct("{") and not self.is_body(i, k))
                ):
                    args = self.arguments(k)
                    current, k = (name if name not in PLATFORM_FUNCTIONS else None), args.end
                else:
                    current = name  # the type itself: `Store.open(...)`, `FieldsyncError.notFound`
            else:
                k = i + 1
                if k < len(t) and t[k].is_punct("(") and name not in self.env:
                    args = self.arguments(k)
                    current = self.free_call(i, name, args, report)
                    k = args.end
                else:
                    current = self.env.get(name)
        else:
            return None
        return self.postfix(k, current, report)

    def postfix(self, k: int, current: str | None, report: bool) -> str | None:
        t = self.t
        while k < len(t):
            token = t[k]
            if token.kind == "punct" and token.text in "?!" and token.start == t[k - 1].end:
                current = strip_optional(current)
                k += 1
            elif token.is_punct("?.") and k + 1 < len(t) and t[k + 1].kind == "ident":
                current, k = self.member(k, strip_optional(current), report)
            elif token.is_punct(".") and k + 1 < len(t) and t[k + 1].kind == "ident":
                current, k = self.member(k, strip_optional(current), report)
            elif token.is_punct(".") and k + 1 < len(t) and t[k + 1].kind == "number":
                current, k = None, k + 2
            elif token.is_punct("[") and token.start == t[k - 1].end:
                current = self.subscript_type(current)
                k = matching(t, k) + 1
            elif token.is_punct("(") and token.start == t[k - 1].end:
                k = self.arguments(k).end
                current = None
            else:
                break
        return current

    def subscript_type(self, current: str | None) -> str | None:
        base = strip_optional(current)
        if not base:
            return None
        element = element_type(base)
        if element:
            return element
        if base.startswith("[") and base.endswith("]"):
            parts = split_top(base[1:-1], ":")
            return parts[1] + "?" if len(parts) == 2 else None
        decls = self.api.members(base, "subscript") if self.ours(base) else []
        return decls[0].type if len(decls) == 1 else None

    def member(self, dot: int, receiver: str | None, report: bool) -> tuple[str | None, int]:
        """`.name` on a receiver of type `receiver` (None: unknown); returns its type."""
        t = self.t
        name_index = dot + 1
        name = t[name_index].text
        if report:
            self.handled.update((dot, name_index))
        k = name_index + 1
        args = None
        if k < len(t) and (
            t[k].is_punct("(")
            and t[k].start == t[k - 1].end
            or t[k].is_punct("{")
            and not self.is_body(dot, k)
        ):
            args = self.arguments(k)
            k = args.end
        receiver_name = simple_name(receiver)
        if name in ("self", "init") and args is None:
            return (receiver if name == "self" else None), k
        if receiver_name and self.ours(receiver_name):
            decls = self.api.members(receiver_name, name)
            if not decls:
                if report:
                    self.error(name_index, f"`{receiver_name}` has no member `{name}`")
                return None, k
        elif receiver is not None:
            # A platform type or a collection: known by name only.
            return self.collection_member(receiver, name), k
        elif name[0].isupper() and (
            t[dot - 1].is_punct(">") or t[dot - 1].kind == "ident" and t[dot - 1].text[0].isupper()
        ):
            return None, k  # a nested type of a platform type: `AsyncStream<T>.Continuation`
        else:
            decls = self.api.all_members(name)
            if not decls:
                if report and name not in PLATFORM_MEMBERS:
                    self.error(name_index, f"no type declares a member `{name}`")
                return None, k
        return self.resolve(name_index, name, decls, args, report, receiver_name is None), k

    def collection_member(self, receiver: str, name: str) -> str | None:
        element = element_type(receiver)
        if element and name in ("first", "last", "randomElement"):
            return element + "?"
        return None

    def implicit_member(self, dot: int, report: bool) -> tuple[str | None, int | None]:
        """`.name` with the type from context, which this script does not know: any of the
        package's members of that name, or a platform member."""
        t = self.t
        name_index = dot + 1
        name = t[name_index].text
        if report:
            self.handled.update((dot, name_index))
        k = name_index + 1
        args = None
        if k < len(t) and t[k].is_punct("(") and t[k].start == t[k - 1].end:
            args = self.arguments(k)
            # `case let .str(value)`, `if case .eq(...)`: an enum case pattern.
            before = t[dot - 1] if dot else None
            if (
                before is not None
                and before.kind == "ident"
                and before.text in ("let", "var", "case", "catch")
            ):
                args.pattern = True
            k = args.end
        decls = self.api.all_members(name)
        if not decls:
            if report and name not in PLATFORM_MEMBERS:
                self.error(name_index, f"no type declares a member `{name}`")
            return None, k
        return self.resolve(name_index, name, decls, args, report, True), k

    def resolve(
        self, at: int, name: str, decls: list[Decl], args: Args | None, report: bool, loose: bool
    ) -> str | None:
        """Picks the declarations the use fits; reports when none does. `loose`: the receiver's
        type is unknown, so a platform member of that name may be meant."""
        if args is None:
            fitting = [d for d in decls if d.kind in ("var", "case", "func")]
            if not fitting:
                if report and not (loose and name in PLATFORM_MEMBERS):
                    self.error(at, f"`{name}` is not a property, case or method")
                return None
            types = {d.type for d in fitting if d.kind != "func"}
            return types.pop() if len(types) == 1 else None
        fitting = []
        for decl in decls:
            if decl.kind == "case":
                if match_case(decl.params, args):
                    fitting.append((decl, {}))
            elif decl.kind in ("func", "init"):
                closures = match_params(decl.params or [], args)
                if closures is not None:
                    fitting.append((decl, closures))
            elif decl.kind == "var" and decl.type and is_function_type(decl.type):
                fitting.append((decl, {}))
        if not fitting:
            if report and not (loose and name in PLATFORM_MEMBERS):
                declared = ", ".join(sorted({d.signature() for d in decls}))
                self.error(at, f"no `{name}` takes {self.describe(args)}; declared: {declared}")
            return None
        for _, closures in fitting:
            for brace, param in closures.items():
                self.closure_types.setdefault(brace, closure_params(param.type))
        types = {d.type for d, _ in fitting}
        return types.pop() if len(types) == 1 else None

    def describe(self, args: Args) -> str:
        labels = "".join(f"{label or '_'}:" for label in args.labels)
        closures = " and a trailing closure" * len(args.trailing)
        return f"({labels}){closures}"

    def free_call(self, i: int, name: str, args: Args, report: bool) -> str | None:
        owner = self.enclosing_type()
        decls = self.api.members(owner, name) if owner and self.ours(owner) else []
        if not decls:
            decls = self.api.functions.get(name, [])
        if not decls:
            if report and name not in PLATFORM_FUNCTIONS:
                self.error(i, f"unknown function `{name}`")
            return None
        return self.resolve(i, name, decls, args, report, False)

    def check_init(self, i: int, decls: list[Decl], args: Args, owner: str) -> None:
        if not decls:
            self.error(i, f"`{owner}` declares no initializer")
            return
        self.resolve(i, "init", decls, args, True, False)

    # -- argument lists --------------------------------------------------------------------

    def arguments(self, k: int) -> Args:
        """The call arguments at `k` (`(` or a trailing closure's `{`)."""
        t = self.t
        labels: list[str | None] = []
        braces: list[int | None] = []
        pattern = False
        if t[k].is_punct("("):
            close = matching(t, k)
            for start, end in split_args(t, k + 1, close):
                label = None
                first = start
                if end - start >= 2 and t[start].kind == "ident" and t[start + 1].is_punct(":"):
                    label = t[start].text
                    self.skip.add(start)
                    first = start + 2
                labels.append(label)
                braces.append(first if first < end and t[first].is_punct("{") else None)
                if first < end and (
                    t[first].kind == "ident"
                    and t[first].text in ("let", "var")
                    or t[first].is_ident("_")
                    and end - first == 1
                ):
                    pattern = True
            k = close + 1
        trailing = []
        if k < len(t) and t[k].is_punct("{") and not self.is_body(k - 1, k):
            trailing.append((None, k))
            k = matching(t, k) + 1
            while (
                k + 2 < len(t)
                and t[k].kind == "ident"
                and t[k + 1].is_punct(":")
                and t[k + 2].is_punct("{")
            ):
                self.skip.add(k)
                trailing.append((t[k].text, k + 2))
                k = matching(t, k + 2) + 1
        return Args(labels, braces, trailing, pattern, k)

    def ends_expression(self, k: int) -> bool:
        token = self.t[k]
        if token.kind in ("string", "number"):
            return True
        if token.kind == "ident":
            return (
                token.backticked
                or token.text not in KEYWORDS
                or token.text in ("self", "Self", "true", "false", "nil", "super")
            )
        if token.kind == "punct" and token.text in ")]}>":
            return True  # `>`: a generic type's member, `AsyncStream<Int>.Continuation`
        return token.kind == "punct" and token.text in "?!" and token.start == self.t[k - 1].end

    def is_body(self, call: int, brace: int) -> bool:
        """Whether the `{` at `brace` after a call opens a statement's body (`if`, `for`,
        `catch`, ...) rather than a trailing closure: the line's first word says."""
        t = self.t
        k = call
        depth = 0
        while k > 0:
            token = t[k]
            if token.kind == "punct" and token.text in ")]":
                depth += 1
            elif token.kind == "punct" and token.text in "([":
                if depth == 0:
                    return False
                depth -= 1
            elif token.kind == "punct" and token.text in "{};" and depth == 0 and k != brace:
                break
            if self.src.line_start[k] and depth == 0:
                break
            k -= 1
        first = t[k]
        if first.is_punct("}") and k + 1 < len(t):
            first = t[k + 1]
        if first.kind == "ident" and first.text in CONDITION_KEYWORDS | {"else"}:
            return True
        # `if` later on the line: `} else if ... {`, `} catch ... {`.
        words = {t[j].text for j in range(k, call) if t[j].kind == "ident"}
        return bool(words & CONDITION_KEYWORDS)


# ---------------------------------------------------------------------------------------------


def package_api(sources: pathlib.Path) -> Api:
    api = Api()
    files = sorted(sources.glob("*.swift"))
    if not any(path.name == "Fieldsync.swift" for path in files):
        raise SystemExit(f"{sources}: no generated Fieldsync.swift")
    for path in files:
        declare(api, Source(path, path.read_text()))
    return api


def check_text(api: Api, path: pathlib.Path, text: str) -> list[str]:
    src = Source(path, text)
    local = api.copy()
    declare(local, src)
    return Checker(local, src).run()


def check_sendable(sources: pathlib.Path) -> list[str]:
    generated = (sources / "Fieldsync.swift").read_text()
    wanted = set(re.findall(r"#if compiler\(>=6\)\nextension (\w+): Sendable \{\}", generated))
    errors = set(re.findall(r"\nenum (\w+): Swift\.Error", generated))
    listed = set(
        re.findall(
            r"^extension (\w+): @unchecked Sendable \{\}$",
            (sources / "Sendable.swift").read_text(),
            re.M,
        )
    )
    problems = []
    for name in sorted((wanted - errors) - listed):
        problems.append(
            f"Sendable.swift: `{name}` is missing (uniffi declares it Sendable for Swift 6 only)"
        )
    for name in sorted(listed - (wanted - errors)):
        problems.append(f"Sendable.swift: `{name}` is not a generated record or enum to declare")
    return problems


SELF_TEST = [
    # (snippet, the error it must produce, or None when it must pass)
    ('let id = try store.insert(collection: "c", fields: [:])', None),
    ('let id = try store.instert(collection: "c", fields: [:])', "has no member `instert`"),
    (
        'let id = try store.insert(colection: "c", fields: [:])',
        "no `insert` takes (colection:fields:)",
    ),
    (
        'try store.spliceText(collection: "c", id: i, field: "n", index: 0, deleteCount: 0, '
        'insert: "x")',
        None,
    ),
    (
        'try store.spliceText(collection: "c", id: i, field: "n", at: 0, deleteCount: 0, '
        'insert: "x")',
        "no `spliceText` takes",
    ),
    ("do { try f() } catch FieldsyncError.notFound(let c, let i, _) { }", None),
    (
        "do { try f() } catch FieldsyncError.NotFound(let c, let i, _) { }",
        "`FieldsyncError` has no member `NotFound`",
    ),
    ("do { try f() } catch FieldsyncError.notFound(let c, _) { }", "no `notFound` takes"),
    (
        "switch error { case .NotFound: break default: break }",
        "no type declares a member `NotFound`",
    ),
    ("switch error { case .rateLimited(let ms, _): print(ms) default: break }", None),
    ("let r = try await client.syncNow(store: store) { p in print(p.pushed) }", None),
    (
        "let r = try await client.syncNow(store: store) { p in print(p.pushd) }",
        "`SyncProgress` has no member `pushd`",
    ),
    (
        "let r = try await client.syncWithin(store: store, budgetMillis: 5)",
        "no `syncWithin` takes (store:budgetMillis:)",
    ),
    ("let q = Quer(filter: .all)", "unknown type `Quer`"),
    ("let q = Query(filter: .al)", "no type declares a member `al`"),
    (
        'for r in try store.query(collection: "c", query: q) { print(r.fieldz) }',
        "`Record` has no member `fieldz`",
    ),
]


def self_test(api: Api) -> int:
    failures = 0
    prelude = """
let store = try Store(path: "p", schema: "s")
let client = try SyncClient(config: SyncConfig(endpoint: "e", token: "t"))
func f() throws {}
let i = "x"
let q = Query(filter: .all)
let error = FieldsyncError.internal(reason: "r")
"""
    for snippet, expected in SELF_TEST:
        text = prelude + f"func example() async throws {{\n    {snippet}\n}}\n"
        errors = check_text(api, pathlib.Path("self-test.swift"), text)
        if expected is None and errors:
            print(f"self-test: `{snippet}` should pass, got: {errors}", file=sys.stderr)
            failures += 1
        elif expected is not None and not any(expected in error for error in errors):
            print(
                f"self-test: `{snippet}` should fail with `{expected}`, got: {errors}",
                file=sys.stderr,
            )
            failures += 1
    if failures:
        return 1
    print(f"check_examples self-test: {len(SELF_TEST)} snippets judged as expected")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=pathlib.Path, help="Swift files to check")
    parser.add_argument(
        "--sources", type=pathlib.Path, default=SOURCES, help="the package's sources (declarations)"
    )
    parser.add_argument("--self-test", action="store_true", help="check the checker on snippets")
    parser.add_argument(
        "--sendable", action="store_true", help="check Sendable.swift against the generated file"
    )
    args = parser.parse_args()
    api = package_api(args.sources)
    if args.self_test:
        return self_test(api)
    errors = []
    if args.sendable:
        errors += check_sendable(args.sources)
    for path in args.files:
        errors += check_text(api, path, path.read_text())
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        return 1
    print(f"check_examples: {len(args.files)} files use only declared names and labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
