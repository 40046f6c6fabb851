// Build.swift: maps the configuration JSON (ConfigJSON.swift) onto
// Virtualization.framework objects, one small function per device kind.
// Every API newer than the deployment target (macOS 13) is gated with
// #available and fails with ShimError.needs(feature, macOS:), which names
// the version. The macOS-guest classes that the SDK declares under __arm64__
// (Mac platform, boot loader, keyboard, trackpad, installer, restore image,
// Rosetta, save/restore) are used inside #if arch(arm64); Mac graphics are
// declared for both architectures but kept there too, since only Apple silicon
// runs macOS guests. swift-shim/sdk-facts.json records which is which.
// swift-shim/API.md lists every call here, its macOS version, and where
// Tart, Code-Hex/vz or vfkit make the same call.

import Foundation
import Virtualization

/// The descriptors a configuration holds: duplicates of the caller's, owned
/// by the shim and closed by closeAll() (on release, after validate, or when
/// building fails), never left to whenever ARC frees the VZ objects.
final class Descriptors: @unchecked Sendable {
  private let lock = NSLock()
  private var handles: [FileHandle] = []

  /// A FileHandle on a close-on-exec duplicate of fd.
  func adopt(_ fd: Int32, _ field: String) throws -> FileHandle {
    let copy = dupCloexec(fd)
    guard copy >= 0 else {
      throw ShimError(code: .io, message: "\(field): descriptor \(fd) is not open")
    }
    let handle = FileHandle(fileDescriptor: copy, closeOnDealloc: false)
    lock.lock()
    handles.append(handle)
    lock.unlock()
    return handle
  }

  var count: Int {
    lock.lock()
    defer { lock.unlock() }
    return handles.count
  }

  func closeAll() {
    lock.lock()
    let all = handles
    handles = []
    lock.unlock()
    for h in all { close(h.fileDescriptor) }
  }
}

enum Build {
  /// The whole configuration; VZ's validate() is left to the caller. The
  /// descriptors it duplicates go into fds, which are closed if building fails.
  static func configuration(_ c: ConfigJSON, _ fds: Descriptors) throws -> VZVirtualMachineConfiguration {
    do {
      return try build(c, fds)
    } catch {
      fds.closeAll()
      throw error
    }
  }

  private static func build(_ c: ConfigJSON, _ fds: Descriptors) throws -> VZVirtualMachineConfiguration {
    try checkLimits(c)
    let config = VZVirtualMachineConfiguration()
    config.cpuCount = c.cpuCount
    config.memorySize = c.memorySize
    config.platform = try platform(c.platform)
    config.bootLoader = try bootLoader(c.bootLoader)
    config.storageDevices = try (c.storage ?? []).enumerated().map { i, s in
      try storage(s, "storage[\(i)]")
    }
    config.networkDevices = try (c.network ?? []).enumerated().map { i, n in
      try network(n, "network[\(i)]", fds)
    }
    config.directorySharingDevices = try (c.directoryShares ?? []).enumerated().map { i, d in
      try directoryShare(d, "directoryShares[\(i)]")
    }
    if c.entropy == true {
      config.entropyDevices = [VZVirtioEntropyDeviceConfiguration()]
    }
    if c.memoryBalloon == true {
      config.memoryBalloonDevices = [VZVirtioTraditionalMemoryBalloonDeviceConfiguration()]
    }
    if c.socket == true {
      config.socketDevices = [VZVirtioSocketDeviceConfiguration()]
    }
    config.serialPorts = try (c.serialPorts ?? []).enumerated().map { i, s in
      let port = VZVirtioConsoleDeviceSerialPortConfiguration()
      port.attachment = try serialAttachment(s, "serialPorts[\(i)]", fds)
      return port
    }
    config.consoleDevices = try consoleDevices(c, fds)
    if let a = c.audio {
      config.audioDevices = [audio(a)]
    }
    config.keyboards = try (c.keyboards ?? []).map(keyboard)
    config.pointingDevices = try (c.pointingDevices ?? []).map(pointingDevice)
    if let g = c.graphics {
      config.graphicsDevices = [try graphics(g)]
    }
    return config
  }

  /// Whether this configuration can be saved and restored (suspend).
  static func saveRestore(_ config: VZVirtualMachineConfiguration) -> [String: Any] {
    #if arch(arm64)
      // validateSaveRestoreSupportWithError: is declared only under
      // #if defined(__arm64__) in VZVirtualMachineConfiguration.h.
      guard #available(macOS 14, *) else {
        return ["supported": false, "error": errorJSON(ShimError.needs("saving machine state", macOS: "14.0"))]
      }
      do {
        try config.validateSaveRestoreSupport()
        return ["supported": true]
      } catch {
        return ["supported": false, "error": errorJSON(error)]
      }
    #else
      let error = ShimError(code: .unsupported, message: "saving machine state needs a Mac with Apple silicon")
      return ["supported": false, "error": errorJSON(error)]
    #endif
  }

  // MARK: CPU and memory

  static func checkLimits(_ c: ConfigJSON) throws {
    let minCPU = VZVirtualMachineConfiguration.minimumAllowedCPUCount
    let maxCPU = VZVirtualMachineConfiguration.maximumAllowedCPUCount
    guard c.cpuCount >= minCPU && c.cpuCount <= maxCPU else {
      throw ShimError.bad("cpuCount", "\(c.cpuCount) is outside \(minCPU)...\(maxCPU), what VZ allows on this Mac")
    }
    let mib: UInt64 = 1 << 20
    let minMem = VZVirtualMachineConfiguration.minimumAllowedMemorySize
    let maxMem = VZVirtualMachineConfiguration.maximumAllowedMemorySize
    guard c.memorySize >= minMem && c.memorySize <= maxMem else {
      throw ShimError.bad(
        "memorySize", "\(c.memorySize / mib) MiB is outside \(minMem / mib)...\(maxMem / mib) MiB, what VZ allows on this Mac")
    }
    guard c.memorySize % mib == 0 else {
      throw ShimError.bad("memorySize", "must be a whole number of MiB")
    }
  }

  // MARK: Platform and boot loader

  static func platform(_ p: PlatformJSON) throws -> VZPlatformConfiguration {
    switch p.type {
    case "mac":
      #if arch(arm64)
        if p.nestedVirtualization == true {
          throw ShimError.bad("platform.nestedVirtualization", "macOS guests cannot use nested virtualization")
        }
        let mac = VZMacPlatformConfiguration()
        let hwData = try identity(p.hardwareModel, "platform.hardwareModel", "hardware model")
        guard let hardwareModel = VZMacHardwareModel(dataRepresentation: hwData) else {
          throw ShimError.bad("platform.hardwareModel", "not a VZ hardware model")
        }
        guard hardwareModel.isSupported else {
          throw ShimError(code: .unsupported, message: "this Mac's macOS cannot run the guest's hardware model; update macOS")
        }
        mac.hardwareModel = hardwareModel
        let idData = try identity(p.machineIdentifier, "platform.machineIdentifier", "machine identifier")
        guard let identifier = VZMacMachineIdentifier(dataRepresentation: idData) else {
          throw ShimError.bad("platform.machineIdentifier", "not a VZ Mac machine identifier")
        }
        mac.machineIdentifier = identifier
        let aux = try existingFile(try need(p.auxiliaryStorage, "platform.auxiliaryStorage"), "platform.auxiliaryStorage")
        mac.auxiliaryStorage = VZMacAuxiliaryStorage(url: aux)
        return mac
      #else
        throw ShimError(code: .unsupported, message: "macOS guests need a Mac with Apple silicon")
      #endif
    case "generic":
      let generic = VZGenericPlatformConfiguration()
      if let id = p.machineIdentifier {
        guard
          let identifier = VZGenericMachineIdentifier(
            dataRepresentation: try base64(id, "platform.machineIdentifier"))
        else {
          throw ShimError.bad("platform.machineIdentifier", "not a VZ generic machine identifier")
        }
        generic.machineIdentifier = identifier
      }
      if p.nestedVirtualization == true {
        guard #available(macOS 15, *) else {
          throw ShimError.needs("nested virtualization", macOS: "15.0")
        }
        guard VZGenericPlatformConfiguration.isNestedVirtualizationSupported else {
          throw ShimError(code: .unsupported, message: "nested virtualization needs an M3 or later Apple chip")
        }
        generic.isNestedVirtualizationEnabled = true
      }
      return generic
    default:
      throw ShimError.bad("platform.type", "expected mac or generic, not \(p.type)")
    }
  }

  static func bootLoader(_ b: BootLoaderJSON) throws -> VZBootLoader {
    switch b.type {
    case "macos":
      #if arch(arm64)
        return VZMacOSBootLoader()
      #else
        throw ShimError(code: .unsupported, message: "macOS guests need a Mac with Apple silicon")
      #endif
    case "efi":
      let efi = VZEFIBootLoader()
      let store = try existingFile(try need(b.variableStore, "bootLoader.variableStore"), "bootLoader.variableStore")
      efi.variableStore = VZEFIVariableStore(url: store)
      return efi
    case "linux":
      let kernel = try existingFile(try need(b.kernel, "bootLoader.kernel"), "bootLoader.kernel")
      let linux = VZLinuxBootLoader(kernelURL: kernel)
      if let initrd = b.initialRamdisk {
        linux.initialRamdiskURL = try existingFile(initrd, "bootLoader.initialRamdisk")
      }
      if let cmdline = b.commandLine {
        linux.commandLine = cmdline
      }
      return linux
    default:
      throw ShimError.bad("bootLoader.type", "expected macos, efi or linux, not \(b.type)")
    }
  }

  // MARK: Storage

  static func storage(_ s: StorageJSON, _ at: String) throws -> VZStorageDeviceConfiguration {
    let url = try existingFile(s.path, "\(at).path")
    switch s.format ?? "raw" {
    case "raw":
      break
    case "asif":
      guard #available(macOS 26, *) else {
        throw ShimError.needs("ASIF disk images", macOS: "26.0")
      }
    default:
      throw ShimError.bad("\(at).format", "expected raw or asif")
    }
    let attachment = try VZDiskImageStorageDeviceAttachment(
      url: url,
      readOnly: s.readOnly ?? false,
      cachingMode: try caching(s.caching, "\(at).caching"),
      synchronizationMode: try sync(s.sync, "\(at).sync"))
    switch s.type {
    case "virtio-block":
      let device = VZVirtioBlockDeviceConfiguration(attachment: attachment)
      if let id = s.identifier {
        try VZVirtioBlockDeviceConfiguration.validateBlockDeviceIdentifier(id)
        device.blockDeviceIdentifier = id
      }
      return device
    case "nvme":
      guard #available(macOS 14, *) else {
        throw ShimError.needs("NVMe storage", macOS: "14.0")
      }
      return VZNVMExpressControllerDeviceConfiguration(attachment: attachment)
    case "usb-mass-storage":
      return VZUSBMassStorageDeviceConfiguration(attachment: attachment)
    default:
      throw ShimError.bad("\(at).type", "expected virtio-block, nvme or usb-mass-storage")
    }
  }

  static func caching(_ s: String?, _ at: String) throws -> VZDiskImageCachingMode {
    switch s ?? "automatic" {
    case "automatic": return .automatic
    case "cached": return .cached
    case "uncached": return .uncached
    default: throw ShimError.bad(at, "expected automatic, cached or uncached")
    }
  }

  static func sync(_ s: String?, _ at: String) throws -> VZDiskImageSynchronizationMode {
    switch s ?? "full" {
    case "full": return VZDiskImageSynchronizationMode.full
    case "fsync": return VZDiskImageSynchronizationMode.fsync
    case "none": return VZDiskImageSynchronizationMode.none
    default: throw ShimError.bad(at, "expected full, fsync or none")
    }
  }

  // MARK: Network

  static func network(_ n: NetworkJSON, _ at: String, _ fds: Descriptors) throws -> VZNetworkDeviceConfiguration {
    let device = VZVirtioNetworkDeviceConfiguration()
    if let mac = n.macAddress {
      guard let address = VZMACAddress(string: mac) else {
        throw ShimError.bad("\(at).macAddress", "not a MAC address")
      }
      device.macAddress = address
    }
    switch n.attachment.type {
    case "nat":
      device.attachment = VZNATNetworkDeviceAttachment()
    case "bridged":
      let name = try need(n.attachment.interface, "\(at).attachment.interface")
      let interfaces = VZBridgedNetworkInterface.networkInterfaces
      guard let interface = interfaces.first(where: { $0.identifier == name }) else {
        let have = interfaces.map { $0.identifier }.joined(separator: ", ")
        throw ShimError(
          code: .unsupported,
          message: "\(at): \(name) cannot be bridged (bridgeable: \(have.isEmpty ? "none" : have)); "
            + "bridging needs the com.apple.vm.networking entitlement")
      }
      device.attachment = VZBridgedNetworkDeviceAttachment(interface: interface)
    case "vmnet":
      guard #available(macOS 26, *) else {
        throw ShimError.needs("\(at): a vmnet network", macOS: "26")
      }
      device.attachment = try vmnetAttachment(n.attachment, at)
    case "fileHandle":
      let fd = try need(n.attachment.fd, "\(at).attachment.fd")
      let attachment = VZFileHandleNetworkDeviceAttachment(fileHandle: try fds.adopt(fd, "\(at).attachment.fd"))
      if let mtu = n.attachment.mtu {
        attachment.maximumTransmissionUnit = mtu
      }
      device.attachment = attachment
    default:
      throw ShimError.bad("\(at).attachment.type", "expected nat, bridged, vmnet or fileHandle")
    }
    return device
  }

  // MARK: Directory sharing

  static func directoryShare(_ d: DirectoryShareJSON, _ at: String) throws -> VZDirectorySharingDeviceConfiguration {
    let tag: String
    if d.automount == true {
      tag = VZVirtioFileSystemDeviceConfiguration.macOSGuestAutomountTag
    } else {
      try VZVirtioFileSystemDeviceConfiguration.validateTag(d.tag)
      tag = d.tag
    }
    let device = VZVirtioFileSystemDeviceConfiguration(tag: tag)
    switch d.share.type {
    case "single":
      let dir = try existingDirectory(try need(d.share.path, "\(at).share.path"), "\(at).share.path")
      device.share = VZSingleDirectoryShare(
        directory: VZSharedDirectory(url: dir, readOnly: d.share.readOnly ?? false))
    case "multiple":
      var directories: [String: VZSharedDirectory] = [:]
      for (name, entry) in try need(d.share.directories, "\(at).share.directories") {
        try VZMultipleDirectoryShare.validateName(name)
        let dir = try existingDirectory(entry.path, "\(at).share.directories.\(name).path")
        directories[name] = VZSharedDirectory(url: dir, readOnly: entry.readOnly ?? false)
      }
      device.share = VZMultipleDirectoryShare(directories: directories)
    case "rosetta":
      #if arch(arm64)
        switch VZLinuxRosettaDirectoryShare.availability {
        case .notSupported:
          throw ShimError(code: .unsupported, message: "Rosetta for Linux guests is not supported on this Mac")
        case .notInstalled:
          throw ShimError(
            code: .unsupported,
            message: "Rosetta is not installed; run 'softwareupdate --install-rosetta --agree-to-license'")
        case .installed:
          break
        @unknown default:
          break
        }
        device.share = try VZLinuxRosettaDirectoryShare()
      #else
        throw ShimError(code: .unsupported, message: "Rosetta for Linux guests needs a Mac with Apple silicon")
      #endif
    default:
      throw ShimError.bad("\(at).share.type", "expected single, multiple or rosetta")
    }
    return device
  }

  // MARK: Serial and console ports

  static func serialAttachment(_ s: SerialJSON, _ at: String, _ fds: Descriptors) throws -> VZSerialPortAttachment {
    switch s.type {
    case "fileHandles":
      let read = try fds.adopt(try need(s.readFd, "\(at).readFd"), "\(at).readFd")
      let write = try fds.adopt(try need(s.writeFd, "\(at).writeFd"), "\(at).writeFd")
      return VZFileHandleSerialPortAttachment(fileHandleForReading: read, fileHandleForWriting: write)
    case "file":
      let url = try fileURL(try need(s.path, "\(at).path"), "\(at).path")
      return try VZFileSerialPortAttachment(url: url, append: s.append ?? true)
    default:
      throw ShimError.bad("\(at).type", "expected fileHandles or file")
    }
  }

  static func consoleDevices(_ c: ConfigJSON, _ fds: Descriptors) throws -> [VZConsoleDeviceConfiguration] {
    var ports: [VZVirtioConsolePortConfiguration] = []
    for (i, p) in (c.consolePorts ?? []).enumerated() {
      let port = VZVirtioConsolePortConfiguration()
      port.name = p.name
      port.isConsole = p.isConsole ?? false
      port.attachment = try serialAttachment(p.attachment, "consolePorts[\(i)].attachment", fds)
      ports.append(port)
    }
    if c.clipboard == true {
      let spice = VZSpiceAgentPortAttachment()
      spice.sharesClipboard = true
      let port = VZVirtioConsolePortConfiguration()
      port.name = VZSpiceAgentPortAttachment.spiceAgentPortName
      port.attachment = spice
      ports.append(port)
    }
    if ports.isEmpty { return [] }
    let device = VZVirtioConsoleDeviceConfiguration()
    for (i, port) in ports.enumerated() {
      device.ports[i] = port
    }
    return [device]
  }

  // MARK: Sound, input, graphics

  static func audio(_ a: AudioJSON) -> VZAudioDeviceConfiguration {
    let device = VZVirtioSoundDeviceConfiguration()
    var streams: [VZVirtioSoundDeviceStreamConfiguration] = []
    if a.input {
      let input = VZVirtioSoundDeviceInputStreamConfiguration()
      input.source = VZHostAudioInputStreamSource()
      streams.append(input)
    }
    if a.output {
      // A suspendable VM's output stream has no host sink (as Tart does):
      // validateSaveRestoreSupport refuses a host audio sink.
      let output = VZVirtioSoundDeviceOutputStreamConfiguration()
      if a.noHostSink != true {
        output.sink = VZHostAudioOutputStreamSink()
      }
      streams.append(output)
    }
    device.streams = streams
    return device
  }

  static func keyboard(_ kind: String) throws -> VZKeyboardConfiguration {
    switch kind {
    case "usb":
      return VZUSBKeyboardConfiguration()
    case "mac":
      #if arch(arm64)
        guard #available(macOS 14, *) else {
          throw ShimError.needs("the Mac keyboard device", macOS: "14.0")
        }
        return VZMacKeyboardConfiguration()
      #else
        throw ShimError(code: .unsupported, message: "the Mac keyboard device needs a Mac with Apple silicon")
      #endif
    default:
      throw ShimError.bad("keyboards", "expected usb or mac, not \(kind)")
    }
  }

  static func pointingDevice(_ kind: String) throws -> VZPointingDeviceConfiguration {
    switch kind {
    case "usb":
      return VZUSBScreenCoordinatePointingDeviceConfiguration()
    case "trackpad":
      #if arch(arm64)
        return VZMacTrackpadConfiguration()
      #else
        throw ShimError(code: .unsupported, message: "the Mac trackpad needs a Mac with Apple silicon")
      #endif
    default:
      throw ShimError.bad("pointingDevices", "expected usb or trackpad, not \(kind)")
    }
  }

  static func graphics(_ g: GraphicsJSON) throws -> VZGraphicsDeviceConfiguration {
    switch g.type {
    case "mac":
      #if arch(arm64)
        let device = VZMacGraphicsDeviceConfiguration()
        device.displays = try need(g.displays, "graphics.displays").map {
          VZMacGraphicsDisplayConfiguration(
            widthInPixels: $0.width, heightInPixels: $0.height, pixelsPerInch: $0.ppi ?? 144)
        }
        return device
      #else
        throw ShimError(code: .unsupported, message: "Mac graphics need a Mac with Apple silicon")
      #endif
    case "virtio":
      let device = VZVirtioGraphicsDeviceConfiguration()
      device.scanouts = try need(g.scanouts, "graphics.scanouts").map {
        VZVirtioGraphicsScanoutConfiguration(widthInPixels: $0.width, heightInPixels: $0.height)
      }
      return device
    default:
      throw ShimError.bad("graphics.type", "expected mac or virtio")
    }
  }

  // MARK: Helpers

  /// A base64 identity of a macOS VM (machine.json); missing or empty gets
  /// its own error, distinct from data VZ does not accept.
  static func identity(_ value: String?, _ field: String, _ what: String) throws -> Data {
    guard let value, !value.isEmpty else {
      throw ShimError.bad(field, "missing: the VM has no \(what); it is written when macOS is installed")
    }
    let data = try base64(value, field)
    guard !data.isEmpty else {
      throw ShimError.bad(field, "missing: the VM has no \(what); it is written when macOS is installed")
    }
    return data
  }

  static func need<T>(_ value: T?, _ field: String) throws -> T {
    guard let value else { throw ShimError.bad(field, "missing") }
    return value
  }

  static func existingFile(_ path: String, _ field: String) throws -> URL {
    let url = try fileURL(path, field)
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue else {
      throw ShimError(code: .io, message: "\(field): \(path) is not a file")
    }
    return url
  }

  static func existingDirectory(_ path: String, _ field: String) throws -> URL {
    let url = try fileURL(path, field)
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
      throw ShimError(code: .io, message: "\(field): \(path) is not a directory")
    }
    return url
  }
}
