// Finding the guest's address for the proxy (core/net/resolve.ts) from the host's neighbour table.
import { assertEquals } from "../helpers/assert.ts";
import { neighIpsFor } from "../../core/net/resolve.ts";

Deno.test("the neighbour table gives the guest's freshest address first and skips failed entries", () => {
  const mac = "52:54:00:77:00:02";
  const table = [
    { dst: "10.77.0.2", lladdr: "52:54:00:77:00:02", confirmed: 40, state: ["STALE"] },
    { dst: "10.77.0.3", lladdr: "52:54:00:77:00:02", confirmed: 1, state: ["REACHABLE"] },
    { dst: "10.77.0.4", lladdr: "52:54:00:77:00:02", confirmed: 0, state: ["FAILED"] },
    { dst: "fe80::5054:ff:fe77:2", lladdr: "52:54:00:77:00:02", confirmed: 0, state: ["STALE"] },
    { dst: "10.77.0.9", lladdr: "52:54:00:aa:bb:cc", confirmed: 0, state: ["REACHABLE"] },
    { dst: "10.77.0.10", state: ["INCOMPLETE"] },
  ];
  assertEquals(neighIpsFor(table, "52:54:0:77:0:2"), [
    "10.77.0.3",
    "10.77.0.2",
    "fe80::5054:ff:fe77:2",
  ]);
  assertEquals(neighIpsFor(table, mac.toUpperCase())[0], "10.77.0.3");
  assertEquals(neighIpsFor([], mac), []);
});
