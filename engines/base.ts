/**
 * The defaults every engine starts from, as Lima's drivers do: an engine
 * extends {@link BaseEngine} and overrides only what it does differently.
 * By default the guest is reached at its own address on the network, the
 * engine sets nothing up for that, installs from no restore image, and
 * limits nothing.
 * @module
 */
import type { HostInfo } from "../core/host.ts";
import type { NetworkSpec, VmSpec } from "../core/spec/schema.ts";
import type {
  Capabilities,
  Engine,
  EngineContext,
  EngineId,
  ForwardNic,
  GuestAccess,
  GuestRoute,
  RestoreImageInstaller,
  RunningVm,
  StartRequest,
  VmPaths,
} from "./engine.ts";

/** Guest access at the guest's own address, with nothing to set up. */
export const addressAccess: GuestAccess = {
  route(_nic: NetworkSpec): GuestRoute {
    return "guest-address";
  },
  withAccess(spec: VmSpec): VmSpec {
    return spec;
  },
  forwardNics(): ForwardNic[] {
    return [];
  },
};

/** The defaults of the {@link Engine} interface. */
export abstract class BaseEngine implements Engine {
  abstract readonly id: EngineId;
  abstract capabilities(host: HostInfo): Promise<Capabilities>;
  abstract validate(
    spec: VmSpec,
    host: HostInfo,
    paths: VmPaths,
    ctx?: EngineContext,
  ): Promise<void>;
  abstract start(req: StartRequest): Promise<RunningVm>;

  /** By default the engine forwards no ports itself: the supervisor's proxy serves them. */
  forwardsPorts(_nic: NetworkSpec): boolean {
    return false;
  }

  /** Default: reach the guest at its address on the network. */
  guestAccess(): GuestAccess {
    return addressAccess;
  }

  /** Default: no restore images. */
  restoreImageInstaller(): RestoreImageInstaller | undefined {
    return undefined;
  }
}
