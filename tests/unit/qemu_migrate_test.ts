/** The QEMU migration URIs of machine-state files: `file:` on QEMU 8.2+, a quoted `exec:cat` before. */
import { assertEquals, assertThrows } from "../helpers/assert.ts";
import { hasFileUri, migrationUri, shellQuote } from "../../engines/qemu/migrate.ts";
import { CoveError } from "../../core/errors.ts";

Deno.test("qemu migration: file: from QEMU 8.2 on, exec:cat with a quoted path before", () => {
  assertEquals(hasFileUri({ major: 7, minor: 2, micro: 22 }), false);
  assertEquals(hasFileUri({ major: 8, minor: 1, micro: 0 }), false);
  assertEquals(hasFileUri({ major: 8, minor: 2, micro: 0 }), true);
  assertEquals(hasFileUri({ major: 9, minor: 0, micro: 0 }), true);
  const v7 = { major: 7, minor: 2, micro: 0 };
  assertEquals(migrationUri(v7, "/a b/s.state", "out"), "exec:cat > '/a b/s.state'");
  assertEquals(migrationUri(v7, "/a b/s.state", "in"), "exec:cat '/a b/s.state'");
  assertEquals(
    migrationUri({ major: 9, minor: 1, micro: 0 }, "/x/s.state", "out"),
    "file:/x/s.state",
  );
});

Deno.test("qemu migration: a path with a quote stays one shell word; a newline is refused", () => {
  assertEquals(shellQuote("/it's/$(x)"), `'/it'\\''s/$(x)'`);
  assertThrows(() => shellQuote("/a\nb"), CoveError);
});
