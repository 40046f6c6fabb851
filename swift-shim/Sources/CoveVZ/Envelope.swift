// Envelope.swift: the JSON envelopes of the C ABI ({"ok":true,...} or
// {"ok":false,"error":{...}}), the shim's own errors, and C string helpers.
// Every exported function returns through `reply`, so no error escapes as an
// Objective-C exception or a Swift crash across the C boundary.

import Foundation

/// COVE_VZ_ERROR_DOMAIN and the COVE_VZ_ERR_* codes of cove_vz.h.
enum ShimCode: Int {
  case badRequest = 1
  case noSuchHandle = 2
  case unsupported = 3
  case state = 4
  case notMainThread = 5
  case io = 6
  case timeout = 7
  case internalError = 99
}

let shimDomain = "dev.cove.vz"

/// An error raised by the shim itself (not by VZ).
struct ShimError: Error {
  let code: ShimCode
  let message: String
  var requires: String? = nil

  static func bad(_ field: String, _ what: String) -> ShimError {
    ShimError(code: .badRequest, message: "\(field): \(what)")
  }

  /// A feature this macOS does not have yet.
  static func needs(_ feature: String, macOS version: String) -> ShimError {
    let v = ProcessInfo.processInfo.operatingSystemVersion
    return ShimError(
      code: .unsupported,
      message: "\(feature) needs macOS \(version) or later (this Mac runs \(v.majorVersion).\(v.minorVersion))",
      requires: version)
  }
}

/// The error object of an envelope; NSError fields kept.
func errorJSON(_ error: Error) -> [String: Any] {
  if let e = error as? ShimError {
    var out: [String: Any] = ["domain": shimDomain, "code": e.code.rawValue, "message": e.message]
    if let r = e.requires { out["requires"] = r }
    return out
  }
  let ns = error as NSError
  var out: [String: Any] = ["domain": ns.domain, "code": ns.code, "message": ns.localizedDescription]
  if let reason = ns.localizedFailureReason { out["reason"] = reason }
  if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError {
    out["underlying"] = errorJSON(underlying)
  }
  return out
}

/// Serializes a dictionary to a heap C string the caller frees with cove_free.
/// JSONSerialization raises an Objective-C exception (which would abort the
/// process) on objects it cannot encode, NaN and infinities among them, so
/// the object is checked with isValidJSONObject first.
func cString(_ object: [String: Any]) -> UnsafeMutablePointer<CChar> {
  let fallback = Data(
    "{\"ok\":false,\"error\":{\"domain\":\"dev.cove.vz\",\"code\":99,\"message\":\"unencodable result\"}}".utf8)
  var data = fallback
  if JSONSerialization.isValidJSONObject(object),
    let encoded = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
  {
    data = encoded
  }
  let text = String(decoding: data, as: UTF8.self)
  return strdup(text)!
}

/// Runs body and wraps its result (or error) in an envelope.
func reply(_ body: () throws -> [String: Any]) -> UnsafeMutablePointer<CChar> {
  do {
    var out = try body()
    out["ok"] = true
    return cString(out)
  } catch {
    return cString(["ok": false, "error": errorJSON(error)])
  }
}

/// A C string argument as a Swift String; NULL is a bad request.
func arg(_ p: UnsafePointer<CChar>?, _ name: String) throws -> String {
  guard let p else { throw ShimError.bad(name, "missing (NULL)") }
  return String(cString: p)
}

/// Decodes a JSON C string argument into a Decodable type.
func decode<T: Decodable>(_ type: T.Type, _ p: UnsafePointer<CChar>?, _ name: String) throws -> T {
  let text = try arg(p, name)
  do {
    return try JSONDecoder().decode(T.self, from: Data(text.utf8))
  } catch let DecodingError.keyNotFound(key, ctx) {
    throw ShimError.bad(path(ctx.codingPath + [key]), "missing")
  } catch let DecodingError.typeMismatch(_, ctx) {
    throw ShimError.bad(path(ctx.codingPath), "wrong type")
  } catch let DecodingError.valueNotFound(_, ctx) {
    throw ShimError.bad(path(ctx.codingPath), "missing")
  } catch {
    throw ShimError.bad(name, "not valid JSON")
  }
}

private func path(_ keys: [CodingKey]) -> String {
  keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingCharacters(
    in: CharacterSet(charactersIn: "."))
}

/// Base64 to Data, or a bad-request error naming the field.
func base64(_ s: String, _ field: String) throws -> Data {
  guard let d = Data(base64Encoded: s) else { throw ShimError.bad(field, "not base64") }
  return d
}

/// An absolute file URL, or a bad-request error naming the field.
func fileURL(_ path: String, _ field: String) throws -> URL {
  guard path.hasPrefix("/") else { throw ShimError.bad(field, "expected an absolute path") }
  return URL(fileURLWithPath: path)
}

/// Seconds on a monotonic clock (not moved by wall-clock changes).
func monotonicSeconds() -> Double {
  Double(DispatchTime.now().uptimeNanoseconds) / 1e9
}

/// One hand-over from a completion handler to a waiting thread that may
/// have given up: a result that arrives after the timeout goes to `late`
/// (so that, say, a connection nobody waits for any more is closed).
final class Handover<T>: @unchecked Sendable {
  private let lock = NSLock()
  private let sem = DispatchSemaphore(value: 0)
  private var result: Result<T, Error>?
  private var abandoned = false
  private let late: ((Result<T, Error>) -> Void)?

  init(late: ((Result<T, Error>) -> Void)?) { self.late = late }

  func complete(_ r: Result<T, Error>) {
    lock.lock()
    if abandoned || result != nil {
      lock.unlock()
      late?(r)
      return
    }
    result = r
    lock.unlock()
    sem.signal()
  }

  func wait(seconds: Double, what: String) -> Result<T, Error> {
    if sem.wait(timeout: .now() + seconds) == .success {
      lock.lock()
      defer { lock.unlock() }
      return result!
    }
    lock.lock()
    defer { lock.unlock() }
    if let result { return result }
    abandoned = true
    return .failure(ShimError(code: .timeout, message: "\(what) did not finish within \(Int(seconds)) s"))
  }
}

/// Blocks the calling thread until `body` calls its completion, which may
/// happen on any queue, or until `seconds` pass (a timeout error). Never call
/// it on the queue that completes.
func waitFor<T>(
  _ what: String, seconds: Double, late: ((Result<T, Error>) -> Void)? = nil,
  _ body: (@escaping (Result<T, Error>) -> Void) -> Void
) -> Result<T, Error> {
  let handover = Handover<T>(late: late)
  body { result in handover.complete(result) }
  return handover.wait(seconds: seconds, what: what)
}

/// A duplicate of fd that is closed on exec (F_DUPFD_CLOEXEC), so that the
/// processes cove spawns do not inherit it; -1 if fd is not open.
func dupCloexec(_ fd: Int32) -> Int32 {
  fcntl(fd, F_DUPFD_CLOEXEC, 0)
}

/// Adapts a Result completion to VZ's `(Error?) -> Void` completion handlers.
func orError(_ done: @escaping (Result<Void, Error>) -> Void) -> (Error?) -> Void {
  return { error in
    if let error {
      done(.failure(error))
    } else {
      done(.success(()))
    }
  }
}
