// Machine.swift: one VM behind a handle. Each Machine owns a serial
// dispatch queue on which its VZVirtualMachine is created and every
// operation runs (VZ requires that); callers block, for a bounded time, until
// the completion handler has run on that queue. Delegate callbacks, state KVO,
// vsock listeners and install progress become JSON events in an EventQueue
// that cove_vz_next_event drains: no callback ever crosses into the caller.

import Foundation
import Virtualization

/// A blocking, bounded FIFO of JSON events, one per VM.
final class EventQueue: @unchecked Sendable {
  /// At most this many events wait; past it the oldest state or progress
  /// event is dropped, and an event nothing can be dropped for is refused.
  static let capacity = 1024
  private let cond = NSCondition()
  private var items: [[String: Any]] = []
  private var closed = false

  private static func droppable(_ e: [String: Any]) -> Bool {
    let type = e["type"] as? String
    return type == "state" || type == "install-progress"
  }

  /// Queues an event; false if it was not queued (closed, or full of events
  /// that cannot be dropped). A caller that hands over a descriptor closes it then.
  @discardableResult
  func push(_ event: [String: Any]) -> Bool {
    cond.lock()
    defer { cond.unlock() }
    if closed { return false }
    if items.count >= EventQueue.capacity {
      guard let i = items.firstIndex(where: EventQueue.droppable) else { return false }
      items.remove(at: i)
    }
    items.append(event)
    cond.broadcast()
    return true
  }

  /// Closes the queue. Events that carry a descriptor are taken out and
  /// returned, for the caller to close; the others can still be drained.
  func close() -> [[String: Any]] {
    cond.lock()
    defer { cond.unlock() }
    closed = true
    let carrying = items.filter { $0["fd"] != nil }
    items.removeAll { $0["fd"] != nil }
    cond.broadcast()
    return carrying
  }

  /// The next event, waiting up to timeoutMs on a monotonic clock; closed is
  /// true once drained after close().
  func next(timeoutMs: Int32) -> (event: [String: Any]?, closed: Bool) {
    let deadline = monotonicSeconds() + Double(max(0, timeoutMs)) / 1000
    cond.lock()
    defer { cond.unlock() }
    while items.isEmpty && !closed {
      let left = deadline - monotonicSeconds()
      if left <= 0 { break }
      _ = cond.wait(until: Date(timeIntervalSinceNow: left))
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

/// How long a blocking call waits for VZ before it answers with a timeout error.
enum Timeouts {
  static let start = 300.0
  static let stop = 60.0
  static let pauseResume = 60.0
  static let saveRestore = 900.0
  static let vsockConnect = 15.0
  static let installEnd = 60.0
  static let transition = 30.0
}

final class Machine: NSObject, VZVirtualMachineDelegate, VZVirtioSocketListenerDelegate, @unchecked Sendable {
  let handle: UInt64
  let queue: DispatchQueue
  let vm: VZVirtualMachine
  let configuration: VZVirtualMachineConfiguration
  let events = EventQueue()
  /// The duplicated descriptors the configuration holds; closed by tearDown.
  let descriptors: Descriptors
  private var stateObservation: NSKeyValueObservation?
  private var listeners: [UInt32: VZVirtioSocketListener] = [:]
  #if arch(arm64)
    private var installer: VZMacOSInstaller?
  #endif
  /// Signalled when a running install's completion handler has run.
  private var installEnded: DispatchSemaphore?
  private var progressObservation: NSKeyValueObservation?
  private let progressLock = NSLock()
  private var lastProgress = 0.0
  /// The window and the released flag, shared by the main thread (GUI) and
  /// the thread that releases the VM, under one lock.
  private let windowLock = NSLock()
  private var windowController: WindowController?
  private var released = false

  init(handle: UInt64, configuration: VZVirtualMachineConfiguration, descriptors: Descriptors) {
    self.handle = handle
    self.configuration = configuration
    self.descriptors = descriptors
    self.queue = DispatchQueue(label: "dev.cove.vz.vm.\(handle)")
    // A private serial queue, so that no VZ work waits on the main queue
    // (Code-Hex/vz does the same; Tart uses VZVirtualMachine(configuration:),
    // the main queue).
    self.vm = VZVirtualMachine(configuration: configuration, queue: queue)
    super.init()
    queue.sync {
      vm.delegate = self
      stateObservation = vm.observe(\.state, options: [.new]) { [weak self] machine, _ in
        self?.events.push(["type": "state", "state": stateName(machine.state)])
      }
    }
  }

  // MARK: The window (main thread and releasing thread)

  /// Installs a new window, returning the one it replaces. A released VM
  /// takes none: the new window is handed back to be closed.
  func replaceWindow(_ new: WindowController?) -> (old: WindowController?, refused: Bool) {
    windowLock.lock()
    defer { windowLock.unlock() }
    if released { return (new, true) }
    let old = windowController
    windowController = new
    return (old, false)
  }

  /// Marks the VM released and takes its window.
  private func takeWindowForRelease() -> WindowController? {
    windowLock.lock()
    defer { windowLock.unlock() }
    released = true
    let w = windowController
    windowController = nil
    return w
  }

  // MARK: Running operations on the VM's queue

  /// Runs body on the VM queue and waits, at most `seconds`, for it to complete.
  func run<T>(
    _ what: String, seconds: Double, late: ((Result<T, Error>) -> Void)? = nil,
    _ body: @escaping (@escaping (Result<T, Error>) -> Void) -> Void
  ) throws -> T {
    let result: Result<T, Error> = waitFor(what, seconds: seconds, late: late) { done in
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
    if let provisioning = options.provisioning {
      #if arch(arm64)
        guard configuration.platform is VZMacPlatformConfiguration else {
          throw ShimError.bad("options.provisioning", "guest provisioning needs a macOS guest (a mac platform)")
        }
        let opts = try provisioningStartOptions(provisioning, recovery: options.recovery == true)
        try run("starting the VM", seconds: Timeouts.start) { (done: @escaping (Result<Void, Error>) -> Void) in
          self.vm.start(options: opts, completionHandler: orError(done))
        }
        return
      #else
        throw ShimError(code: .unsupported, message: "guest provisioning needs a Mac with Apple silicon")
      #endif
    }
    if options.recovery == true {
      #if arch(arm64)
        // Starting with VZMacOSVirtualMachineStartOptions raises an
        // Objective-C exception unless the platform is a Mac one.
        guard configuration.platform is VZMacPlatformConfiguration else {
          throw ShimError.bad("options.recovery", "recoveryOS needs a macOS guest (a mac platform)")
        }
        let opts = VZMacOSVirtualMachineStartOptions()
        opts.startUpFromMacOSRecovery = true
        try run("starting the VM", seconds: Timeouts.start) { (done: @escaping (Result<Void, Error>) -> Void) in
          self.vm.start(options: opts, completionHandler: orError(done))
        }
        return
      #else
        throw ShimError(code: .unsupported, message: "recoveryOS needs a Mac with Apple silicon")
      #endif
    }
    try run("starting the VM", seconds: Timeouts.start) { (done: @escaping (Result<Void, Error>) -> Void) in
      self.vm.start(completionHandler: done)
    }
  }

  func requestStop() throws {
    try sync { try vm.requestStop() }
  }

  func stop() throws {
    try run("stopping the VM", seconds: Timeouts.stop) { (done: @escaping (Result<Void, Error>) -> Void) in
      self.vm.stop(completionHandler: orError(done))
    }
  }

  func pause() throws {
    try run("pausing the VM", seconds: Timeouts.pauseResume) { (done: @escaping (Result<Void, Error>) -> Void) in
      self.vm.pause(completionHandler: done)
    }
  }

  func resume() throws {
    try run("resuming the VM", seconds: Timeouts.pauseResume) { (done: @escaping (Result<Void, Error>) -> Void) in
      self.vm.resume(completionHandler: done)
    }
  }

  // saveMachineStateTo/restoreMachineStateFrom are declared only under
  // #if defined(__arm64__) in VZVirtualMachine.h (API_AVAILABLE macOS 14).
  func save(to url: URL) throws {
    #if arch(arm64)
      guard #available(macOS 14, *) else { throw ShimError.needs("saving machine state", macOS: "14.0") }
      try configuration.validateSaveRestoreSupport()
      try run("saving the VM", seconds: Timeouts.saveRestore) { (done: @escaping (Result<Void, Error>) -> Void) in
        self.vm.saveMachineStateTo(url: url, completionHandler: orError(done))
      }
    #else
      throw ShimError(code: .unsupported, message: "saving machine state needs a Mac with Apple silicon")
    #endif
  }

  func restore(from url: URL) throws {
    #if arch(arm64)
      guard #available(macOS 14, *) else { throw ShimError.needs("restoring machine state", macOS: "14.0") }
      try run("restoring the VM", seconds: Timeouts.saveRestore) { (done: @escaping (Result<Void, Error>) -> Void) in
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

  /// Connects to a guest port; returns a close-on-exec duplicate of the
  /// connection's descriptor. VZ never calls back when the guest does not
  /// listen on the port, so the wait is bounded; a connection that arrives
  /// after the timeout is closed.
  func vsockConnect(_ port: UInt32) throws -> [String: Any] {
    try run(
      "connecting to vsock port \(port)", seconds: Timeouts.vsockConnect,
      late: { (late: Result<[String: Any], Error>) in
        if case .success(let r) = late, let fd = r["fd"] as? Int32 { close(fd) }
      }
    ) { (done: @escaping (Result<[String: Any], Error>) -> Void) in
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
          // The connection closes its own descriptor when closed or freed
          // (Tart keeps the VZVirtioSocketConnection alive instead); cove
          // keeps a close-on-exec duplicate and closes the connection now.
          let fd = dupCloexec(connection.fileDescriptor)
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
    let fd = dupCloexec(connection.fileDescriptor)
    guard fd >= 0 else { return false }
    let queued = events.push([
      "type": "vsock-connection", "port": connection.destinationPort, "sourcePort": connection.sourcePort,
      "fd": fd,
    ])
    if !queued {
      // Released (or the queue is full): nobody will take this descriptor.
      close(fd)
      return false
    }
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
      // VZMacOSInstaller(virtualMachine:restoringFromImageAt:) raises an
      // Objective-C exception unless the platform is a Mac one and the URL is
      // a file on disk; installing needs a stopped VM.
      guard configuration.platform is VZMacPlatformConfiguration else {
        throw ShimError(code: .badRequest, message: "installing macOS needs a VM with a mac platform")
      }
      var isDir: ObjCBool = false
      guard ipsw.isFileURL, FileManager.default.fileExists(atPath: ipsw.path, isDirectory: &isDir), !isDir.boolValue
      else {
        throw ShimError(code: .io, message: "ipsw_path: \(ipsw.path) is not a file")
      }
      try sync {
        guard installer == nil else { throw ShimError(code: .state, message: "an install is already running") }
        guard vm.state == .stopped else {
          throw ShimError(code: .state, message: "installing macOS needs a stopped VM (it is \(stateName(vm.state)))")
        }
        let newInstaller = VZMacOSInstaller(virtualMachine: vm, restoringFromImageAt: ipsw)
        let ended = DispatchSemaphore(value: 0)
        installer = newInstaller
        installEnded = ended
        progressObservation = newInstaller.progress.observe(\.fractionCompleted, options: [.new]) {
          [weak self] progress, _ in
          self?.progressed(progress.fractionCompleted)
        }
        newInstaller.install { [weak self] result in
          defer { ended.signal() }
          guard let self else { return }
          self.progressObservation = nil
          self.installer = nil
          self.installEnded = nil
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

  /// Install progress, at most about ten events a second (and always the last).
  private func progressed(_ fraction: Double) {
    guard fraction.isFinite else { return }
    let now = monotonicSeconds()
    progressLock.lock()
    let due = fraction >= 1 || now - lastProgress >= 0.1
    if due { lastProgress = now }
    progressLock.unlock()
    if due { events.push(["type": "install-progress", "fraction": min(1, max(0, fraction))]) }
  }

  func installCancel() throws {
    #if arch(arm64)
      sync { installer?.progress.cancel() }
    #endif
  }

  // MARK: Release

  /// Ends an install, stops the VM (waiting, bounded, for a state it can be
  /// stopped from), drops observers and listeners, closes every descriptor
  /// the VM held, and closes the event queue. Not named release(): NSObject's
  /// -release is the retain-count method.
  func tearDown() {
    // An install must end before the VM stops: stopping during an install
    // is undefined behaviour (VZMacOSInstaller.h).
    let ended: DispatchSemaphore? = sync {
      #if arch(arm64)
        installer?.progress.cancel()
      #endif
      return installEnded
    }
    if let ended { _ = ended.wait(timeout: .now() + Timeouts.installEnd) }
    let deadline = monotonicSeconds() + Timeouts.transition
    while true {
      let (canStop, state) = sync { (vm.canStop, vm.state) }
      if canStop {
        try? stop()
        break
      }
      if state == .stopped || state == .error || monotonicSeconds() > deadline { break }
      usleep(50_000)  // starting, pausing, resuming, stopping, saving or restoring
    }
    let stopped = sync { () -> Bool in
      stateObservation = nil
      progressObservation = nil
      if let device = vm.socketDevices.first as? VZVirtioSocketDevice {
        for port in listeners.keys { device.removeSocketListener(forPort: port) }
      }
      listeners = [:]
      vm.delegate = nil
      return vm.state == .stopped || vm.state == .error
    }
    // A VM that would not stop may still use its descriptors: closing them
    // could let it write to a reused descriptor number, so they stay open.
    if stopped { descriptors.closeAll() }
    if let window = takeWindowForRelease() {
      DispatchQueue.main.async { MainActor.assumeIsolated { window.close() } }
    }
    for event in events.close() {
      if let fd = event["fd"] as? Int32 { close(fd) }
    }
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

  /// Builds a machine under a fresh handle. The lock is held only to take
  /// the handle and to insert the machine, not while VZ constructs the VM.
  static func add(_ make: (UInt64) throws -> Machine) rethrows -> Machine {
    lock.lock()
    let handle = nextHandle
    nextHandle += 1
    lock.unlock()
    let machine = try make(handle)
    lock.lock()
    machines[handle] = machine
    lock.unlock()
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
