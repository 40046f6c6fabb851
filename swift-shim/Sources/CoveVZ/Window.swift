// Window.swift: the optional GUI. A VZVirtualMachineView in an NSWindow,
// and a pump that steps the AppKit run loop for a bounded time. Deno's
// JavaScript runs on the process's main thread and calls cove_vz_pump from
// a timer, so AppKit is only ever touched there; headless VMs never load
// AppKit state at all.

import AppKit
import Virtualization

@MainActor
final class WindowController: NSObject, NSWindowDelegate {
  let window: NSWindow
  private weak var events: EventQueue?

  init(machine: Machine, options: WindowOptionsJSON) {
    let view = VZVirtualMachineView()
    view.virtualMachine = machine.vm
    view.capturesSystemKeys = options.capturesSystemKeys ?? true
    if #available(macOS 14, *) {
      view.automaticallyReconfiguresDisplay = options.automaticallyReconfiguresDisplay ?? true
    }
    window = NSWindow(
      contentRect: NSRect(x: 0, y: 0, width: options.width, height: options.height),
      styleMask: [.titled, .closable, .miniaturizable, .resizable],
      backing: .buffered,
      defer: false)
    events = machine.events
    super.init()
    window.title = options.title
    window.contentView = view
    window.isReleasedWhenClosed = false
    window.delegate = self
    window.center()
    window.makeKeyAndOrderFront(nil)
  }

  func windowWillClose(_ notification: Notification) {
    events?.push(["type": "window-closed"])
  }

  /// Closes without reporting window-closed (the VM was released).
  func close() {
    window.delegate = nil
    window.close()
  }
}

@MainActor
enum GUI {
  private static var launched = false

  /// Creates the shared application once; a window makes it a regular app.
  static func ensureApplication(regular: Bool) {
    let app = NSApplication.shared
    if !launched {
      app.finishLaunching()
      launched = true
    }
    if regular {
      app.setActivationPolicy(.regular)
      app.activate(ignoringOtherApps: true)
    }
  }

  static func showWindow(_ machine: Machine, _ options: WindowOptionsJSON) {
    ensureApplication(regular: true)
    // The window is swapped under the machine's lock: a release on another
    // thread either sees the new window (and closes it) or refuses it here.
    let (other, _) = machine.replaceWindow(WindowController(machine: machine, options: options))
    other?.close()
  }

  /// Handles AppKit events (and, while waiting, main-queue work) for up to
  /// timeoutMs; returns how many events were handled.
  static func pump(_ timeoutMs: Int32) -> Int32 {
    ensureApplication(regular: false)
    let app = NSApplication.shared
    var until = Date(timeIntervalSinceNow: Double(max(0, timeoutMs)) / 1000)
    var handled: Int32 = 0
    while let event = app.nextEvent(matching: .any, until: until, inMode: .default, dequeue: true) {
      app.sendEvent(event)
      handled += 1
      until = Date()  // after one event, take only what is already queued
    }
    app.updateWindows()
    return handled
  }
}
