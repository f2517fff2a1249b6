#!/usr/bin/env bash
# Builds the library and generates the Python module from it (uniffi library mode), into the
# `fieldsync` package beside the hand-written helpers. Pass --release for an optimised build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
profile=debug
cargo_flags=()
if [ "${1:-}" = "--release" ]; then
    profile=release
    cargo_flags=(--release)
fi

cd "$root"
cargo build --quiet "${cargo_flags[@]}" -p fieldsync-ffi
library="target/$profile/libfieldsync_ffi.so"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"target/$profile/uniffi-bindgen" generate --library "$library" --language python \
    --out-dir "$out" >/dev/null
# The generated module is the package's private half; `fieldsync/__init__.py` re-exports it.
cp "$out/fieldsync.py" "$here/fieldsync/_native.py"
cp "$library" "$here/fieldsync/"
