/**
 * Issue 18, items 14-17, through the real `cove` entry point: sizes need a
 * unit and stay in range (memory 128MiB to the host's, disk at least 1MiB
 * and not below its image, at create as at set), `image prune` refuses bare
 * numbers and keeps the cache, every numeric flag is checked against its
 * stated range, and deeply nested YAML is named as such. Each refusal is
 * one line, exit 2, and changes nothing.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { assertOneLineError, type CliResult, cove, withTempDir } from "../helpers/cli.ts";
import { startLoopbackServer } from "../helpers/loopback_http.ts";
import { formatSize } from "../../core/units.ts";
import { detectHost } from "../../core/host.ts";
import { MAX_NESTING } from "../../core/spec/load.ts";

const MiB = 2 ** 20;

/** Refused as bad input: one `cove:` line, exit 2, nothing on stdout. */
function refused(r: CliResult, re: RegExp): void {
  assertOneLineError(r, 2, re);
  assertMatch(r.stderr, /^cove: /);
}

async function vmNames(home: string): Promise<string[]> {
  const r = await cove(home, ["list", "-q"]);
  return r.stdout.split("\n").filter((l) => l);
}

Deno.test("validation: --memory and --disk-size refuse bare numbers with 'use a unit', at create and at set", () =>
  withTempDir(async (home) => {
    refused(
      await cove(home, ["create", "a", "--memory", "0"]),
      /--memory: '0' has no unit \(use a unit: 0MiB\)$/,
    );
    refused(
      await cove(home, ["create", "a", "--memory", "512"]),
      /--memory: '512' has no unit \(use a unit: 512MiB\)$/,
    );
    refused(await cove(home, ["create", "a", "--disk-size", "0"]), /--disk-size: '0' has no unit/);
    refused(await cove(home, ["create", "a", "--memory", "x"]), /--memory: 'x' is not a size/);
    assertEquals(await vmNames(home), []);
    assertEquals(
      (await cove(home, ["create", "a", "--memory", "512MiB", "--disk-size", "8MiB"])).code,
      0,
    );
    refused(
      await cove(home, ["set", "a", "--memory", "1.5"]),
      /--memory: '1\.5' has no unit \(use a unit: 1\.5MiB\)$/,
    );
    const got = JSON.parse((await cove(home, ["get", "a", "--format", "json"])).stdout);
    assertEquals(got.memory, 512 * MiB, "a refused set changes nothing");
  }));

Deno.test("validation: memory has a floor of 128MiB and the host's memory as its ceiling", () =>
  withTempDir(async (home) => {
    const host = formatSize(detectHost().memory).replace(".", "\\.");
    refused(
      await cove(home, ["create", "a", "--memory", "64MiB"]),
      new RegExp(`--memory: 64MiB is less than 128MiB \\(use 128MiB to ${host}\\)$`),
    );
    refused(
      await cove(home, ["create", "a", "--memory", "64TiB"]),
      new RegExp(`--memory: 64TiB is more than ${host} `),
    );
    assertEquals(
      (await cove(home, ["create", "a", "--memory", "128MiB", "--disk-size", "8MiB"])).code,
      0,
    );
    refused(await cove(home, ["set", "a", "--memory", "100MiB"]), /less than 128MiB/);
    const cfg = join(home, "small.yaml");
    await Deno.writeTextFile(cfg, "memory: 64MiB\n");
    refused(
      await cove(home, ["create", "b", "--config", cfg]),
      /small\.yaml: memory: 64MiB is less than 128MiB/,
    );
  }));

Deno.test("validation: a disk is at least 1MiB and never smaller than the image it comes from, at create as at set", () =>
  withTempDir(async (home) => {
    refused(
      await cove(home, ["create", "a", "--disk-size", "512KiB"]),
      /--disk-size: 512KiB is less than 1MiB/,
    );
    const raw = join(home, "img.raw");
    const qcow = join(home, "32MiB.qcow2");
    await Deno.writeFile(raw, new Uint8Array(32 * MiB).fill(1, 0, 4096));
    const q = await new Deno.Command("qemu-img", {
      args: ["convert", "-f", "raw", "-O", "qcow2", raw, qcow],
    }).output();
    assert(q.success, new TextDecoder().decode(q.stderr));
    refused(
      await cove(home, ["create", "a", "--from", qcow, "--disk-size", "1MiB"]),
      /--disk-size: 1MiB is smaller than the image \(32MiB\); disks only grow \(use a size of at least 32MiB\)$/,
    );
    assertEquals(await vmNames(home), [], "nothing half-made is left");
    const ok = await cove(home, [
      "create",
      "a",
      "--from",
      qcow,
      "--disk-size",
      "48MiB",
      "--format",
      "json",
    ]);
    assertEquals(ok.code, 0, ok.stderr);
    assertEquals(JSON.parse(ok.stdout).disk, 48 * MiB);
    refused(
      await cove(home, ["set", "a", "--disk-size", "1MiB"]),
      /1MiB is smaller than the image \(48MiB\); disks only grow/,
    );
  }));

Deno.test("validation: image prune --older-than 30 and --budget 20 are refused (exit 2) and the cache stays", () =>
  withTempDir(async (home) => {
    const srv = startLoopbackServer();
    try {
      const body = new Uint8Array(2 * MiB);
      body[510] = 0x55;
      body[511] = 0xaa;
      srv.files.set("/disk.img", { body });
      const c = await cove(home, ["create", "web", "--from", `${srv.base}/disk.img`]);
      assertEquals(c.code, 0, c.stderr);
      refused(
        await cove(home, ["image", "prune", "--older-than", "30"]),
        /--older-than: '30' has no unit \(use a unit: 30s, 30m, 30h or 30d\)$/,
      );
      refused(
        await cove(home, ["image", "prune", "--budget", "20"]),
        /--budget: '20' has no unit \(use a unit: 20MiB\)$/,
      );
      const ls = JSON.parse((await cove(home, ["image", "ls", "--format", "json"])).stdout);
      assertEquals(ls.length, 1, "the cache was not touched");
      const kept = await cove(home, ["image", "prune", "--older-than", "30d", "--budget", "20GiB"]);
      assertEquals(kept.code, 0, kept.stderr);
      assertEquals(
        JSON.parse((await cove(home, ["image", "ls", "--format", "json"])).stdout).length,
        1,
      );
    } finally {
      await srv.close();
    }
  }));

Deno.test("validation: every numeric flag is checked against its range: counts are whole, durations carry units", () =>
  withTempDir(async (home) => {
    for (const bad of ["x", "1.5"]) {
      refused(
        await cove(home, ["clone", "a", "b", "--concurrency", bad]),
        /--concurrency: '.*' is not a whole number \(use 1 to 64\)$/,
      );
    }
    refused(
      await cove(home, ["clone", "a", "b", "--concurrency", "-1"]),
      /--concurrency: -1 is less than 1 \(use 1 to 64\)$/,
    );
    refused(
      await cove(home, ["clone", "a", "b", "--concurrency", "0"]),
      /--concurrency: 0 is less than 1/,
    );
    refused(
      await cove(home, ["clone", "a", "b", "--concurrency", "1000"]),
      /--concurrency: 1000 is more than 64/,
    );
    refused(
      await cove(home, ["pull", "x/y:1", "--concurrency", "NaN"]),
      /--concurrency: 'NaN' is not a whole number/,
    );
    refused(
      await cove(home, ["create", "a", "--cpus", "1.5"]),
      /--cpus: '1\.5' is not a whole number \(use 1 to 256\)$/,
    );
    refused(await cove(home, ["create", "a", "--cpus", "300"]), /--cpus: 300 is more than 256/);
    refused(await cove(home, ["ip", "a", "--wait", ""]), /--wait: '' is not a duration/);
    refused(
      await cove(home, ["ip", "a", "--wait", "1.5"]),
      /--wait: '1\.5' has no unit \(use a unit: 1\.5s/,
    );
    refused(await cove(home, ["ssh", "a", "--wait", "10"]), /--wait: '10' has no unit/);
    refused(
      await cove(home, ["exec", "a", "--wait", "-1s", "--", "true"]),
      /--wait: '-1s' is not a duration/,
    );
    refused(await cove(home, ["stop", "a", "--timeout", "30"]), /--timeout: '30' has no unit/);
    refused(
      await cove(home, ["start", "a", "--timeout", "99999d"]),
      /--timeout: 99999d is more than 24d/,
    );
    refused(
      await cove(home, ["run", "a", "--stop-timeout", "5"]),
      /--stop-timeout: '5' has no unit/,
    );
    refused(await cove(home, ["console", "a", "--replay", "-5"]), /--replay: -5 is less than 0/);
    refused(
      await cove(home, ["push", "a", "x/y:1", "--chunk-size", "512"]),
      /--chunk-size: '512' has no unit/,
    );
    // With units, the same flags pass validation and reach the command (no VM 'a': exit 3).
    for (const args of [["ip", "a", "--wait", "1.5s"], ["stop", "a", "--timeout", "30s"]]) {
      const r = await cove(home, args);
      assertEquals(r.code, 3, r.stderr);
      assertMatch(r.stderr, /no VM named 'a'/);
    }
  }));

Deno.test("validation: deeply nested YAML is 'nested too deeply (limit N)', not a stack overflow", () =>
  withTempDir(async (home) => {
    for (const depth of [MAX_NESTING + 1, 5000]) {
      const flow = join(home, `flow${depth}.yaml`);
      await Deno.writeTextFile(flow, `cpus: ${"[".repeat(depth)}${"]".repeat(depth)}\n`);
      refused(
        await cove(home, ["create", "a", "--config", flow]),
        new RegExp(`flow${depth}\\.yaml:\\d+:\\d+: nested too deeply \\(limit ${MAX_NESTING}\\)$`),
      );
      const block = join(home, `block${depth}.yaml`);
      await Deno.writeTextFile(
        block,
        Array.from({ length: depth }, (_, i) => `${" ".repeat(i)}a:`).join("\n") + " 1\n",
      );
      refused(
        await cove(home, ["create", "a", "--config", block]),
        /nested too deeply \(limit 64\)$/,
      );
    }
    assertEquals(await vmNames(home), []);
  }));
