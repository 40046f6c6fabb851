// Provisioning.swift: unattended first boot of a macOS guest (macOS 27
// hosts). The start options carry VZMacGuestProvisioningOptions: the first
// account's user name, full name and password, automatic login and Remote
// Login (ssh). setGuestProvisioning(_:) validates them and throws a
// VZErrorDomain error (40001 full name, 40002 user name, 40003 password)
// that the envelope passes on with its domain and code. A guest older than
// macOS 27 ignores the options (Apple's documented behaviour); cove says so
// at create time.
//
// The Objective-C method is -setGuestProvisioningOptions:error:
// (VZMacOSVirtualMachineStartOptions.h, macOS 27); Swift drops the suffix
// that repeats the property's name and imports it as a throwing
// setGuestProvisioning(_:). The class exists only in the macOS 27 SDK, so
// the code is compiled only by a compiler that ships with it; an older SDK
// builds a shim that answers "needs macOS 27".

import Foundation
import Virtualization

/// start options_json's "provisioning" object.
struct ProvisioningJSON: Decodable {
  var username: String
  var fullName: String
  var password: String
  var logsInAutomatically: Bool
  var enablesRemoteLogin: Bool
}

#if arch(arm64)
  /// The start options of a provisioning first boot; throws VZ's validation error.
  func provisioningStartOptions(_ p: ProvisioningJSON, recovery: Bool) throws
    -> VZMacOSVirtualMachineStartOptions
  {
    #if compiler(>=6.4)
      if #available(macOS 27, *) {
        let provisioning = VZMacGuestProvisioningOptions()
        provisioning.username = p.username
        provisioning.fullName = p.fullName
        provisioning.password = p.password
        provisioning.logsInAutomatically = p.logsInAutomatically
        provisioning.enablesRemoteLogin = p.enablesRemoteLogin
        let opts = VZMacOSVirtualMachineStartOptions()
        opts.startUpFromMacOSRecovery = recovery
        try opts.setGuestProvisioning(provisioning)
        return opts
      }
    #endif
    throw ShimError.needs("guest provisioning (VZMacGuestProvisioningOptions)", macOS: "27")
  }
#endif
