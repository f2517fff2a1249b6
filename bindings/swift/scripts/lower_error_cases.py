#!/usr/bin/env python3
"""Renames the cases of the generated error enums to lowerCamelCase, in place.

uniffi's Swift generator names the cases of an error enum like classes (`case NotFound(...)`,
mozilla/uniffi-rs#2262) while it names every other enum's cases as the Swift API guidelines
ask (`case eq(...)`). Apps would then write `catch FieldsyncError.NotFound`, beside
`Filter.eq` and `SyncState.signInRequired`. This script, run by generate.sh on every
generation, renames them as uniffi renames other cases (`NotFound` -> `notFound`,
`IOError` -> `ioError`), backticking Swift keywords (`Protocol` -> `` `protocol` ``), in:

- the enum's declaration (`case NotFound(` and every `.NotFound` inside its body);
- its FfiConverter (`return .NotFound(` in `read`, `case let .NotFound(` in `write`);
- every qualified reference elsewhere in the code (`FieldsyncError.NotFound`);
- qualified references in doc comments (`TokenProviderError.SignInRequired`), without
  backticks, as documentation names them.

The rename is deterministic (same input, same output) and refuses to guess: it exits non-zero,
changing nothing, when the generated code no longer has the shape it knows: an enum named
with `--expect` is not found, or is not an error enum; an error type is used by a call
(`rustCallWithError`, `lowerError:`) but was not found as an error enum; a case is not read
and written exactly once by its FfiConverter; a case name is not UpperCamelCase (if uniffi
starts generating lowerCamel names itself, this step is to be removed); two cases would get
the same name; or an UpperCamel reference is left after the rename.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from swift_lexer import SWIFT_KEYWORDS, Token, code_tokens, line_of, matching, tokenize  # noqa: E402

UPPER_CAMEL = re.compile(r"[A-Z][A-Za-z0-9]*")


class ShapeError(Exception):
    """The generated code is not shaped as this script expects."""


def lower_camel(name: str) -> str:
    """`NotFound` -> `notFound`, `IOError` -> `ioError`, `Io` -> `io`, `HTTP` -> `http`: the
    leading capitals become lowercase, except the last when it starts the next word (heck's
    `to_lower_camel_case`, which uniffi uses for the other enums' cases)."""
    if not UPPER_CAMEL.fullmatch(name):
        raise ShapeError(f"the case `{name}` is not UpperCamelCase")
    run = re.match(r"[A-Z]+", name).end()
    if run == len(name) or run == 1:
        return name[:run].lower() + name[run:]
    if name[run].islower():
        run -= 1
    return name[:run].lower() + name[run:]


def quoted(name: str) -> str:
    return f"`{name}`" if name in SWIFT_KEYWORDS else name


def error_enums(code: list[Token]) -> dict[str, tuple[int, int]]:
    """Each `enum Name: ..., Swift.Error, ... {`: its name and body's token range."""
    found = {}
    for i, token in enumerate(code):
        if not token.is_ident("enum") or i + 2 >= len(code) or not code[i + 2].is_punct(":"):
            continue
        name = code[i + 1].text
        j = i + 3
        inherits = []
        while j < len(code) and not code[j].is_punct("{"):
            inherits.append(code[j].text)
            j += 1
        conformances = "".join(inherits).split(",")
        if "Swift.Error" in conformances or "Error" in conformances:
            found[name] = (j, matching(code, j))
    return found


def struct_body(code: list[Token], name: str) -> tuple[int, int]:
    for i, token in enumerate(code[:-1]):
        if token.is_ident("struct") and code[i + 1].is_ident(name):
            j = i + 2
            while not code[j].is_punct("{"):
                j += 1
            return j, matching(code, j)
    raise ShapeError(f"`struct {name}` (the enum's FfiConverter) is not generated any more")


def declared_cases(code: list[Token], body: tuple[int, int]) -> list[int]:
    """Indexes of the case-name tokens declared directly in the enum body."""
    found = []
    depth = 0
    i = body[0] + 1
    while i < body[1]:
        token = code[i]
        if token.kind == "punct" and token.text in "([{":
            depth += 1
        elif token.kind == "punct" and token.text in ")]}":
            depth -= 1
        elif depth == 0 and token.is_ident("case") and not token.backticked:
            # `case A(...), B` declares several.
            j = i + 1
            while True:
                if code[j].kind != "ident":
                    raise ShapeError(f"an enum case at offset {code[j].start} has no name")
                found.append(j)
                j += 1
                if code[j].is_punct("("):
                    j = matching(code, j) + 1
                if not code[j].is_punct(","):
                    break
                j += 1
            i = j
            continue
        i += 1
    return found


def used_error_types(code: list[Token]) -> set[str]:
    """Error types the generated calls lift or lower: `rustCallWithError(FfiConverterTypeX_lift`,
    `lowerError: FfiConverterTypeX_lower` and the like."""
    used = set()
    for i, token in enumerate(code[:-2]):
        if (
            token.is_ident("rustCallWithError")
            or token.is_ident("lowerError")
            or token.is_ident("errorHandler")
        ):
            for following in code[i + 1 : i + 4]:
                match = re.fullmatch(r"FfiConverterType(\w+)_(lift|lower)", following.text)
                if match:
                    used.add(match.group(1))
    return used


def rename(source: str, expected: list[str]) -> tuple[str, dict[str, dict[str, str]]]:
    tokens = tokenize(source)
    code = code_tokens(tokens)
    enums = error_enums(code)
    for name in expected:
        if name not in enums:
            raise ShapeError(f"`{name}` is not generated as an `enum {name}: Swift.Error`")
    unknown = used_error_types(code) - enums.keys()
    if unknown:
        raise ShapeError(
            f"error types used by the generated calls but not found: {sorted(unknown)}"
        )
    if not enums:
        raise ShapeError("no error enum found")

    edits: dict[int, str] = {}  # token start offset -> replacement text
    spans: dict[int, int] = {}
    renames: dict[str, dict[str, str]] = {}

    def edit(token: Token, new: str) -> None:
        edits[token.start] = new
        spans[token.start] = token.end

    for enum, body in sorted(enums.items()):
        declared = declared_cases(code, body)
        if not declared:
            raise ShapeError(f"`{enum}` declares no case")
        names = {code[i].text: lower_camel(code[i].text) for i in declared}
        if len(set(names.values())) != len(names):
            raise ShapeError(f"two cases of `{enum}` would have the same lowerCamel name")
        for i in declared:
            edit(code[i], quoted(names[code[i].text]))
        renames[enum] = names

        # Inside the enum body and its converter, every `.Case` is one of its cases.
        converter = struct_body(code, f"FfiConverterType{enum}")
        in_converter = {name: 0 for name in names}
        for start, end in (body, converter):
            for i in range(start, end):
                if (
                    code[i].is_punct(".")
                    and code[i + 1].kind == "ident"
                    and code[i + 1].text in names
                ):
                    edit(code[i + 1], quoted(names[code[i + 1].text]))
                    if start == converter[0]:
                        in_converter[code[i + 1].text] += 1
        for case, count in in_converter.items():
            if count != 2:
                raise ShapeError(
                    f"`{enum}.{case}` is referenced {count} times in its FfiConverter, "
                    "expected twice (read and write)"
                )

        # Elsewhere, the qualified `Enum.Case`.
        for i in range(len(code) - 2):
            if (
                code[i].is_ident(enum)
                and code[i + 1].is_punct(".")
                and code[i + 2].kind == "ident"
                and code[i + 2].text in names
            ):
                edit(code[i + 2], quoted(names[code[i + 2].text]))

    # Doc comments: the qualified names only (an unqualified `SignInRequired` may be the
    # SyncState case or prose).
    qualified = {
        f"{enum}.{old}": f"{enum}.{new}"
        for enum, names in renames.items()
        for old, new in names.items()
    }
    pattern = re.compile(r"\b(" + "|".join(re.escape(name) for name in qualified) + r")\b")
    for token in tokens:
        if token.kind == "comment" and pattern.search(token.text):
            edit(token, pattern.sub(lambda m: qualified[m.group(1)], token.text))

    out = []
    last = 0
    for start in sorted(edits):
        out.append(source[last:start])
        out.append(edits[start])
        last = spans[start]
    out.append(source[last:])
    result = "".join(out)
    verify(result, renames)
    return result, renames


def verify(result: str, renames: dict[str, dict[str, str]]) -> None:
    """Fails if an UpperCamel case is still declared or referenced in code."""
    code = code_tokens(tokenize(result))
    enums = error_enums(code)
    for enum, names in renames.items():
        body = enums[enum]
        left = [code[i].text for i in declared_cases(code, body) if code[i].text in names]
        if left:
            raise ShapeError(f"`{enum}` still declares {left}")
        converter = struct_body(code, f"FfiConverterType{enum}")
        for start, end in (body, converter):
            for i in range(start, end):
                if code[i].is_punct(".") and code[i + 1].text in names:
                    raise ShapeError(
                        f"line {line_of(result, code[i].start)}: `.{code[i + 1].text}` left"
                    )
        for i in range(len(code) - 2):
            if code[i].is_ident(enum) and code[i + 1].is_punct(".") and code[i + 2].text in names:
                raise ShapeError(
                    f"line {line_of(result, code[i].start)}: `{enum}.{code[i + 2].text}` left"
                )


# The shape uniffi generates, in small, for the self-test.
SAMPLE = """
/** Throw `DemoError.SignInRequired` to stop. */
public
enum DemoError: Swift.Error, Equatable, Hashable, Foundation.LocalizedError {
    case NotFound(collection: String, reason: String)
    case Protocol(reason: String)
    case IOError(reason: String)
}
public struct FfiConverterTypeDemoError: FfiConverterRustBuffer {
    public static func read(from buf: inout (data: Data, offset: Data.Index)) throws -> DemoError {
        let variant: Int32 = try readInt(&buf)
        switch variant {
        case 1: return .NotFound(collection: try read(from: &buf), reason: try read(from: &buf))
        case 2: return .Protocol(reason: try read(from: &buf))
        case 3: return .IOError(reason: try read(from: &buf))
        default: throw UniffiInternalError.unexpectedEnumCase
        }
    }
    public static func write(_ value: DemoError, into buf: inout [UInt8]) {
        switch value {
        case let .NotFound(collection,reason): writeInt(&buf, Int32(1))
        case let .Protocol(reason): writeInt(&buf, Int32(2))
        case let .IOError(reason): writeInt(&buf, Int32(3))
        }
    }
}
func demo() throws { try rustCallWithError(FfiConverterTypeDemoError_lift) { DemoError.NotFound } }
"""


def self_test() -> int:
    """Shows the rename on a small sample, and that a changed shape fails it."""
    result, _ = rename(SAMPLE, ["DemoError"])
    expected = [
        "case notFound(collection: String, reason: String)",
        "case `protocol`(reason: String)",
        "case ioError(reason: String)",
        "return .`protocol`(reason:",
        "case let .notFound(collection,reason)",
        "DemoError.notFound }",
        "Throw `DemoError.SignInRequired`",  # not a case of DemoError: left alone
    ]
    failures = [text for text in expected if text not in result]
    broken = {
        "a case missing from write": SAMPLE.replace(
            "case let .IOError(reason): writeInt(&buf, Int32(3))", ""
        ),
        "an expected enum missing": SAMPLE.replace(
            "enum DemoError: Swift.Error", "enum DemoError: Equatable"
        ),
        "cases lowerCamel already": SAMPLE.replace("NotFound", "notFound"),
        "an error type used but not found": SAMPLE.replace(
            "FfiConverterTypeDemoError_lift", "FfiConverterTypeOtherError_lift"
        ),
    }
    for what, sample in broken.items():
        try:
            rename(sample, ["DemoError"])
            failures.append(f"no failure for {what}")
        except ShapeError:
            pass
    for failure in failures:
        print(f"lower_error_cases self-test: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"lower_error_cases self-test: the sample renamed, {len(broken)} changed shapes refused")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "file", type=pathlib.Path, help="the generated Swift file, rewritten in place"
    )
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="ENUM",
        help="an error enum that must be found (repeatable)",
    )
    args = parser.parse_args()
    source = args.file.read_text()
    try:
        result, renames = rename(source, args.expect)
    except ShapeError as err:
        print(f"{args.file.name}: cannot rename the error cases: {err}", file=sys.stderr)
        print(
            "the generated code's shape changed: update bindings/swift/scripts/"
            "lower_error_cases.py",
            file=sys.stderr,
        )
        return 1
    args.file.write_text(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
