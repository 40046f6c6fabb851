/**
 * The floor under `cove help` and `cove complete`: a process that only
 * loads the argument parser cove uses (commander) and builds one command.
 * bench/cli/main.ts times it beside cove, to show how much of cove's cost
 * is the parser's.
 * @module
 */
import { Command } from "@commander-js/extra-typings";

new Command("floor").parse([], { from: "user" });
