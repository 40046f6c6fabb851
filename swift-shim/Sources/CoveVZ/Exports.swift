// Exports.swift: the C ABI of include/cove_vz.h, one @_cdecl function per
// declaration, in the header's order. Each is a thin adapter: decode the
// arguments, call Build/Machine/Host/GUI, answer with an envelope.
// tests/unit/abi_drift_test.ts checks names, arity and types against the
// header: C `char *` is UnsafeMutablePointer<CChar>, `const char *` is
// UnsafePointer<CChar>?, uint64_t/uint32_t/int32_t are UInt64/UInt32/Int32.

import Foundation
import Virtualization

let abiVersion: UInt32 = 2  // COVE_VZ_ABI_VERSION

// MARK: library

@_cdecl("cove_abi_version")
public func cove_abi_version() -> UInt32 {
  abiVersion
}

@_cdecl("cove_free")
public func cove_free(_ s: UnsafeMutablePointer<CChar>?) {
  free(s)
}

// MARK: host

@_cdecl("cove_vz_host_info")
public func cove_vz_host_info() -> UnsafeMutablePointer<CChar> {
  reply { Host.info() }
}

@_cdecl("cove_vz_validate")
public func cove_vz_validate(_ configJSON: UnsafePointer<CChar>?) -> UnsafeMutablePointer<CChar> {
  reply {
    let fds = Descriptors()
    defer { fds.closeAll() }  // validate boots nothing: the duplicates are not needed after
    let config = try Build.configuration(try decode(ConfigJSON.self, configJSON, "config_json"), fds)
    try config.validate()
    return ["saveRestore": Build.saveRestore(config)]
  }
}

@_cdecl("cove_vz_rosetta_install")
public func cove_vz_rosetta_install() -> UnsafeMutablePointer<CChar> {
  reply { try Host.installRosetta() }
}

// MARK: machine identity and boot state

@_cdecl("cove_vz_machine_identifier_new")
public func cove_vz_machine_identifier_new(_ platform: UnsafePointer<CChar>?) -> UnsafeMutablePointer<CChar> {
  reply { try Host.newMachineIdentifier(try arg(platform, "platform")) }
}

@_cdecl("cove_vz_mac_auxiliary_storage_create")
public func cove_vz_mac_auxiliary_storage_create(
  _ path: UnsafePointer<CChar>?, _ hardwareModelB64: UnsafePointer<CChar>?
) -> UnsafeMutablePointer<CChar> {
  reply {
    try Host.createAuxiliaryStorage(
      path: try arg(path, "path"), hardwareModel: try arg(hardwareModelB64, "hardware_model_b64"))
    return [:]
  }
}

@_cdecl("cove_vz_efi_variable_store_create")
public func cove_vz_efi_variable_store_create(_ path: UnsafePointer<CChar>?) -> UnsafeMutablePointer<CChar> {
  reply {
    try Host.createEFIVariableStore(path: try arg(path, "path"))
    return [:]
  }
}

// MARK: macOS restore images

@_cdecl("cove_vz_restore_image_load")
public func cove_vz_restore_image_load(_ ipswPath: UnsafePointer<CChar>?) -> UnsafeMutablePointer<CChar> {
  reply { try Host.loadRestoreImage(path: try arg(ipswPath, "ipsw_path")) }
}

@_cdecl("cove_vz_restore_image_fetch_latest")
public func cove_vz_restore_image_fetch_latest() -> UnsafeMutablePointer<CChar> {
  reply { try Host.fetchLatestRestoreImage() }
}

// MARK: virtual machines

@_cdecl("cove_vz_create")
public func cove_vz_create(_ configJSON: UnsafePointer<CChar>?) -> UnsafeMutablePointer<CChar> {
  reply {
    let fds = Descriptors()
    let config = try Build.configuration(try decode(ConfigJSON.self, configJSON, "config_json"), fds)
    do {
      try config.validate()
    } catch {
      fds.closeAll()
      throw error
    }
    let machine = Registry.add { Machine(handle: $0, configuration: config, descriptors: fds) }
    return ["handle": machine.handle, "saveRestore": Build.saveRestore(config)]
  }
}

@_cdecl("cove_vz_release")
public func cove_vz_release(_ vm: UInt64) -> UnsafeMutablePointer<CChar> {
  reply {
    guard let machine = Registry.remove(vm) else {
      throw ShimError(code: .noSuchHandle, message: "no VM with handle \(vm)")
    }
    machine.tearDown()
    return [:]
  }
}

@_cdecl("cove_vz_state")
public func cove_vz_state(_ vm: UInt64) -> UnsafeMutablePointer<CChar> {
  reply { try Registry.live(vm).stateInfo() }
}

@_cdecl("cove_vz_start")
public func cove_vz_start(_ vm: UInt64, _ optionsJSON: UnsafePointer<CChar>?) -> UnsafeMutablePointer<CChar> {
  reply {
    var options = StartOptionsJSON()
    if optionsJSON != nil {
      options = try decode(StartOptionsJSON.self, optionsJSON, "options_json")
    }
    try Registry.live(vm).start(options)
    return [:]
  }
}

@_cdecl("cove_vz_request_stop")
public func cove_vz_request_stop(_ vm: UInt64) -> UnsafeMutablePointer<CChar> {
  reply {
    try Registry.live(vm).requestStop()
    return [:]
  }
}

@_cdecl("cove_vz_stop")
public func cove_vz_stop(_ vm: UInt64) -> UnsafeMutablePointer<CChar> {
  reply {
    try Registry.live(vm).stop()
    return [:]
  }
}

@_cdecl("cove_vz_pause")
public func cove_vz_pause(_ vm: UInt64) -> UnsafeMutablePointer<CChar> {
  reply {
    try Registry.live(vm).pause()
    return [:]
  }
}

@_cdecl("cove_vz_resume")
public func cove_vz_resume(_ vm: UInt64) -> UnsafeMutablePointer<CChar> {
  reply {
    try Registry.live(vm).resume()
    return [:]
  }
}

@_cdecl("cove_vz_save")
public func cove_vz_save(_ vm: UInt64, _ path: UnsafePointer<CChar>?) -> UnsafeMutablePointer<CChar> {
  reply {
    try Registry.live(vm).save(to: try fileURL(try arg(path, "path"), "path"))
    return [:]
  }
}

@_cdecl("cove_vz_restore")
public func cove_vz_restore(_ vm: UInt64, _ path: UnsafePointer<CChar>?) -> UnsafeMutablePointer<CChar> {
  reply {
    try Registry.live(vm).restore(from: try fileURL(try arg(path, "path"), "path"))
    return [:]
  }
}

@_cdecl("cove_vz_set_balloon_target")
public func cove_vz_set_balloon_target(_ vm: UInt64, _ bytes: UInt64) -> UnsafeMutablePointer<CChar> {
  reply { ["targetMemorySize": try Registry.live(vm).setBalloonTarget(bytes)] }
}

@_cdecl("cove_vz_vsock_connect")
public func cove_vz_vsock_connect(_ vm: UInt64, _ port: UInt32) -> UnsafeMutablePointer<CChar> {
  reply { try Registry.live(vm).vsockConnect(port) }
}

@_cdecl("cove_vz_vsock_listen")
public func cove_vz_vsock_listen(_ vm: UInt64, _ port: UInt32) -> UnsafeMutablePointer<CChar> {
  reply {
    try Registry.live(vm).vsockListen(port)
    return [:]
  }
}

@_cdecl("cove_vz_vsock_unlisten")
public func cove_vz_vsock_unlisten(_ vm: UInt64, _ port: UInt32) -> UnsafeMutablePointer<CChar> {
  reply {
    try Registry.live(vm).vsockUnlisten(port)
    return [:]
  }
}

@_cdecl("cove_vz_next_event")
public func cove_vz_next_event(_ vm: UInt64, _ timeoutMs: Int32) -> UnsafeMutablePointer<CChar> {
  reply {
    let (event, closed) = try Registry.events(vm).next(timeoutMs: timeoutMs)
    return ["event": event.map { $0 as Any } ?? NSNull(), "closed": closed]
  }
}

// MARK: macOS install

@_cdecl("cove_vz_install_macos")
public func cove_vz_install_macos(_ vm: UInt64, _ ipswPath: UnsafePointer<CChar>?) -> UnsafeMutablePointer<CChar> {
  reply {
    try Registry.live(vm).installMacOS(from: try fileURL(try arg(ipswPath, "ipsw_path"), "ipsw_path"))
    return [:]
  }
}

@_cdecl("cove_vz_install_cancel")
public func cove_vz_install_cancel(_ vm: UInt64) -> UnsafeMutablePointer<CChar> {
  reply {
    try Registry.live(vm).installCancel()
    return [:]
  }
}

// MARK: GUI

@_cdecl("cove_vz_show_window")
public func cove_vz_show_window(_ vm: UInt64, _ optionsJSON: UnsafePointer<CChar>?) -> UnsafeMutablePointer<CChar> {
  reply {
    guard Thread.isMainThread else {
      throw ShimError(code: .notMainThread, message: "cove_vz_show_window must be called on the main thread")
    }
    let machine = try Registry.live(vm)
    let options = try decode(WindowOptionsJSON.self, optionsJSON, "options_json")
    MainActor.assumeIsolated { GUI.showWindow(machine, options) }
    return [:]
  }
}

@_cdecl("cove_vz_pump")
public func cove_vz_pump(_ timeoutMs: Int32) -> Int32 {
  guard Thread.isMainThread else { return -1 }
  return MainActor.assumeIsolated { GUI.pump(timeoutMs) }
}
