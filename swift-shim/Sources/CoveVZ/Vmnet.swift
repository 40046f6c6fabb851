// A vmnet network for a cove network (`mode: network` on vz): macOS 26 lets a VM attach to a
// vmnet network made in-process (VZVmnetNetworkDeviceAttachment), with no entitlement. The
// supervisor makes one per VM start from the JSON attachment {type: "vmnet", mode, subnet}.
// Written against Apple's documented API; not compiled or run on the Linux build machines.
import Foundation
import Virtualization
import vmnet

extension Build {
  /// The attachment of a `vmnet` network: host mode (VMs and the host) or shared mode (with NAT
  /// out), on the cove network's IPv4 subnet.
  @available(macOS 26, *)
  static func vmnetAttachment(_ a: NetworkAttachmentJSON, _ at: String) throws -> VZNetworkDeviceAttachment {
    let mode: vmnet_mode_t
    switch a.mode ?? "host" {
    case "host": mode = .VMNET_HOST_MODE
    case "shared": mode = .VMNET_SHARED_MODE
    default: throw ShimError.bad("\(at).attachment.mode", "expected host or shared")
    }
    var status: vmnet_return_t = .VMNET_FAILURE
    guard let config = vmnet_network_configuration_create(mode, &status) else {
      throw ShimError(code: .unsupported, message: "\(at): vmnet_network_configuration_create failed (\(status.rawValue))")
    }
    if let subnet = a.subnet, !subnet.isEmpty {
      let parts = subnet.split(separator: "/")
      guard parts.count == 2, let prefix = Int(parts[1]), (8...30).contains(prefix) else {
        throw ShimError.bad("\(at).attachment.subnet", "expected an IPv4 CIDR")
      }
      var addr = in_addr()
      guard inet_pton(AF_INET, String(parts[0]), &addr) == 1 else {
        throw ShimError.bad("\(at).attachment.subnet", "expected an IPv4 CIDR")
      }
      let bits: UInt32 = prefix == 0 ? 0 : ~UInt32(0) << (32 - UInt32(prefix))
      var mask = in_addr(s_addr: bits.bigEndian)
      let set = vmnet_network_configuration_set_ipv4_subnet(config, &addr, &mask)
      guard set == .VMNET_SUCCESS else {
        throw ShimError(code: .unsupported, message: "\(at): the subnet \(subnet) was refused by vmnet (\(set.rawValue))")
      }
    }
    guard let network = vmnet_network_create(config, &status) else {
      throw ShimError(code: .unsupported, message: "\(at): vmnet_network_create failed (\(status.rawValue))")
    }
    return VZVmnetNetworkDeviceAttachment(network: network)
  }
}
