#!/usr/bin/env bash
# Runs the Kotlin tests on the JVM: builds the library and the server, generates the Kotlin
# bindings from the built library (uniffi library mode) into target/, then runs the JUnit suite
# with Maven, packages the jar (the native library inside, with sources and javadoc jars) and
# runs the *IT tests against that jar with no library override. Needs a JDK 17+ and Maven 3.8+;
# Maven fetches its dependencies on the first run. Extra arguments go to Maven, for example
# `-Dtest=StoreTest` (the jar's tests still run; `-DskipITs` skips them).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

cd "$root"
cargo build --quiet -p fieldsync-ffi -p fieldsync-server
library="$root/target/debug/libfieldsync_ffi.so"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$root/target/debug/uniffi-bindgen" generate "$library" --language kotlin --no-format \
    --out-dir "$out" >/dev/null
# Replace the generated sources only when they changed: the compiler is incremental, and
# recompiling the unchanged bindings would take most of the run.
generated="$here/target/generated-sources/uniffi"
if ! diff -rq "$out" "$generated" >/dev/null 2>&1; then
    # Everything compiled against the old bindings goes too: a call that leaves out defaulted
    # arguments is compiled against the constructor's exact signature, and the incremental
    # compiler does not notice that it changed.
    rm -rf "$here/target"
    mkdir -p "$(dirname "$generated")"
    cp -r "$out" "$generated"
fi

cd "$here"
mvn -B -q verify \
    -Dfieldsync.libraryDir="$(dirname "$library")" \
    -Dfieldsync.library="$library" \
    -Dfieldsync.server="$root/target/debug/fieldsync-server" \
    -Dfieldsync.schema="$root/core/tests/fixtures/clinic.schema.json" \
    "$@"
