/**
 * Concurrent writers of one VM's spec through the real CLI: `cove set`
 * takes the bundle's spec lock, re-reads cove.yaml under it and writes it
 * atomically, so two sets that change different fields at the same moment
 * both keep their change.
 */
import { assertEquals } from "../helpers/assert.ts";
import { cove, withTempDir } from "../helpers/cli.ts";

Deno.test("concurrent 'cove set --cpus' and 'cove set --memory' of one VM both take effect, ten sets in five rounds", () =>
  withTempDir(async (home) => {
    const c = await cove(home, ["create", "spec", "--disk-size", "64MiB"]);
    assertEquals(c.code, 0, c.stderr);
    for (let i = 0; i < 5; i++) {
      const cpus = String((i % 2) + 1);
      const memory = `${600 + i * 10}MiB`;
      const [a, b] = await Promise.all([
        cove(home, ["set", "spec", "--cpus", cpus]),
        cove(home, ["set", "spec", "--memory", memory]),
      ]);
      assertEquals([a.code, b.code], [0, 0], a.stderr + b.stderr);
      const got = await cove(home, ["get", "spec", "--format", "json"]);
      const d = JSON.parse(got.stdout) as { cpus: number; spec: { memory: string } };
      assertEquals([d.cpus, d.spec.memory], [Number(cpus), memory], `round ${i}`);
    }
  }));
