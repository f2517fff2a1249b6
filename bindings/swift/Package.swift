// swift-tools-version:5.10
// Fieldsync for iOS and macOS. Build the binary target first with
// scripts/build-xcframework.sh (on a Mac with Xcode and rustup). Swift 5.10 at least: the
// generated bindings use `nonisolated(unsafe)`.
import PackageDescription

let package = Package(
    name: "Fieldsync",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Fieldsync", targets: ["Fieldsync"]),
    ],
    targets: [
        // The Rust library for each Apple platform, with the C header and module map from
        // Sources/FieldsyncFFI/include.
        .binaryTarget(name: "FieldsyncFFI", path: "FieldsyncFFI.xcframework"),
        // The generated bindings (Fieldsync.swift) and the Swift conveniences beside them.
        .target(name: "Fieldsync", dependencies: ["FieldsyncFFI"], path: "Sources/Fieldsync"),
        // The usage examples the README quotes: compiled by `swift build`, so that a Mac
        // checks them fully; scripts/check_examples.py checks their names where none runs.
        .target(name: "FieldsyncExamples", dependencies: ["Fieldsync"], path: "Examples"),
        .testTarget(name: "FieldsyncTests", dependencies: ["Fieldsync"], path: "Tests/FieldsyncTests"),
    ]
)
