#!/usr/bin/env bash
# Builds FieldsyncFFI.xcframework (static libraries for iOS devices, the iOS simulator and
# macOS, with the C header and module map) for Package.swift. Needs macOS with Xcode and
# rustup. Untested where no Apple toolchain exists; see the README.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin
    x86_64-apple-darwin)
rustup target add "${targets[@]}"
for target in "${targets[@]}"; do
    cargo rustc --release -p fieldsync-ffi --lib --crate-type staticlib --target "$target"
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
lib=libfieldsync_ffi.a
mkdir -p "$work/ios-simulator" "$work/macos"
lipo -create "target/aarch64-apple-ios-sim/release/$lib" "target/x86_64-apple-ios/release/$lib" \
    -output "$work/ios-simulator/$lib"
lipo -create "target/aarch64-apple-darwin/release/$lib" "target/x86_64-apple-darwin/release/$lib" \
    -output "$work/macos/$lib"

# Keep the Swift sources in step with the library being packaged.
"$here/generate.sh"
headers="$here/Sources/FieldsyncFFI/include"
rm -rf "$here/FieldsyncFFI.xcframework"
xcodebuild -create-xcframework \
    -library "target/aarch64-apple-ios/release/$lib" -headers "$headers" \
    -library "$work/ios-simulator/$lib" -headers "$headers" \
    -library "$work/macos/$lib" -headers "$headers" \
    -output "$here/FieldsyncFFI.xcframework"
echo "built $here/FieldsyncFFI.xcframework; run 'swift test' in bindings/swift on a Mac"
