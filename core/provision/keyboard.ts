/**
 * ISO keyboards in macOS guests. VZ gives a macOS guest an ANSI keyboard, so
 * on an ISO host keyboard (most of Europe) two keys arrive swapped (UTM#5037,
 * #4569): the key left of 1 (§/± on a British Mac) and the extra key beside
 * left shift (`/~). In HID terms (usage page 0x07, Keyboard/Keypad):
 *
 * - 0x35 Keyboard Grave Accent and Tilde (ANSI: left of 1);
 * - 0x64 Keyboard Non-US \ and | (ISO: beside left shift).
 *
 * hidutil's UserKeyMapping takes them as 0x7_0000_0035 and 0x7_0000_0064
 * (page << 32 | usage); swapping them both ways puts each key back. The
 * mapping does not survive a logout, so it is set by a per-user LaunchAgent
 * at every login, installed over ssh at first boot.
 * @module
 */

/** HID usage page 0x07 usage 0x35: Keyboard Grave Accent and Tilde. */
export const HID_GRAVE_TILDE = 0x700000035;
/** HID usage page 0x07 usage 0x64: Keyboard Non-US Backslash and Pipe. */
export const HID_NON_US_BACKSLASH = 0x700000064;

/** The LaunchAgent's label and its file under ~/Library/LaunchAgents. */
export const ISO_AGENT_LABEL = "dev.cove.keyboard-iso";
export const ISO_AGENT_PATH = `Library/LaunchAgents/${ISO_AGENT_LABEL}.plist`;

const hex = (n: number) => `0x${n.toString(16).toUpperCase()}`;

/** The argument hidutil gets: the two keys swapped both ways. */
export function isoKeyMapping(): string {
  const pair = (src: number, dst: number) =>
    `{"HIDKeyboardModifierMappingSrc":${hex(src)},"HIDKeyboardModifierMappingDst":${hex(dst)}}`;
  return `{"UserKeyMapping":[${pair(HID_GRAVE_TILDE, HID_NON_US_BACKSLASH)},${
    pair(HID_NON_US_BACKSLASH, HID_GRAVE_TILDE)
  }]}`;
}

function xmlEscape(s: string): string {
  return s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;");
}

/** The LaunchAgent plist (XML) that runs hidutil with the ISO mapping at login. */
export function isoKeyboardAgentPlist(): string {
  const args = ["/usr/bin/hidutil", "property", "--set", isoKeyMapping()];
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">',
    '<plist version="1.0">',
    "<dict>",
    "  <key>Label</key>",
    `  <string>${ISO_AGENT_LABEL}</string>`,
    "  <key>ProgramArguments</key>",
    "  <array>",
    ...args.map((a) => `    <string>${xmlEscape(a)}</string>`),
    "  </array>",
    "  <key>RunAtLoad</key>",
    "  <true/>",
    "</dict>",
    "</plist>",
    "",
  ].join("\n");
}

function base64(s: string): string {
  const bytes = new TextEncoder().encode(s);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

/**
 * The shell (run in the guest as the user, over ssh) that writes the agent
 * and applies the mapping now; the agent applies it at every later login.
 */
export function isoKeyboardAgentScript(): string {
  const b64 = base64(isoKeyboardAgentPlist());
  return [
    'mkdir -p "$HOME/Library/LaunchAgents"',
    `printf '%s' '${b64}' | base64 -d > "$HOME/${ISO_AGENT_PATH}.tmp"`,
    `mv "$HOME/${ISO_AGENT_PATH}.tmp" "$HOME/${ISO_AGENT_PATH}"`,
    `(command -v hidutil >/dev/null 2>&1 && hidutil property --set '${isoKeyMapping()}' >/dev/null 2>&1 || true)`,
  ].join(" && ");
}
