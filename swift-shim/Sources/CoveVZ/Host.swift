// Host.swift: what this Mac can do (VZ support, limits, nested
// virtualization, Rosetta, entitlements of the running process), machine
// identities and boot state files, and macOS restore images.

import Foundation
import Security
import Virtualization

enum Host {
  static func info() -> [String: Any] {
    let v = ProcessInfo.processInfo.operatingSystemVersion
    var out: [String: Any] = [
      "supported": VZVirtualMachine.isSupported,
      "macosVersion": "\(v.majorVersion).\(v.minorVersion).\(v.patchVersion)",
      "machineModel": sysctlString("hw.model") ?? "",
      "cpuCount": [
        "min": VZVirtualMachineConfiguration.minimumAllowedCPUCount,
        "max": VZVirtualMachineConfiguration.maximumAllowedCPUCount,
      ],
      "memorySize": [
        "min": VZVirtualMachineConfiguration.minimumAllowedMemorySize,
        "max": VZVirtualMachineConfiguration.maximumAllowedMemorySize,
      ],
      "entitlements": [
        "virtualization": hasEntitlement("com.apple.security.virtualization"),
        "networking": hasEntitlement("com.apple.vm.networking"),
      ],
      "bridgedInterfaces": VZBridgedNetworkInterface.networkInterfaces.map {
        ["identifier": $0.identifier, "name": $0.localizedDisplayName ?? $0.identifier]
      },
      "rosetta": rosettaAvailability(),
    ]
    if #available(macOS 15, *) {
      out["nestedVirtualizationSupported"] = VZGenericPlatformConfiguration.isNestedVirtualizationSupported
    } else {
      out["nestedVirtualizationSupported"] = false
    }
    #if arch(arm64)
      if #available(macOS 14, *) {
        out["saveRestoreSupported"] = true
      } else {
        out["saveRestoreSupported"] = false
      }
    #else
      out["saveRestoreSupported"] = false  // save/restore are arm64-only in the SDK
    #endif
    return out
  }

  static func rosettaAvailability() -> String {
    #if arch(arm64)
      switch VZLinuxRosettaDirectoryShare.availability {
      case .installed: return "installed"
      case .notInstalled: return "notInstalled"
      case .notSupported: return "notSupported"
      @unknown default: return "notSupported"
      }
    #else
      return "notSupported"
    #endif
  }

  /// Asks macOS to install Rosetta (a system dialog, then a download);
  /// blocks until answered, at most 15 minutes.
  static func installRosetta() throws -> [String: Any] {
    #if arch(arm64)
      let result: Result<Void, Error> = waitFor("installing Rosetta", seconds: 900) { done in
        VZLinuxRosettaDirectoryShare.installRosetta(completionHandler: orError(done))
      }
      try result.get()
      return ["rosetta": rosettaAvailability()]
    #else
      throw ShimError(code: .unsupported, message: "Rosetta for Linux guests needs a Mac with Apple silicon")
    #endif
  }

  /// Whether the running process was signed with an entitlement.
  static func hasEntitlement(_ name: String) -> Bool {
    guard let task = SecTaskCreateFromSelf(nil) else { return false }
    guard let value = SecTaskCopyValueForEntitlement(task, name as CFString, nil) else { return false }
    return (value as? Bool) ?? false
  }

  static func sysctlString(_ name: String) -> String? {
    var size = 0
    guard sysctlbyname(name, nil, &size, nil, 0) == 0, size > 0 else { return nil }
    var buffer = [CChar](repeating: 0, count: size)
    guard sysctlbyname(name, &buffer, &size, nil, 0) == 0 else { return nil }
    return String(cString: buffer)
  }

  // MARK: Identities and boot state

  static func newMachineIdentifier(_ platform: String) throws -> [String: Any] {
    switch platform {
    case "mac":
      #if arch(arm64)
        return ["machineIdentifier": VZMacMachineIdentifier().dataRepresentation.base64EncodedString()]
      #else
        throw ShimError(code: .unsupported, message: "macOS guests need a Mac with Apple silicon")
      #endif
    case "generic":
      return ["machineIdentifier": VZGenericMachineIdentifier().dataRepresentation.base64EncodedString()]
    default:
      throw ShimError.bad("platform", "expected mac or generic")
    }
  }

  static func createAuxiliaryStorage(path: String, hardwareModel: String) throws {
    #if arch(arm64)
      let data = try Build.identity(hardwareModel, "hardwareModel", "hardware model")
      guard let model = VZMacHardwareModel(dataRepresentation: data) else {
        throw ShimError.bad("hardwareModel", "not a VZ hardware model")
      }
      _ = try VZMacAuxiliaryStorage(creatingStorageAt: try fileURL(path, "path"), hardwareModel: model, options: [])
    #else
      throw ShimError(code: .unsupported, message: "macOS guests need a Mac with Apple silicon")
    #endif
  }

  static func createEFIVariableStore(path: String) throws {
    _ = try VZEFIVariableStore(creatingVariableStoreAt: try fileURL(path, "path"), options: [])
  }

  // MARK: Restore images

  static func loadRestoreImage(path: String) throws -> [String: Any] {
    #if arch(arm64)
      // loadFileURL: raises an exception unless the URL is a local file.
      let url = try Build.existingFile(path, "ipsw_path")
      let result: Result<VZMacOSRestoreImage, Error> = waitFor("loading the restore image", seconds: 300) {
        done in
        VZMacOSRestoreImage.load(from: url, completionHandler: done)
      }
      return ["image": imageJSON(try result.get())]
    #else
      throw ShimError(code: .unsupported, message: "macOS guests need a Mac with Apple silicon")
    #endif
  }

  static func fetchLatestRestoreImage() throws -> [String: Any] {
    #if arch(arm64)
      let result: Result<VZMacOSRestoreImage, Error> = waitFor(
        "fetching the latest restore image", seconds: 120
      ) { done in
        VZMacOSRestoreImage.fetchLatestSupported { result in done(result) }
      }
      return ["image": imageJSON(try result.get())]
    #else
      throw ShimError(code: .unsupported, message: "macOS guests need a Mac with Apple silicon")
    #endif
  }

  #if arch(arm64)
    static func imageJSON(_ image: VZMacOSRestoreImage) -> [String: Any] {
      let v = image.operatingSystemVersion
      var out: [String: Any] = [
        "url": image.url.isFileURL ? image.url.path : image.url.absoluteString,
        "buildVersion": image.buildVersion,
        "operatingSystemVersion": "\(v.majorVersion).\(v.minorVersion).\(v.patchVersion)",
        "supported": image.isSupported,
      ]
      if let req = image.mostFeaturefulSupportedConfiguration {
        out["requirements"] = [
          "hardwareModel": req.hardwareModel.dataRepresentation.base64EncodedString(),
          "minimumCPUCount": req.minimumSupportedCPUCount,
          "minimumMemorySize": req.minimumSupportedMemorySize,
        ]
      } else {
        out["requirements"] = NSNull()
      }
      return out
    }
  #endif
}
