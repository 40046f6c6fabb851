/*
 * cove_vz.h: the C ABI of libcove_vz.dylib, cove's bridge to Apple's
 * Virtualization.framework (VZ). This header is the single source of truth:
 * the Swift @_cdecl exports (swift-shim/Sources/CoveVZ) and the Deno symbol
 * table (ffi/cove_vz.ts) are checked against it by
 * tests/unit/abi_drift_test.ts, and the test double (tests/ffi) implements it.
 *
 * Rules
 * -----
 * - Strings in and out are UTF-8 JSON. Every `char *` a function returns is a
 *   heap string the caller frees with cove_free(); it is never NULL.
 * - Every returned JSON object is either {"ok":true, ...} or
 *   {"ok":false,"error":{"domain":D,"code":N,"message":M, ...}}. Errors from
 *   Apple's frameworks keep their NSError domain and code (VZErrorDomain,
 *   NSCocoaErrorDomain, NSPOSIXErrorDomain); "reason" carries
 *   localizedFailureReason and "underlying" the NSUnderlyingError, when set.
 *   The shim's own errors use the domain COVE_VZ_ERROR_DOMAIN and the codes
 *   below; version gates add "requires":"14.0" (the macOS that introduced the
 *   feature).
 * - No callbacks into the caller. Everything asynchronous (state changes, a
 *   guest-initiated stop, install progress, incoming vsock connections,
 *   errors) is queued per VM and taken with cove_vz_next_event(), which
 *   blocks up to timeout_ms. Deno calls the blocking functions with
 *   `nonblocking: true`, so its event loop keeps running meanwhile.
 * - Each VM lives on its own serial dispatch queue. Lifecycle calls
 *   (start, stop, pause, resume, save, restore, vsock connect) block the
 *   calling thread until VZ's completion handler has run on that queue, or
 *   until a bound passes (COVE_VZ_ERR_TIMEOUT): start 300 s, stop, pause and
 *   resume 60 s, save and restore 900 s, vsock connect 15 s, restore image
 *   load 300 s and fetch 120 s, Rosetta install 900 s.
 *   Nothing waits on the main queue except cove_vz_pump(), which the caller
 *   runs on the process's main thread (Deno: from a timer) to step AppKit.
 * - File descriptors passed in a configuration are duplicated by the library
 *   (F_DUPFD_CLOEXEC): the caller keeps, and closes, its own; the library
 *   closes its copies when the VM is released (after validate, at once).
 *   Descriptors the library returns (vsock connect, vsock-connection events)
 *   belong to the caller and are close-on-exec, so processes the caller
 *   spawns do not inherit them.
 * - Each VM queues at most 1024 events; past that the oldest state or
 *   install-progress event is dropped. install-progress comes at most about
 *   ten times a second.
 * - VM handles are positive integers, never reused within a process.
 *
 * Configuration JSON (cove_vz_validate, cove_vz_create)
 * ------------------------------------------------------
 * {
 *   "cpuCount": 4, "memorySize": 8589934592,
 *   "platform": {"type":"mac","hardwareModel":B64,"machineIdentifier":B64,
 *                "auxiliaryStorage":PATH}
 *             | {"type":"generic","machineIdentifier":B64?,
 *                "nestedVirtualization":false},
 *   "bootLoader": {"type":"macos"}
 *               | {"type":"efi","variableStore":PATH}
 *               | {"type":"linux","kernel":PATH,"initialRamdisk":PATH?,
 *                  "commandLine":"console=hvc0"?},
 *   "storage": [{"type":"virtio-block"|"nvme"|"usb-mass-storage",
 *                "path":PATH,"format":"raw"|"asif","readOnly":false,
 *                "caching":"automatic"|"cached"|"uncached",
 *                "sync":"full"|"fsync"|"none","identifier":"root"?}],
 *   "network": [{"macAddress":"52:54:00:12:34:56"?,
 *                "attachment":{"type":"nat"}
 *                           | {"type":"bridged","interface":"en0"}
 *                           | {"type":"fileHandle","fd":5,"mtu":1500?}}],
 *   "directoryShares": [{"tag":"home","automount":false,
 *                        "share":{"type":"single","path":PATH,"readOnly":false}
 *                              | {"type":"multiple","directories":
 *                                  {"NAME":{"path":PATH,"readOnly":false}}}
 *                              | {"type":"rosetta"}}],
 *   "entropy": true, "memoryBalloon": true, "socket": true,
 *   "serialPorts": [{"type":"fileHandles","readFd":3,"writeFd":4}
 *                 | {"type":"file","path":PATH,"append":true}],
 *   "consolePorts": [{"name":"dev.cove.agent","isConsole":false,
 *                     "attachment":{"type":"fileHandles","readFd":6,"writeFd":7}}],
 *   "clipboard": false,
 *   "audio": {"input":true,"output":true,"noHostSink":false} | null,
 *            (noHostSink: the output stream has no host sink, which a
 *             suspendable VM needs to pass save/restore validation)
 *   "keyboards": ["usb","mac"], "pointingDevices": ["usb","trackpad"],
 *   "graphics": {"type":"mac","displays":[{"width":1920,"height":1200,"ppi":144}]}
 *             | {"type":"virtio","scanouts":[{"width":1280,"height":800}]} | null
 * }
 * Absent arrays mean none; absent booleans mean false. PATHs are absolute.
 *
 * Events (cove_vz_next_event: {"ok":true,"event":EVENT|null,"closed":bool})
 * -------------------------------------------------------------------------
 *   {"type":"state","state":"stopped"|"running"|"paused"|"error"|"starting"|
 *            "pausing"|"resuming"|"stopping"|"saving"|"restoring"}
 *   {"type":"guest-stopped"}                     the guest powered off
 *   {"type":"stopped-with-error","error":ERROR}  VZ stopped the VM on an error
 *   {"type":"network-disconnected","index":0,"error":ERROR}
 *   {"type":"install-progress","fraction":0.42}
 *   {"type":"install-finished"} | {"type":"install-failed","error":ERROR}
 *   {"type":"vsock-connection","port":1024,"sourcePort":52,"fd":9}
 *   {"type":"window-closed"}
 * "event" is null when timeout_ms passed without one; "closed" is true once
 * the VM was released and its queue drained.
 */
#ifndef COVE_VZ_H
#define COVE_VZ_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI this header describes. Bump it on any change below. */
#define COVE_VZ_ABI_VERSION 2

/* The NSError domain of errors raised by the shim itself. */
#define COVE_VZ_ERROR_DOMAIN "dev.cove.vz"

/* Error codes in COVE_VZ_ERROR_DOMAIN. */
#define COVE_VZ_ERR_BAD_REQUEST 1     /* malformed JSON or a wrong/missing field */
#define COVE_VZ_ERR_NO_SUCH_HANDLE 2  /* unknown or released VM handle */
#define COVE_VZ_ERR_UNSUPPORTED 3     /* needs a newer macOS or other hardware ("requires") */
#define COVE_VZ_ERR_STATE 4           /* the VM is in the wrong state for this call */
#define COVE_VZ_ERR_NOT_MAIN_THREAD 5 /* a GUI call made off the main thread */
#define COVE_VZ_ERR_IO 6              /* a host file or descriptor could not be used */
#define COVE_VZ_ERR_TIMEOUT 7         /* VZ did not complete a blocking call in time */
#define COVE_VZ_ERR_INTERNAL 99       /* a bug in the shim */

/* ---- library ---------------------------------------------------------- */

/* COVE_VZ_ABI_VERSION of the library; callers refuse any other value. */
uint32_t cove_abi_version(void);

/* Frees a string returned by any function here. NULL is ignored. */
void cove_free(char *s);

/* ---- host ------------------------------------------------------------- */

/* {"ok":true,"supported":bool,"macosVersion":"14.5.0","machineModel":"Mac14,2",
 *  "cpuCount":{"min":1,"max":10},"memorySize":{"min":N,"max":N},
 *  "nestedVirtualizationSupported":bool,"saveRestoreSupported":bool,
 *  "rosetta":"installed"|"notInstalled"|"notSupported",
 *  "entitlements":{"virtualization":bool,"networking":bool},
 *  "bridgedInterfaces":[{"identifier":"en0","name":"Ethernet"}]} */
char *cove_vz_host_info(void);

/* Builds the configuration and runs VZ's validate(). Boots nothing; safe on
 * CI runners that cannot run VMs. {"ok":true,"saveRestore":{"supported":bool,
 * "error":ERROR?}} (whether this configuration can be suspended, macOS 14+). */
char *cove_vz_validate(const char *config_json);

/* Asks the user to install Rosetta for Linux guests (shows a system dialog).
 * Blocks until answered. {"ok":true,"rosetta":"installed"} */
char *cove_vz_rosetta_install(void);

/* ---- machine identity and boot state ---------------------------------- */

/* A new machine identifier. platform: "mac" or "generic".
 * {"ok":true,"machineIdentifier":B64} */
char *cove_vz_machine_identifier_new(const char *platform);

/* Creates Mac auxiliary storage at path for a hardware model (base64 from a
 * restore image's requirements). Fails if path exists. {"ok":true} */
char *cove_vz_mac_auxiliary_storage_create(const char *path, const char *hardware_model_b64);

/* Creates an EFI variable store at path. Fails if path exists. {"ok":true} */
char *cove_vz_efi_variable_store_create(const char *path);

/* ---- macOS restore images --------------------------------------------- */

/* Loads an IPSW. Blocks. {"ok":true,"image":IMAGE} with IMAGE =
 * {"url":S (the IPSW's path, or an https URL when fetched),
 *  "buildVersion":"23F79","operatingSystemVersion":"14.5.0",
 *  "supported":bool,"requirements":{"hardwareModel":B64,"minimumCPUCount":N,
 *  "minimumMemorySize":N}|null}  (requirements: the most featureful
 *  configuration this host supports, null if none) */
char *cove_vz_restore_image_load(const char *ipsw_path);

/* Fetches the latest restore image this host supports (network). Blocks.
 * {"ok":true,"image":IMAGE}; "url" is the https URL to download. */
char *cove_vz_restore_image_fetch_latest(void);

/* ---- virtual machines ------------------------------------------------- */

/* Builds, validates and creates a VM (stopped).
 * {"ok":true,"handle":N,"saveRestore":{"supported":bool,"error":ERROR?}} */
char *cove_vz_create(const char *config_json);

/* Releases a VM: cancels a running install and waits (bounded) for it to
 * end, waits (bounded) for a state it can stop from and stops it, then
 * closes the descriptors the VM held and any still queued in events, and
 * forgets the handle, all before it returns (a window, if shown, closes at
 * the next pump). A VM that would not stop keeps its descriptors open rather
 * than risk a reused descriptor number. Pending and later next_event calls
 * return "closed":true. {"ok":true} */
char *cove_vz_release(uint64_t vm);

/* {"ok":true,"state":S,"canStart":b,"canStop":b,"canPause":b,"canResume":b,
 *  "canRequestStop":b} */
char *cove_vz_state(uint64_t vm);

/* Starts the VM; blocks until it runs or fails.
 * options_json: {"recovery":false} (macOS guests: boot into recoveryOS). */
char *cove_vz_start(uint64_t vm, const char *options_json);

/* Asks the guest to shut down (power button). Returns at once; the stop
 * arrives later as a guest-stopped event. */
char *cove_vz_request_stop(uint64_t vm);

/* Stops at once (power off). Blocks until stopped. */
char *cove_vz_stop(uint64_t vm);

/* Pauses / resumes. Block until done. */
char *cove_vz_pause(uint64_t vm);
char *cove_vz_resume(uint64_t vm);

/* macOS 14+ on Apple silicon only (VZ declares save/restore under __arm64__;
 * elsewhere COVE_VZ_ERR_UNSUPPORTED): saves the machine state of a paused VM
 * to path / restores a stopped VM from path (then it is paused; resume it).
 * Block until done. */
char *cove_vz_save(uint64_t vm, const char *path);
char *cove_vz_restore(uint64_t vm, const char *path);

/* Sets the memory balloon's target: the memory the guest should keep.
 * {"ok":true,"targetMemorySize":N} (VZ rounds it). */
char *cove_vz_set_balloon_target(uint64_t vm, uint64_t bytes);

/* Connects to a vsock port in the guest. Blocks, at most 15 s: VZ never
 * answers when nothing listens on the port (COVE_VZ_ERR_TIMEOUT then).
 * {"ok":true,"fd":N,"sourcePort":N,"destinationPort":N}; the fd is the
 * caller's (close-on-exec). */
char *cove_vz_vsock_connect(uint64_t vm, uint32_t port);

/* Accepts guest connections to a host vsock port; each arrives as a
 * vsock-connection event carrying a new fd. {"ok":true} */
char *cove_vz_vsock_listen(uint64_t vm, uint32_t port);
char *cove_vz_vsock_unlisten(uint64_t vm, uint32_t port);

/* The next event of a VM, waiting up to timeout_ms (0: do not wait). */
char *cove_vz_next_event(uint64_t vm, int32_t timeout_ms);

/* ---- macOS install ---------------------------------------------------- */

/* Installs macOS from a local IPSW into a stopped VM with a Mac platform
 * (checked first, since VZMacOSInstaller would raise an exception:
 * COVE_VZ_ERR_BAD_REQUEST for another platform, COVE_VZ_ERR_IO when the IPSW
 * is not a file, COVE_VZ_ERR_STATE when the VM is not stopped). Returns at once: install-progress events follow, then install-finished or
 * install-failed. {"ok":true} */
char *cove_vz_install_macos(uint64_t vm, const char *ipsw_path);

/* Cancels a running install (install-failed follows). {"ok":true} */
char *cove_vz_install_cancel(uint64_t vm);

/* ---- GUI -------------------------------------------------------------- */

/* Main thread only. Opens a window showing the VM's display.
 * options_json: {"title":"cove: dev","width":1920,"height":1200,
 *                "capturesSystemKeys":true,"automaticallyReconfiguresDisplay":true}
 * Closing it queues a window-closed event. */
char *cove_vz_show_window(uint64_t vm, const char *options_json);

/* Main thread only. Steps the AppKit run loop for up to timeout_ms, handling
 * window events and main-queue work. Returns the number of AppKit events
 * handled, or -1 when called off the main thread. Headless VMs need no pump. */
int32_t cove_vz_pump(int32_t timeout_ms);

#ifdef __cplusplus
}
#endif

#endif /* COVE_VZ_H */
