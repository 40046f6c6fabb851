// ConfigJSON.swift: the VM configuration JSON of cove_vz.h as Decodable
// structs. Tagged unions are flat structs with a `type` and optional fields;
// Build.swift switches on `type` and names any missing field in its error.
// Field names match ffi/cove_vz_json.ts exactly.

struct ConfigJSON: Decodable {
  var cpuCount: Int
  var memorySize: UInt64
  var platform: PlatformJSON
  var bootLoader: BootLoaderJSON
  var storage: [StorageJSON]?
  var network: [NetworkJSON]?
  var directoryShares: [DirectoryShareJSON]?
  var entropy: Bool?
  var memoryBalloon: Bool?
  var socket: Bool?
  var serialPorts: [SerialJSON]?
  var consolePorts: [ConsolePortJSON]?
  var clipboard: Bool?
  var audio: AudioJSON?
  var keyboards: [String]?
  var pointingDevices: [String]?
  var graphics: GraphicsJSON?
}

struct PlatformJSON: Decodable {
  var type: String  // "mac" | "generic"
  var hardwareModel: String?
  var machineIdentifier: String?
  var auxiliaryStorage: String?
  var nestedVirtualization: Bool?
}

struct BootLoaderJSON: Decodable {
  var type: String  // "macos" | "efi" | "linux"
  var variableStore: String?
  var kernel: String?
  var initialRamdisk: String?
  var commandLine: String?
}

struct StorageJSON: Decodable {
  var type: String  // "virtio-block" | "nvme" | "usb-mass-storage"
  var path: String
  var format: String?  // "raw" (default) | "asif"
  var readOnly: Bool?
  var caching: String?  // "automatic" | "cached" | "uncached"
  var sync: String?  // "full" | "fsync" | "none"
  var identifier: String?
}

struct NetworkAttachmentJSON: Decodable {
  var type: String  // "nat" | "bridged" | "fileHandle" | "vmnet"
  var interface: String?
  var mode: String?  // vmnet: "host" | "shared"
  var subnet: String?  // vmnet: IPv4 CIDR
  var fd: Int32?
  var mtu: Int?
}

struct NetworkJSON: Decodable {
  var macAddress: String?
  var attachment: NetworkAttachmentJSON
}

struct SharedDirectoryJSON: Decodable {
  var path: String
  var readOnly: Bool?
}

struct ShareJSON: Decodable {
  var type: String  // "single" | "multiple" | "rosetta"
  var path: String?
  var readOnly: Bool?
  var directories: [String: SharedDirectoryJSON]?
}

struct DirectoryShareJSON: Decodable {
  var tag: String
  var automount: Bool?
  var share: ShareJSON
}

struct SerialJSON: Decodable {
  var type: String  // "fileHandles" | "file"
  var readFd: Int32?
  var writeFd: Int32?
  var path: String?
  var append: Bool?
}

struct ConsolePortJSON: Decodable {
  var name: String
  var isConsole: Bool?
  var attachment: SerialJSON
}

struct AudioJSON: Decodable {
  var input: Bool
  var output: Bool
  var noHostSink: Bool?  // true: the output stream has no host sink (suspendable VMs)
}

struct DisplayJSON: Decodable {
  var width: Int
  var height: Int
  var ppi: Int?
}

struct GraphicsJSON: Decodable {
  var type: String  // "mac" | "virtio"
  var displays: [DisplayJSON]?
  var scanouts: [DisplayJSON]?
}

struct StartOptionsJSON: Decodable {
  var recovery: Bool?
  /// macOS 27 hosts, macOS guests: the first boot's account (Provisioning.swift).
  var provisioning: ProvisioningJSON?
}

struct WindowOptionsJSON: Decodable {
  var title: String
  var width: Int
  var height: Int
  var capturesSystemKeys: Bool?
  var automaticallyReconfiguresDisplay: Bool?
}
