/**
 * cove as a library: the same capabilities as the `cove` command, typed.
 * The CLI in `cli/` is a thin client of these exports.
 *
 * @example
 * ```ts
 * import { createVm, Store } from "./mod.ts";
 * const store = new Store(); // $COVE_HOME or ~/.cove
 * await createVm(store, "dev", { cpus: 2, memory: "4GiB", diskSize: "32GiB" });
 * console.log(await store.list());
 * ```
 * @module
 */
export { CoveError, ExitCode, toCoveError, usageError } from "./core/errors.ts";
export { formatSize, parseSize } from "./core/units.ts";
export { VERSION } from "./core/version.ts";
export { detectHost } from "./core/host.ts";
export {
  jsonSchema,
  type SpecInput,
  type SpecParsed,
  SpecSchema,
  type VmSpec,
} from "./core/spec/schema.ts";
export { parseSpec, SpecError, validateSpec } from "./core/spec/load.ts";
export { applyDefaults } from "./core/spec/defaults.ts";
export { applyFlags, readConfigFile, type SpecFlags } from "./core/spec/compose.ts";
export { coveHome, randomMac, Store, validateName, type VmSummary } from "./core/store/store.ts";
export { Bundle, type BundleLock, type MachineIdentity } from "./core/store/bundle.ts";
export { cloneFile } from "./core/store/fsutil.ts";
export { createVm, type CreateVmOptions, getVm, setVm, type VmDetails } from "./core/vm.ts";
export { doctor, type DoctorReport, versionInfo } from "./core/doctor.ts";
export type {
  Capabilities,
  Engine,
  EngineEvent,
  EngineId,
  ExitInfo,
  HostInfo,
  RunningVm,
  StartRequest,
  VmState,
} from "./engines/engine.ts";
export { loadEngine, resolveEngineId } from "./engines/select.ts";
export { type RunOptions, type RunResult, runSupervisor } from "./core/supervisor/supervisor.ts";
export { startDetached, type StartOptions } from "./core/supervisor/start.ts";
export {
  attachConsole,
  type ConsoleStream,
  pauseVm,
  resumeVm,
  type StopOptions,
  type StopResult,
  stopVm,
  suspendVm,
  vmStatus,
} from "./core/supervisor/client.ts";
export { type LiveStatus, liveStatus } from "./core/supervisor/live.ts";
export type { SupervisorStatus } from "./core/supervisor/protocol.ts";
export { type ImageProbe, probeImage } from "./core/images/qcow2.ts";
export { convertQcow2ToRaw } from "./core/images/qcow2.ts";
export { download, type DownloadOptions, parseChecksum } from "./core/images/download.ts";
export { prepareSource, resolveSource, type SourceOptions } from "./core/images/source.ts";
export { listImageCache, pruneImageCache } from "./core/images/caches.ts";
export { installFromIpsw, isIpswSource } from "./core/images/ipsw.ts";
export {
  loginRegistry,
  logoutRegistry,
  OciCache,
  pullImage,
  pushVm,
  specFromTart,
  tartFromSpec,
} from "./core/oci/mod.ts";
export { createFromOci } from "./core/oci/create.ts";
export { guestAddress } from "./core/access/address.ts";
export { runSsh } from "./core/access/ssh.ts";
export {
  applyMacProvisioning,
  FIRST_BOOT_WAIT_S,
  icloudStatus,
  type InstallRecord,
  type PasswordSource,
  provisioningPlan,
  readInstallRecord,
  resolvePassword,
  waitFirstBoot,
} from "./core/provision/macos.ts";
export { isoKeyboardAgentPlist, isoKeyMapping } from "./core/provision/keyboard.ts";
