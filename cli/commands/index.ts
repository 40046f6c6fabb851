/**
 * The list of command modules, in the order `cove --help` shows them.
 * Each exports `register(program)`.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import * as vm from "./vm.ts";
import * as lifecycle from "./lifecycle.ts";
import * as access from "./access.ts";
import * as image from "./image.ts";
import * as host from "./host.ts";
import * as oci from "./oci.ts";
import * as snapshot from "./snapshot.ts";
import * as agent from "./agent.ts";
import * as net from "./net.ts";
import * as job from "./job.ts";

/** A module that adds commands to the program. */
export interface CommandModule {
  register(program: Command): void;
}

/** Every command module. */
export const commandModules: CommandModule[] = [
  vm,
  lifecycle,
  snapshot,
  access,
  agent,
  net,
  job,
  image,
  oci,
  host,
];
