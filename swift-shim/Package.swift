// swift-tools-version:5.9
// libcove_vz.dylib: cove's C ABI over Apple's Virtualization.framework.
// The ABI is include/cove_vz.h; `swift build -c release` writes
// .build/release/libcove_vz.dylib.
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
