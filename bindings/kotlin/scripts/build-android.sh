#!/usr/bin/env bash
# Builds the Android shared libraries (arm64-v8a, armeabi-v7a, x86_64, x86) with cargo-ndk
# into a jniLibs folder (default: bindings/kotlin/android/jniLibs, or the first argument) that
# an Android module lists in `sourceSets.main.jniLibs.srcDirs`, next to the generated Kotlin
# (test.sh shows how to generate it). Needs the Android NDK
# (ANDROID_NDK_HOME). Untested where no NDK exists; see the README.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/bindings/kotlin/android/jniLibs}"
cd "$root"

: "${ANDROID_NDK_HOME:?set ANDROID_NDK_HOME to the Android NDK}"
command -v cargo-ndk >/dev/null || cargo install cargo-ndk --locked
rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android \
    i686-linux-android
cargo ndk -t arm64-v8a -t armeabi-v7a -t x86_64 -t x86 --platform 24 -o "$out" \
    build --release -p fieldsync-ffi
echo "built the Android libraries into $out"
