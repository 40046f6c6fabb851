// Machine.swift: one VM behind a handle. Each Machine owns a serial
// dispatch queue on which its VZVirtualMachine is created and every
// operation runs (VZ requires that); callers block on a semaphore until the
// completion handler has run on that queue. Delegate callbacks, state KVO,
// vsock listeners and install progress become JSON events in an EventQueue
// that cove_vz_next_event drains: no callback ever crosses into the caller.

import Foundation
import Virtualization

/// A blocking FIFO of JSON events, one per VM.
final class EventQueue: @unchecked Sendable {
  private let cond = NSCondition()
  private var items: [[String: Any]] = []
  private var closed = false

  func push(_ event: [String: Any]) {
    cond.lock()
    if !closed { items.append(event) }
    cond.broadcast()
    cond.unlock()
  }

  func close() {
    cond.lock()
    closed = true
    cond.broadcast()
    cond.unlock()
  }

  /// The next event, waiting up to timeoutMs; closed is true once drained after close().
  func next(timeoutMs: Int32) -> (event: [String: Any]?, closed: Bool) {
    let deadline = Date(timeIntervalSinceNow: Double(max(0, timeoutMs)) / 1000)
    cond.lock()
    defer { cond.unlock() }
    while items.isEmpty && !closed {
      if !cond.wait(until: deadline) { break }
    }
    if !items.isEmpty { return (items.removeFirst(), false) }
    return (nil, closed)
  }

}

func stateName(_ s: VZVirtualMachine.State) -> String {
  // .saving and .restoring are API_AVAILABLE(macos(14.0)) constants of
  // VZVirtualMachineState (VZVirtualMachine.h); the deployment target is 13.
  if #available(macOS 14, *) {
    if s == .saving { return "saving" }
    if s == .restoring { return "restoring" }
  }
  switch s {
  case .stopped: return "stopped"
  case .running: return "running"
  case .paused: return "paused"
  case .error: return "error"
  case .starting: return "starting"
  case .pausing: return "pausing"
  case .resuming: return "resuming"
  case .stopping: return "stopping"
  @unknown default: return "unknown"
  }
}

final class Machine: NSObject, VZVirtualMachineDelegate, VZVirtioSocketListenerDelegate, @unchecked Sendable {
  let handle: UInt64
  let queue: DispatchQueue
  let vm: VZVirtualMachine
  let configuration: VZVirtualMachineConfiguration
  let events = EventQueue()
  private var stateObservation: NSKeyValueObservation?
  private var listeners: [UInt32: VZVirtioSocketListener] = [:]
  #if arch(arm64)
    private var installer: VZMacOSInstaller?
  #endif
  private var progressObservation: NSKeyValueObservation?
  var window: WindowController?

  init(handle: UInt64, configuration: VZVirtualMachineConfiguration) {
    self.handle = handle
    self.configuration = configuration
    self.queue = DispatchQueue(label: "dev.cove.vz.vm.\(handle)")
    self.vm = VZVirtualMachine(configuration: configuration, queue: queue)
    super.init()
    queue.sync {
      vm.delegate = self
      stateObservation = vm.observe(\.state, options: [.new]) { [weak self] machine, _ in
        self?.events.push(["type": "state", "state": stateName(machine.state)])
      }
    }
  }

  // MARK: Running operations on the VM's queue

  /// Runs body on the VM queue and waits for it to complete.
  func run<T>(_ body: @escaping (@escaping (Result<T, Error>) -> Void) -> Void) throws -> T {
    let result: Result<T, Error> = waitFor { done in
      self.queue.async { body(done) }
    }
    return try result.get()
  }

  /// Runs a synchronous body on the VM queue.
  func sync<T>(_ body: () throws -> T) rethrows -> T {
    try queue.sync(execute: body)
  }

  func stateInfo() -> [String: Any] {
    sync { () -> [String: Any] in
      [
        "state": stateName(vm.state), "canStart": vm.canStart, "canStop": vm.canStop,
        "canPause": vm.canPause, "canResume": vm.canResume, "canRequestStop": vm.canRequestStop,
      ]
    }
  }

  func start(_ options: StartOptionsJSON) throws {
    if options.recovery == true {
      #if arch(arm64)
        let opts = VZMacOSVirtualMachineStartOptions()
        opts.startUpFromMacOSRecovery = true
        try run { (done: @escaping (Result<Void, Error>) -> Void) in
          self.vm.start(options: opts, completionHandler: orError(done))
        }
        return
      #else
        throw ShimError(code: .unsupported, message: "recoveryOS needs a Mac with Apple silicon")
      #endif
    }
    try run { (done: @escaping (Result<Void, Error>) -> Void) in
      self.vm.start(completionHandler: done)
    }
  }

  func requestStop() throws {
    try sync { try vm.requestStop() }
  }

  func stop() throws {
    try run { (done: @escaping (Result<Void, Error>) -> Void) in
      self.vm.stop(completionHandler: orError(done))
    }
  }

  func pause() throws {
    try run { (done: @escaping (Result<Void, Error>) -> Void) in self.vm.pause(completionHandler: done) }
  }

  func resume() throws {
    try run { (done: @escaping (Result<Void, Error>) -> Void) in self.vm.resume(completionHandler: done) }
  }

  // saveMachineStateTo/restoreMachineStateFrom are declared only under
  // #if defined(__arm64__) in VZVirtualMachine.h (API_AVAILABLE macOS 14).
  func save(to url: URL) throws {
    #if arch(arm64)
      guard #available(macOS 14, *) else { throw ShimError.needs("saving machine state", macOS: "14.0") }
      try configuration.validateSaveRestoreSupport()
      try run { (done: @escaping (Result<Void, Error>) -> Void) in
        self.vm.saveMachineStateTo(url: url, completionHandler: orError(done))
      }
    #else
      throw ShimError(code: .unsupported, message: "saving machine state needs a Mac with Apple silicon")
    #endif
  }

  func restore(from url: URL) throws {
    #if arch(arm64)
      guard #available(macOS 14, *) else { throw ShimError.needs("restoring machine state", macOS: "14.0") }
      try run { (done: @escaping (Result<Void, Error>) -> Void) in
        self.vm.restoreMachineStateFrom(url: url, completionHandler: orError(done))
      }
    #else
      throw ShimError(code: .unsupported, message: "restoring machine state needs a Mac with Apple silicon")
    #endif
  }

  func setBalloonTarget(_ bytes: UInt64) throws -> UInt64 {
    try sync {
      guard let balloon = vm.memoryBalloonDevices.first as? VZVirtioTraditionalMemoryBalloonDevice else {
        throw ShimError(code: .badRequest, message: "the VM has no memory balloon device")
      }
      balloon.targetVirtualMachineMemorySize = bytes
      return balloon.targetVirtualMachineMemorySize
    }
  }

  // MARK: vsock

  private func socketDevice() throws -> VZVirtioSocketDevice {
    guard let device = vm.socketDevices.first as? VZVirtioSocketDevice else {
      throw ShimError(code: .badRequest, message: "the VM has no socket device")
    }
    return device
  }

  /// Connects to a guest port; returns a dup() of the connection's descriptor.
  func vsockConnect(_ port: UInt32) throws -> [String: Any] {
    try run { (done: @escaping (Result<[String: Any], Error>) -> Void) in
      let device: VZVirtioSocketDevice
      do {
        device = try self.socketDevice()
      } catch {
        done(.failure(error))
        return
      }
      device.connect(toPort: port) { result in
        switch result {
        case .failure(let error):
          done(.failure(error))
        case .success(let connection):
          // The connection closes its own descriptor when it goes away: keep a copy.
          let fd = dup(connection.fileDescriptor)
          let source = connection.sourcePort
          let destination = connection.destinationPort
          connection.close()
          if fd < 0 {
            done(.failure(ShimError(code: .io, message: "could not duplicate the vsock descriptor")))
          } else {
            done(.success(["fd": fd, "sourcePort": source, "destinationPort": destination]))
          }
        }
      }
    }
  }

  func vsockListen(_ port: UInt32) throws {
    try sync {
      let device = try socketDevice()
      let listener = VZVirtioSocketListener()
      listener.delegate = self
      device.setSocketListener(listener, forPort: port)
      listeners[port] = listener
    }
  }

  func vsockUnlisten(_ port: UInt32) throws {
    try sync {
      try socketDevice().removeSocketListener(forPort: port)
      listeners[port] = nil
    }
  }

  func listener(
    _ listener: VZVirtioSocketListener, shouldAcceptNewConnection connection: VZVirtioSocketConnection,
    from socketDevice: VZVirtioSocketDevice
  ) -> Bool {
    let fd = dup(connection.fileDescriptor)
    guard fd >= 0 else { return false }
    events.push([
      "type": "vsock-connection", "port": connection.destinationPort, "sourcePort": connection.sourcePort,
      "fd": fd,
    ])
    return true
  }

  // MARK: Delegate

  func guestDidStop(_ virtualMachine: VZVirtualMachine) {
    events.push(["type": "guest-stopped"])
  }

  func virtualMachine(_ virtualMachine: VZVirtualMachine, didStopWithError error: Error) {
    events.push(["type": "stopped-with-error", "error": errorJSON(error)])
  }

  func virtualMachine(
    _ virtualMachine: VZVirtualMachine, networkDevice: VZNetworkDevice,
    attachmentWasDisconnectedWithError error: Error
  ) {
    let index = virtualMachine.networkDevices.firstIndex { $0 === networkDevice } ?? -1
    events.push(["type": "network-disconnected", "index": index, "error": errorJSON(error)])
  }

  // MARK: macOS install

  func installMacOS(from ipsw: URL) throws {
    #if arch(arm64)
      try sync {
        guard installer == nil else { throw ShimError(code: .state, message: "an install is already running") }
        let newInstaller = VZMacOSInstaller(virtualMachine: vm, restoringFromImageAt: ipsw)
        installer = newInstaller
        progressObservation = newInstaller.progress.observe(\.fractionCompleted, options: [.new]) {
          [weak self] progress, _ in
          self?.events.push(["type": "install-progress", "fraction": progress.fractionCompleted])
        }
        newInstaller.install { [weak self] result in
          guard let self else { return }
          self.progressObservation = nil
          self.installer = nil
          switch result {
          case .success: self.events.push(["type": "install-finished"])
          case .failure(let error): self.events.push(["type": "install-failed", "error": errorJSON(error)])
          }
        }
      }
    #else
      throw ShimError(code: .unsupported, message: "installing macOS needs a Mac with Apple silicon")
    #endif
  }

  func installCancel() throws {
    #if arch(arm64)
      sync { installer?.progress.cancel() }
    #endif
  }

  // MARK: Release

  /// Stops the VM if it runs, drops observers and listeners, closes the queue.
  /// Not named release(): NSObject's -release is the retain-count method.
  func tearDown() {
    if sync({ vm.canStop }) {
      try? stop()
    }
    sync {
      stateObservation = nil
      progressObservation = nil
      if let device = vm.socketDevices.first as? VZVirtioSocketDevice {
        for port in listeners.keys { device.removeSocketListener(forPort: port) }
      }
      listeners = [:]
      vm.delegate = nil
    }
    if let window {
      self.window = nil
      DispatchQueue.main.async { MainActor.assumeIsolated { window.close() } }
    }
    events.close()
  }
}

/// Every VM by handle. Handles are never reused. A released VM leaves only
/// its (closed) event queue behind, so that next_event can say "closed" while
/// the VM itself, its configuration and its descriptors are freed.
enum Registry {
  private static let lock = NSLock()
  private static var machines: [UInt64: Machine] = [:]
  private static var releasedQueues: [UInt64: EventQueue] = [:]
  private static var nextHandle: UInt64 = 1

  static func add(_ make: (UInt64) throws -> Machine) rethrows -> Machine {
    lock.lock()
    defer { lock.unlock() }
    let handle = nextHandle
    nextHandle += 1
    let machine = try make(handle)
    machines[handle] = machine
    return machine
  }

  /// A live machine, or a no-such-handle error.
  static func live(_ handle: UInt64) throws -> Machine {
    lock.lock()
    defer { lock.unlock() }
    guard let m = machines[handle] else {
      throw ShimError(code: .noSuchHandle, message: "no VM with handle \(handle)")
    }
    return m
  }

  /// The event queue of a live or released machine.
  static func events(_ handle: UInt64) throws -> EventQueue {
    lock.lock()
    defer { lock.unlock() }
    if let m = machines[handle] { return m.events }
    if let q = releasedQueues[handle] { return q }
    throw ShimError(code: .noSuchHandle, message: "no VM with handle \(handle)")
  }

  /// Forgets a machine, keeping its event queue.
  static func remove(_ handle: UInt64) -> Machine? {
    lock.lock()
    defer { lock.unlock() }
    guard let m = machines.removeValue(forKey: handle) else { return nil }
    releasedQueues[handle] = m.events
    return m
  }
}
