#!/usr/bin/env bash
# Generates the Swift bindings from the built library (uniffi library mode) into Sources/.
# They are checked in, because Swift packages are consumed from the repository; `--check`
# regenerates into a temp dir and fails if the checked-in copy is stale.
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
