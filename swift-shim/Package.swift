// swift-tools-version:5.10
// libcove_vz.dylib: cove's C ABI over Apple's Virtualization.framework.
// The ABI is include/cove_vz.h; `swift build -c release` writes
// .build/release/libcove_vz.dylib.
// Swift 5.10 (Xcode 15.3) or later: MainActor.assumeIsolated, which
// Exports.swift calls, is back-deployed to macOS 13 only from Swift 5.10 on;
// under Swift 5.9 it is macOS 14+ and the build fails for a macOS 13 target.
import PackageDescription

let package = Package(
  name: "CoveVZ",
  platforms: [.macOS(.v13)],
  products: [
    .library(name: "cove_vz", type: .dynamic, targets: ["CoveVZ"]),
  ],
  targets: [
    .target(
      name: "CoveVZ",
      path: "Sources/CoveVZ",
      linkerSettings: [
        .linkedFramework("Virtualization"),
        .linkedFramework("vmnet"),
        .linkedFramework("AppKit"),
        .linkedFramework("Security"),
      ]
    ),
  ]
)
