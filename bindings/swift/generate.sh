#!/usr/bin/env bash
# Generates the Swift bindings from the built library (uniffi library mode) into Sources/.
# They are checked in, because Swift packages are consumed from the repository; `--check`
# regenerates into a temp dir and fails if the checked-in copy is stale.
#
# After uniffi, scripts/lower_error_cases.py renames the error enums' cases to lowerCamelCase
# (uniffi names them UpperCamel, mozilla/uniffi-rs#2262); the checked-in file is its output.
# Then, as no Swift compiler runs here, scripts/check_examples.py checks that the examples and
# tests call the API as declared (names and argument labels; see its docstring for what it
# cannot see), after its self-test shows it still rejects wrong calls.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
cargo build --quiet -p fieldsync-ffi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
target/debug/uniffi-bindgen generate --library target/debug/libfieldsync_ffi.so \
    --language swift --no-format --out-dir "$out" >/dev/null
mkdir -p "$out/Sources/Fieldsync" "$out/Sources/FieldsyncFFI/include"
mv "$out/Fieldsync.swift" "$out/Sources/Fieldsync/Fieldsync.swift"
mv "$out/FieldsyncFFI.h" "$out/Sources/FieldsyncFFI/include/FieldsyncFFI.h"
mv "$out/FieldsyncFFI.modulemap" "$out/Sources/FieldsyncFFI/include/module.modulemap"
python3 "$here/scripts/lower_error_cases.py" --self-test
python3 "$here/scripts/lower_error_cases.py" "$out/Sources/Fieldsync/Fieldsync.swift" \
    --expect FieldsyncError --expect TokenProviderError

generated=(Sources/Fieldsync/Fieldsync.swift Sources/FieldsyncFFI/include/FieldsyncFFI.h
    Sources/FieldsyncFFI/include/module.modulemap)
if [ "${1:-}" = "--check" ]; then
    for file in "${generated[@]}"; do
        if ! cmp -s "$out/$file" "$here/$file"; then
            echo "bindings/swift/$file is stale: run bindings/swift/generate.sh and commit it" >&2
            exit 1
        fi
    done
    echo "the Swift bindings are up to date"
else
    for file in "${generated[@]}"; do
        mkdir -p "$(dirname "$here/$file")"
        cp "$out/$file" "$here/$file"
    done
fi

# The hand-written sources are checked too: they call the generated API.
handwritten=()
for file in "$here"/Sources/Fieldsync/*.swift; do
    [ "$(basename "$file")" = Fieldsync.swift ] || handwritten+=("$file")
done
python3 "$here/scripts/check_examples.py" --self-test
python3 "$here/scripts/check_examples.py" --sendable "$here/Examples/Usage.swift" \
    "$here"/Tests/FieldsyncTests/*.swift "${handwritten[@]}"
