/**
 * During a real `cove push` (to Debian's docker-registry on loopback, behind
 * a gate the test holds shut), the VM is `busy (push)`: `list` says so,
 * `start` and `delete --force` refuse at once with "busy: a push is in
 * progress" (exit 4), and `list` probing all the while never makes the push
 * fail. Once the gate opens the push completes and the VM is stopped again.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cove, withTempDir } from "../helpers/cli.ts";
import { startRegistry } from "../helpers/oci_registry.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { Store } from "../../core/store/store.ts";

/** A proxy to `upstream` that holds every manifest PUT until `open()`. */
function gatedProxy(upstream: string) {
  const gate = Promise.withResolvers<void>();
  let held = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    if (req.method === "PUT" && url.pathname.includes("/manifests/")) {
      held++;
      await gate.promise;
    }
    const headers = new Headers(req.headers);
    headers.set("host", upstream);
    const up = await fetch(`http://${upstream}${url.pathname}${url.search}`, {
      method: req.method,
      headers,
      body: req.body,
      redirect: "manual",
    });
    const out = new Headers(up.headers);
    const loc = out.get("location");
    if (loc) out.set("location", loc.replace(upstream, host));
    return new Response(up.body, { status: up.status, headers: out });
  });
  const host = `127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
  return {
    host,
    held: () => held,
    open: () => gate.resolve(),
    stop: () => server.shutdown(),
  };
}

Deno.test("during cove push the VM is busy (push): list says so, start and delete --force refuse with exit 4, probes never fail the push", async () => {
  const reg = await startRegistry();
  const proxy = gatedProxy(reg.host);
  try {
    await withTempDir(async (home) => {
      await new Store(home).create("src", {
        spec: parseSpec("os: linux\narch: x86_64\ndisks: [{ path: disk.img, size: 4MiB }]\n"),
      });
      const env = { DOCKER_CONFIG: `${home}/no-docker` };
      const push = cove(home, ["push", "src", `${proxy.host}/test/busy:1`, "--insecure"], {
        env,
        timeoutMs: 120_000,
      });
      const deadline = Date.now() + 60_000;
      while (proxy.held() === 0) {
        assert(Date.now() < deadline, "the push never reached its manifest PUT");
        // Probing while the push runs: it must never make the push fail.
        await cove(home, ["list", "-q"]);
      }
      const list = await cove(home, ["list", "--format", "json"]);
      assertEquals(list.code, 0, list.stderr);
      const rows = JSON.parse(list.stdout) as { name: string; state: string; busy?: string }[];
      assertEquals(rows.map((r) => [r.name, r.state, r.busy]), [["src", "busy", "push"]]);
      assertMatch((await cove(home, ["list"])).stdout, /src\s+busy \(push\)/);
      for (const args of [["start", "src"], ["delete", "src", "--force"]]) {
        const r = await cove(home, args);
        assertEquals(r.code, 4, `${args.join(" ")}: ${r.stderr}`);
        assertMatch(r.stderr.trim(), /^cove: cannot \w+ 'src': busy: a push is in progress/);
      }
      proxy.open();
      const done = await push;
      assertEquals(done.code, 0, done.stderr);
      const after = JSON.parse((await cove(home, ["list", "--format", "json"])).stdout);
      assertEquals(after.map((r: { state: string }) => r.state), ["stopped"]);
    });
  } finally {
    proxy.open();
    await proxy.stop();
    await reg.stop();
  }
});
