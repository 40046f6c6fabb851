/*
 * cove_vz_double.c: a TEST DOUBLE of libcove_vz. It is NOT a
 * Virtualization.framework and runs no virtual machine.
 *
 * It implements every function of swift-shim/include/cove_vz.h as a small
 * scripted state machine so that the Deno bindings (ffi/cove_vz.ts) and the
 * vz engine (engines/vz) can be tested on Linux, where Swift and VZ do not
 * exist. tests/ffi/build.ts compiles it with gcc into tests/.cache/.
 *
 * The script, which the tests rely on:
 * - validate/create: the JSON must be well formed and have "cpuCount" 1..64,
 *   "memorySize" >= 128 MiB and a "bootLoader"; otherwise a VZErrorDomain
 *   code 2 error, as VZ's validate() would give. A mac platform needs
 *   "hardwareModel".
 * - start: stopped -> starting -> running (after ~20 ms). The "guest" then
 *   writes "cove-double: guest running\n" to the serial port and echoes each
 *   line it reads back as "echo: LINE\n". The line "poweroff" stops the guest
 *   (guest-stopped event), as does request_stop (after ~30 ms).
 * - stop, pause, resume, save (paused only; writes the file), restore
 *   (stopped only; reads it, then paused) follow VZ's state rules; a wrong
 *   state gives VZErrorDomain code 4.
 * - vsock connect (needs "socket":true, running): ports below 1024 are
 *   refused (NSPOSIXErrorDomain 61); on ports from 40000 nobody listens, and
 *   after 100 ms (the shim waits 15 s) the call fails with
 *   COVE_VZ_ERR_TIMEOUT; others return one end of a socketpair whose other
 *   end echoes. Returned descriptors are close-on-exec, as the shim's are. vsock listen: the guest connects at once and the
 *   fd of the vsock-connection event reads "hello from guest port N\n".
 * - install_macos: install-progress events 0.1 .. 1.0, then
 *   install-finished; install_cancel gives install-failed (VZErrorDomain 9).
 * - release, as the shim: cancels a running install and waits for its last
 *   event, closes descriptors still queued (dropping those events), and
 *   queues nothing afterwards (a descriptor for a released VM is closed).
 * - GUI: no windows; pump returns 0.
 * Extra symbols for tests only (not in the header): cove_double_live_strings()
 * counts returned strings not yet freed, cove_double_bad_frees() counts
 * cove_free calls on pointers the library never returned,
 * cove_double_dup_inheritable(fd) returns a dup() without close-on-exec.
 *
 * Build with -DCOVE_DOUBLE_ABI_VERSION=N to get a library that reports a
 * wrong ABI version.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../swift-shim/include/cove_vz.h"

#ifndef SOCK_CLOEXEC /* macOS has no SOCK_CLOEXEC: cloexec_pair sets the flag */
#define SOCK_CLOEXEC 0
#endif

/* Marks both ends close-on-exec (the shim hands out F_DUPFD_CLOEXEC copies). */
static void cloexec_pair(int sv[2]) {
  fcntl(sv[0], F_SETFD, FD_CLOEXEC);
  fcntl(sv[1], F_SETFD, FD_CLOEXEC);
}

#ifndef COVE_DOUBLE_ABI_VERSION
#define COVE_DOUBLE_ABI_VERSION COVE_VZ_ABI_VERSION
#endif

/* vsock ports from here up have no listener in the "guest"; the double's
 * stand-in for the shim's 15 s bound is short, for the tests. */
#define NOBODY_LISTENS_PORT 40000u
#define DOUBLE_VSOCK_TIMEOUT_MS 100

/* ---- returned strings, with accounting ------------------------------- */

static pthread_mutex_t g_str_mu = PTHREAD_MUTEX_INITIALIZER;
static char **g_live = NULL;
static size_t g_live_len = 0, g_live_cap = 0;
static int64_t g_bad_frees = 0;

static char *give(const char *s) {
  char *out = strdup(s);
  pthread_mutex_lock(&g_str_mu);
  if (g_live_len == g_live_cap) {
    g_live_cap = g_live_cap ? g_live_cap * 2 : 64;
    g_live = realloc(g_live, g_live_cap * sizeof(char *));
  }
  g_live[g_live_len++] = out;
  pthread_mutex_unlock(&g_str_mu);
  return out;
}

static char *givef(const char *fmt, ...) {
  char buf[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return give(buf);
}

void cove_free(char *s) {
  if (!s) return;
  pthread_mutex_lock(&g_str_mu);
  for (size_t i = 0; i < g_live_len; i++) {
    if (g_live[i] == s) {
      g_live[i] = g_live[--g_live_len];
      pthread_mutex_unlock(&g_str_mu);
      free(s);
      return;
    }
  }
  g_bad_frees++;
  pthread_mutex_unlock(&g_str_mu);
}

int64_t cove_double_live_strings(void) {
  pthread_mutex_lock(&g_str_mu);
  int64_t n = (int64_t)g_live_len;
  pthread_mutex_unlock(&g_str_mu);
  return n;
}

/* Test only: an inheritable (not close-on-exec) duplicate, the negative
 * control for the close-on-exec tests. */
int cove_double_dup_inheritable(int fd) { return dup(fd); }

int64_t cove_double_bad_frees(void) {
  pthread_mutex_lock(&g_str_mu);
  int64_t n = g_bad_frees;
  pthread_mutex_unlock(&g_str_mu);
  return n;
}

uint32_t cove_abi_version(void) { return COVE_DOUBLE_ABI_VERSION; }

/* ---- errors ---------------------------------------------------------- */

static char *err(const char *domain, long code, const char *message) {
  return givef("{\"ok\":false,\"error\":{\"domain\":\"%s\",\"code\":%ld,\"message\":\"%s\"}}", domain,
               code, message);
}
static char *cove_err(long code, const char *message) { return err(COVE_VZ_ERROR_DOMAIN, code, message); }
static char *vz_err(long code, const char *message) { return err("VZErrorDomain", code, message); }
static char *ok(void) { return give("{\"ok\":true}"); }

/* ---- a minimal JSON checker and field finder (input is cove's own) ---- */

static const char *ws(const char *p) {
  while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
  return p;
}
static const char *skip_value(const char *p, int depth);
static const char *skip_string(const char *p) {
  if (*p != '"') return NULL;
  for (p++; *p && *p != '"'; p++) {
    if (*p == '\\') {
      if (!*++p) return NULL;
    } else if ((unsigned char)*p < 0x20) {
      return NULL;
    }
  }
  return *p == '"' ? p + 1 : NULL;
}
static const char *skip_value(const char *p, int depth) {
  if (depth > 64) return NULL;
  p = ws(p);
  if (*p == '{' || *p == '[') {
    char close = *p == '{' ? '}' : ']';
    int obj = *p == '{';
    p = ws(p + 1);
    if (*p == close) return p + 1;
    for (;;) {
      if (obj) {
        p = skip_string(ws(p));
        if (!p) return NULL;
        p = ws(p);
        if (*p++ != ':') return NULL;
      }
      p = skip_value(p, depth + 1);
      if (!p) return NULL;
      p = ws(p);
      if (*p == ',') { p++; continue; }
      if (*p == close) return p + 1;
      return NULL;
    }
  }
  if (*p == '"') return skip_string(p);
  if (!strncmp(p, "true", 4)) return p + 4;
  if (!strncmp(p, "false", 5)) return p + 5;
  if (!strncmp(p, "null", 4)) return p + 4;
  if (*p == '-' || (*p >= '0' && *p <= '9')) {
    char *end;
    strtod(p, &end);
    return end == p ? NULL : end;
  }
  return NULL;
}
static int json_ok(const char *s) {
  if (!s) return 0;
  const char *e = skip_value(s, 0);
  return e && *ws(e) == '\0' && *ws(s) == '{';
}
/* The position just after `"key":` at or after from, or NULL. */
static const char *field(const char *from, const char *key) {
  char pat[128];
  snprintf(pat, sizeof pat, "\"%s\"", key);
  const char *p = from ? strstr(from, pat) : NULL;
  if (!p) return NULL;
  p = ws(p + strlen(pat));
  return *p == ':' ? ws(p + 1) : NULL;
}
static int field_num(const char *from, const char *key, double *out) {
  const char *p = field(from, key);
  if (!p) return 0;
  char *end;
  *out = strtod(p, &end);
  return end != p;
}
static int field_true(const char *from, const char *key) {
  const char *p = field(from, key);
  return p && !strncmp(p, "true", 4);
}
static int field_str(const char *from, const char *key, char *out, size_t cap) {
  const char *p = field(from, key);
  if (!p || *p != '"') return 0;
  size_t n = 0;
  for (p++; *p && *p != '"' && n + 1 < cap; p++) out[n++] = *p;
  out[n] = '\0';
  return 1;
}

/* ---- VMs ------------------------------------------------------------- */

typedef struct Event {
  char *json;
  int fd; /* an fd carried by the event, closed if never taken */
  struct Event *next;
} Event;

typedef struct Vm {
  uint64_t handle;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  Event *head, *tail;
  int released;
  char state[16];
  int serial_read, serial_write; /* guest side: it reads input, writes output */
  int socket, balloon, mac;
  int stop_requested, guest_running;
  int install_cancel, installing;
  int install_thread; /* the install thread has not yet queued its last event */
  double memory;
  pthread_t guest;
  int guest_started;
} Vm;

static pthread_mutex_t g_vm_mu = PTHREAD_MUTEX_INITIALIZER;
static Vm **g_vms = NULL;
static size_t g_vms_len = 0;
static uint64_t g_next_handle = 1;

static Vm *find_vm(uint64_t h) {
  Vm *vm = NULL;
  pthread_mutex_lock(&g_vm_mu);
  for (size_t i = 0; i < g_vms_len; i++)
    if (g_vms[i]->handle == h) vm = g_vms[i];
  pthread_mutex_unlock(&g_vm_mu);
  return vm;
}

static void push_event_fd(Vm *vm, int fd, const char *fmt, ...) {
  Event *e = calloc(1, sizeof *e);
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  e->json = strdup(buf);
  e->fd = fd;
  pthread_mutex_lock(&vm->mu);
  if (vm->released) { /* as the shim: a released VM's queue takes nothing; its fd is closed */
    pthread_mutex_unlock(&vm->mu);
    if (fd >= 0) close(fd);
    free(e->json);
    free(e);
    return;
  }
  if (vm->tail) vm->tail->next = e; else vm->head = e;
  vm->tail = e;
  pthread_cond_broadcast(&vm->cv);
  pthread_mutex_unlock(&vm->mu);
}
#define push_event(vm, ...) push_event_fd(vm, -1, __VA_ARGS__)

/* Caller holds vm->mu. */
static void set_state_locked(Vm *vm, const char *s) {
  snprintf(vm->state, sizeof vm->state, "%s", s);
  Event *e = calloc(1, sizeof *e);
  char buf[128];
  snprintf(buf, sizeof buf, "{\"type\":\"state\",\"state\":\"%s\"}", s);
  e->json = strdup(buf);
  e->fd = -1;
  if (vm->tail) vm->tail->next = e; else vm->head = e;
  vm->tail = e;
  pthread_cond_broadcast(&vm->cv);
}
static void set_state(Vm *vm, const char *s) {
  pthread_mutex_lock(&vm->mu);
  set_state_locked(vm, s);
  pthread_mutex_unlock(&vm->mu);
}
static int in_state(Vm *vm, const char *s) {
  pthread_mutex_lock(&vm->mu);
  int r = !strcmp(vm->state, s);
  pthread_mutex_unlock(&vm->mu);
  return r;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void write_all(int fd, const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    s += w;
    n -= (size_t)w;
  }
}

/* The "guest": a thread that talks on the serial port until it stops. */
static void *guest_main(void *arg) {
  Vm *vm = arg;
  const char *banner = "cove-double: guest running\n";
  if (vm->serial_write >= 0) write_all(vm->serial_write, banner, strlen(banner));
  char line[1024];
  size_t len = 0;
  int poweroff = 0;
  for (;;) {
    pthread_mutex_lock(&vm->mu);
    int stop = vm->stop_requested;
    int running = vm->guest_running;
    pthread_mutex_unlock(&vm->mu);
    if (!running) return NULL; /* host stopped us */
    if (stop || poweroff) break;
    if (vm->serial_read < 0) { sleep_ms(10); continue; }
    struct pollfd pfd = {vm->serial_read, POLLIN, 0};
    int r = poll(&pfd, 1, 10);
    if (r <= 0) continue;
    char c;
    ssize_t n = read(vm->serial_read, &c, 1);
    if (n <= 0) { sleep_ms(10); continue; }
    if (c == '\n' || c == '\r') {
      if (len == 0) continue;
      line[len] = '\0';
      if (!strcmp(line, "poweroff")) {
        poweroff = 1;
      } else if (vm->serial_write >= 0) {
        char out[1100];
        int m = snprintf(out, sizeof out, "echo: %s\n", line);
        write_all(vm->serial_write, out, (size_t)m);
      }
      len = 0;
    } else if (len + 1 < sizeof line) {
      line[len++] = c;
    }
  }
  /* The guest powers off by itself. */
  pthread_mutex_lock(&vm->mu);
  vm->guest_running = 0;
  set_state_locked(vm, "stopped");
  pthread_mutex_unlock(&vm->mu);
  push_event(vm, "{\"type\":\"guest-stopped\"}");
  return NULL;
}

static void join_guest(Vm *vm) {
  pthread_mutex_lock(&vm->mu);
  vm->guest_running = 0;
  int started = vm->guest_started;
  vm->guest_started = 0;
  pthread_mutex_unlock(&vm->mu);
  if (started) pthread_join(vm->guest, NULL);
}

static void start_guest(Vm *vm) {
  join_guest(vm);
  pthread_mutex_lock(&vm->mu);
  vm->guest_running = 1;
  vm->stop_requested = 0;
  vm->guest_started = 1;
  pthread_mutex_unlock(&vm->mu);
  pthread_create(&vm->guest, NULL, guest_main, vm);
}

/* ---- host ------------------------------------------------------------ */

char *cove_vz_host_info(void) {
  return give(
      "{\"ok\":true,\"testDouble\":true,\"supported\":true,\"macosVersion\":\"15.1.0\","
      "\"machineModel\":\"TestDouble1,1\",\"cpuCount\":{\"min\":1,\"max\":64},"
      "\"memorySize\":{\"min\":134217728,\"max\":68719476736},"
      "\"nestedVirtualizationSupported\":false,\"saveRestoreSupported\":true,"
      "\"rosetta\":\"notInstalled\",\"entitlements\":{\"virtualization\":true,\"networking\":false},"
      "\"bridgedInterfaces\":[{\"identifier\":\"en0\",\"name\":\"Ethernet\"}]}");
}

static char *check_config(const char *json) {
  if (!json_ok(json)) return cove_err(COVE_VZ_ERR_BAD_REQUEST, "the configuration is not a JSON object");
  double cpus = 0, mem = 0;
  if (!field_num(json, "cpuCount", &cpus) || cpus < 1 || cpus > 64)
    return vz_err(2, "Invalid virtual machine configuration. The number of CPUs is outside the allowed range.");
  if (!field_num(json, "memorySize", &mem) || mem < 134217728.0)
    return vz_err(2, "Invalid virtual machine configuration. The memory size must be a multiple of 1 MB and at least 128 MB.");
  if (!field(json, "bootLoader")) return vz_err(2, "Invalid virtual machine configuration. A boot loader is required.");
  char type[32];
  const char *plat = field(json, "platform");
  if (plat && field_str(plat, "type", type, sizeof type) && !strcmp(type, "mac") &&
      !field(plat, "hardwareModel"))
    return cove_err(COVE_VZ_ERR_BAD_REQUEST, "platform.hardwareModel: missing");
  return NULL;
}

/* Scripted save/restore support: a configuration with entropy cannot be saved. */
static const char *save_restore_json(const char *json) {
  return field_true(json, "entropy")
             ? "{\"supported\":false,\"error\":{\"domain\":\"VZErrorDomain\",\"code\":10,"
               "\"message\":\"Saving is not supported with an entropy device (test double).\"}}"
             : "{\"supported\":true}";
}

char *cove_vz_validate(const char *config_json) {
  char *e = check_config(config_json);
  return e ? e : givef("{\"ok\":true,\"saveRestore\":%s}", save_restore_json(config_json));
}

char *cove_vz_rosetta_install(void) { return give("{\"ok\":true,\"rosetta\":\"installed\"}"); }

/* ---- identity -------------------------------------------------------- */

char *cove_vz_machine_identifier_new(const char *platform) {
  if (!platform || (strcmp(platform, "mac") && strcmp(platform, "generic")))
    return cove_err(COVE_VZ_ERR_BAD_REQUEST, "platform: expected mac or generic");
  static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char id[25];
  for (int i = 0; i < 22; i++) id[i] = b64[rand() % 64];
  id[22] = '=';
  id[23] = '=';
  id[24] = '\0';
  return givef("{\"ok\":true,\"machineIdentifier\":\"%s\"}", id);
}

static char *create_file(const char *path, const char *content) {
  if (!path || path[0] != '/') return cove_err(COVE_VZ_ERR_BAD_REQUEST, "path: expected an absolute path");
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) {
    if (errno == EEXIST) return err("NSCocoaErrorDomain", 516, "The file already exists.");
    return err("NSPOSIXErrorDomain", errno, strerror(errno));
  }
  write_all(fd, content, strlen(content));
  close(fd);
  return ok();
}

char *cove_vz_mac_auxiliary_storage_create(const char *path, const char *hardware_model_b64) {
  if (!hardware_model_b64 || !*hardware_model_b64)
    return cove_err(COVE_VZ_ERR_BAD_REQUEST, "hardwareModel: missing");
  return create_file(path, "cove-double auxiliary storage\n");
}

char *cove_vz_efi_variable_store_create(const char *path) {
  return create_file(path, "cove-double EFI variable store\n");
}

/* ---- restore images -------------------------------------------------- */

static const char *IMAGE_FMT =
    "{\"ok\":true,\"image\":{\"url\":\"%s\",\"buildVersion\":\"24A335\","
    "\"operatingSystemVersion\":\"15.0.0\",\"supported\":true,\"requirements\":"
    "{\"hardwareModel\":\"ZG91YmxlLWhhcmR3YXJlLW1vZGVs\",\"minimumCPUCount\":2,"
    "\"minimumMemorySize\":4294967296}}}";

char *cove_vz_restore_image_load(const char *ipsw_path) {
  struct stat st;
  if (!ipsw_path || stat(ipsw_path, &st) != 0)
    return err("NSCocoaErrorDomain", 260, "The file couldn't be opened because there is no such file.");
  return givef(IMAGE_FMT, ipsw_path);
}

char *cove_vz_restore_image_fetch_latest(void) {
  return givef(IMAGE_FMT, "https://example.invalid/UniversalMac_15.0_24A335_Restore.ipsw");
}

/* ---- VM lifecycle ---------------------------------------------------- */

static int dup_field_fd(const char *from, const char *key) {
  double v;
  if (!field_num(from, key, &v)) return -1;
  int fd = fcntl((int)v, F_DUPFD_CLOEXEC, 3);
  return fd;
}

char *cove_vz_create(const char *config_json) {
  char *e = check_config(config_json);
  if (e) return e;
  Vm *vm = calloc(1, sizeof *vm);
  pthread_mutex_init(&vm->mu, NULL);
  pthread_cond_init(&vm->cv, NULL);
  snprintf(vm->state, sizeof vm->state, "stopped");
  vm->serial_read = vm->serial_write = -1;
  const char *serial = field(config_json, "serialPorts");
  if (serial) {
    char type[32];
    if (field_str(serial, "type", type, sizeof type) && !strcmp(type, "fileHandles")) {
      vm->serial_read = dup_field_fd(serial, "readFd");
      vm->serial_write = dup_field_fd(serial, "writeFd");
      if (vm->serial_read < 0 || vm->serial_write < 0) {
        if (vm->serial_read >= 0) close(vm->serial_read);
        if (vm->serial_write >= 0) close(vm->serial_write);
        free(vm);
        return err("NSPOSIXErrorDomain", EBADF, "serialPorts: a file descriptor is not open");
      }
    }
  }
  vm->socket = field_true(config_json, "socket");
  vm->balloon = field_true(config_json, "memoryBalloon");
  field_num(config_json, "memorySize", &vm->memory);
  char type[32];
  const char *plat = field(config_json, "platform");
  vm->mac = plat && field_str(plat, "type", type, sizeof type) && !strcmp(type, "mac");
  pthread_mutex_lock(&g_vm_mu);
  vm->handle = g_next_handle++;
  g_vms = realloc(g_vms, (g_vms_len + 1) * sizeof(Vm *));
  g_vms[g_vms_len++] = vm;
  pthread_mutex_unlock(&g_vm_mu);
  return givef("{\"ok\":true,\"handle\":%llu,\"saveRestore\":%s}", (unsigned long long)vm->handle,
               save_restore_json(config_json));
}

#define GET_VM(h)                                                              \
  Vm *vm = find_vm(h);                                                         \
  if (!vm || vm->released) return cove_err(COVE_VZ_ERR_NO_SUCH_HANDLE, "no such VM handle");

char *cove_vz_release(uint64_t h) {
  GET_VM(h);
  join_guest(vm);
  pthread_mutex_lock(&vm->mu);
  vm->install_cancel = 1;
  pthread_mutex_unlock(&vm->mu);
  while (1) { /* as the shim: cancel an install and wait until it has ended */
    pthread_mutex_lock(&vm->mu);
    int busy = vm->installing || vm->install_thread;
    pthread_mutex_unlock(&vm->mu);
    if (!busy) break;
    sleep_ms(2);
  }
  pthread_mutex_lock(&vm->mu);
  if (strcmp(vm->state, "stopped")) set_state_locked(vm, "stopped");
  vm->released = 1;
  if (vm->serial_read >= 0) close(vm->serial_read);
  if (vm->serial_write >= 0) close(vm->serial_write);
  vm->serial_read = vm->serial_write = -1;
  /* As the shim: descriptors still queued are closed and their events dropped. */
  Event **link = &vm->head;
  vm->tail = NULL;
  while (*link) {
    Event *e = *link;
    if (e->fd >= 0) {
      close(e->fd);
      *link = e->next;
      free(e->json);
      free(e);
    } else {
      vm->tail = e;
      link = &e->next;
    }
  }
  pthread_cond_broadcast(&vm->cv);
  pthread_mutex_unlock(&vm->mu);
  return ok();
}

char *cove_vz_state(uint64_t h) {
  GET_VM(h);
  pthread_mutex_lock(&vm->mu);
  const char *s = vm->state;
  int stopped = !strcmp(s, "stopped") || !strcmp(s, "error");
  int running = !strcmp(s, "running");
  int paused = !strcmp(s, "paused");
  char *out = givef(
      "{\"ok\":true,\"state\":\"%s\",\"canStart\":%s,\"canStop\":%s,\"canPause\":%s,"
      "\"canResume\":%s,\"canRequestStop\":%s}",
      s, stopped ? "true" : "false", (running || paused) ? "true" : "false", running ? "true" : "false",
      paused ? "true" : "false", running ? "true" : "false");
  pthread_mutex_unlock(&vm->mu);
  return out;
}

static char *transition_error(void) {
  return vz_err(4, "Invalid virtual machine state transition.");
}

char *cove_vz_start(uint64_t h, const char *options_json) {
  GET_VM(h);
  if (options_json && *options_json && !json_ok(options_json))
    return cove_err(COVE_VZ_ERR_BAD_REQUEST, "options: not a JSON object");
  /* As the shim: recoveryOS start options on a non-mac platform would raise in VZ. */
  if (options_json && strstr(options_json, "\"recovery\":true") && !vm->mac)
    return cove_err(COVE_VZ_ERR_BAD_REQUEST, "options.recovery: recoveryOS needs a macOS guest (a mac platform)");
  /* As the shim and VZ: provisioning needs a mac platform, and
   * setGuestProvisioning(_:) refuses an empty user name (40002) or password
   * (40003) with a VZErrorDomain error. */
  if (options_json && strstr(options_json, "\"provisioning\":{")) {
    if (!vm->mac)
      return cove_err(COVE_VZ_ERR_BAD_REQUEST,
                      "options.provisioning: guest provisioning needs a macOS guest (a mac platform)");
    if (strstr(options_json, "\"username\":\"\""))
      return vz_err(40002, "The username for guest provisioning is invalid.");
    if (strstr(options_json, "\"password\":\"\""))
      return vz_err(40003, "The password for guest provisioning is invalid.");
  }
  pthread_mutex_lock(&vm->mu);
  if (strcmp(vm->state, "stopped") && strcmp(vm->state, "error")) {
    pthread_mutex_unlock(&vm->mu);
    return transition_error();
  }
  set_state_locked(vm, "starting");
  pthread_mutex_unlock(&vm->mu);
  sleep_ms(20); /* booting takes a while; callers must not block their loop */
  set_state(vm, "running");
  start_guest(vm);
  return ok();
}

char *cove_vz_request_stop(uint64_t h) {
  GET_VM(h);
  pthread_mutex_lock(&vm->mu);
  if (strcmp(vm->state, "running")) {
    pthread_mutex_unlock(&vm->mu);
    return vz_err(3, "Invalid virtual machine state.");
  }
  vm->stop_requested = 1;
  pthread_mutex_unlock(&vm->mu);
  return ok();
}

char *cove_vz_stop(uint64_t h) {
  GET_VM(h);
  pthread_mutex_lock(&vm->mu);
  if (strcmp(vm->state, "running") && strcmp(vm->state, "paused")) {
    pthread_mutex_unlock(&vm->mu);
    return transition_error();
  }
  set_state_locked(vm, "stopping");
  pthread_mutex_unlock(&vm->mu);
  join_guest(vm);
  set_state(vm, "stopped");
  return ok();
}

static char *move_state(Vm *vm, const char *from, const char *via, const char *to) {
  pthread_mutex_lock(&vm->mu);
  if (strcmp(vm->state, from)) {
    pthread_mutex_unlock(&vm->mu);
    return transition_error();
  }
  set_state_locked(vm, via);
  pthread_mutex_unlock(&vm->mu);
  sleep_ms(5);
  set_state(vm, to);
  return ok();
}

char *cove_vz_pause(uint64_t h) {
  GET_VM(h);
  return move_state(vm, "running", "pausing", "paused");
}

char *cove_vz_resume(uint64_t h) {
  GET_VM(h);
  return move_state(vm, "paused", "resuming", "running");
}

static const char STATE_MAGIC[] = "cove-double saved state v1\n";

char *cove_vz_save(uint64_t h, const char *path) {
  GET_VM(h);
  if (!in_state(vm, "paused")) return transition_error();
  set_state(vm, "saving");
  int fd = path ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600) : -1;
  if (fd < 0) {
    set_state(vm, "paused");
    return vz_err(11, "Failed to save the virtual machine state.");
  }
  write_all(fd, STATE_MAGIC, strlen(STATE_MAGIC));
  close(fd);
  set_state(vm, "paused");
  return ok();
}

char *cove_vz_restore(uint64_t h, const char *path) {
  GET_VM(h);
  if (!in_state(vm, "stopped")) return transition_error();
  char buf[64] = {0};
  int fd = path ? open(path, O_RDONLY) : -1;
  ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
  if (fd >= 0) close(fd);
  if (n < 0 || strcmp(buf, STATE_MAGIC)) return vz_err(12, "Failed to restore the virtual machine state.");
  set_state(vm, "restoring");
  sleep_ms(5);
  set_state(vm, "paused");
  start_guest(vm);
  return ok();
}

char *cove_vz_set_balloon_target(uint64_t h, uint64_t bytes) {
  GET_VM(h);
  if (!vm->balloon) return cove_err(COVE_VZ_ERR_BAD_REQUEST, "the VM has no memory balloon device");
  uint64_t mib = 1024 * 1024;
  uint64_t target = bytes / mib * mib;
  if ((double)target > vm->memory) target = (uint64_t)vm->memory;
  return givef("{\"ok\":true,\"targetMemorySize\":%llu}", (unsigned long long)target);
}

/* ---- vsock ----------------------------------------------------------- */

static void *echo_main(void *arg) {
  int fd = (int)(intptr_t)arg;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    write_all(fd, buf, (size_t)n);
  }
  close(fd);
  return NULL;
}

char *cove_vz_vsock_connect(uint64_t h, uint32_t port) {
  GET_VM(h);
  if (!vm->socket) return cove_err(COVE_VZ_ERR_BAD_REQUEST, "the VM has no socket device");
  if (!in_state(vm, "running")) return vz_err(3, "Invalid virtual machine state.");
  if (port < 1024) return err("NSPOSIXErrorDomain", 61, "Connection refused");
  if (port >= NOBODY_LISTENS_PORT) { /* VZ never answers: the shim's bounded wait ends */
    sleep_ms(DOUBLE_VSOCK_TIMEOUT_MS);
    return cove_err(COVE_VZ_ERR_TIMEOUT, "connecting to vsock port did not finish in time");
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return err("NSPOSIXErrorDomain", errno, strerror(errno));
  cloexec_pair(sv);
  pthread_t t;
  pthread_create(&t, NULL, echo_main, (void *)(intptr_t)sv[1]);
  pthread_detach(t);
  return givef("{\"ok\":true,\"fd\":%d,\"sourcePort\":%u,\"destinationPort\":%u}", sv[0], 49152u + port % 1000,
               port);
}

char *cove_vz_vsock_listen(uint64_t h, uint32_t port) {
  GET_VM(h);
  if (!vm->socket) return cove_err(COVE_VZ_ERR_BAD_REQUEST, "the VM has no socket device");
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return err("NSPOSIXErrorDomain", errno, strerror(errno));
  cloexec_pair(sv);
  char hello[64];
  int n = snprintf(hello, sizeof hello, "hello from guest port %u\n", port);
  write_all(sv[1], hello, (size_t)n);
  close(sv[1]);
  push_event_fd(vm, sv[0], "{\"type\":\"vsock-connection\",\"port\":%u,\"sourcePort\":%u,\"fd\":%d}", port, 700u, sv[0]);
  return ok();
}

char *cove_vz_vsock_unlisten(uint64_t h, uint32_t port) {
  (void)port;
  GET_VM(h);
  if (!vm->socket) return cove_err(COVE_VZ_ERR_BAD_REQUEST, "the VM has no socket device");
  return ok();
}

/* ---- events ---------------------------------------------------------- */

char *cove_vz_next_event(uint64_t h, int32_t timeout_ms) {
  Vm *vm = find_vm(h);
  if (!vm) return cove_err(COVE_VZ_ERR_NO_SUCH_HANDLE, "no such VM handle");
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  int64_t ns = deadline.tv_nsec + (int64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000LL;
  deadline.tv_sec += ns / 1000000000LL;
  deadline.tv_nsec = ns % 1000000000LL;
  pthread_mutex_lock(&vm->mu);
  while (!vm->head && !vm->released && timeout_ms > 0) {
    if (pthread_cond_timedwait(&vm->cv, &vm->mu, &deadline) == ETIMEDOUT) break;
  }
  Event *e = vm->head;
  if (e) {
    vm->head = e->next;
    if (!vm->head) vm->tail = NULL;
  }
  int closed = vm->released && !vm->head;
  pthread_mutex_unlock(&vm->mu);
  if (!e) return givef("{\"ok\":true,\"event\":null,\"closed\":%s}", closed ? "true" : "false");
  char *out = givef("{\"ok\":true,\"event\":%s,\"closed\":false}", e->json);
  free(e->json);
  free(e);
  return out;
}

/* ---- install --------------------------------------------------------- */

static void *install_main(void *arg) {
  Vm *vm = arg;
  int cancelled = 0;
  for (int i = 1; i <= 10 && !cancelled; i++) {
    sleep_ms(5);
    pthread_mutex_lock(&vm->mu);
    cancelled = vm->install_cancel;
    pthread_mutex_unlock(&vm->mu);
    if (!cancelled) push_event(vm, "{\"type\":\"install-progress\",\"fraction\":%.1f}", i / 10.0);
  }
  /* The VM is free for another install before anyone can see the final event. */
  pthread_mutex_lock(&vm->mu);
  vm->installing = 0;
  pthread_mutex_unlock(&vm->mu);
  if (cancelled)
    push_event(vm, "{\"type\":\"install-failed\",\"error\":{\"domain\":\"VZErrorDomain\",\"code\":9,"
                   "\"message\":\"The operation was cancelled.\"}}");
  else
    push_event(vm, "{\"type\":\"install-finished\"}");
  pthread_mutex_lock(&vm->mu);
  vm->install_thread = 0;
  pthread_mutex_unlock(&vm->mu);
  return NULL;
}

char *cove_vz_install_macos(uint64_t h, const char *ipsw_path) {
  GET_VM(h);
  if (!vm->mac) return cove_err(COVE_VZ_ERR_BAD_REQUEST, "installing macOS needs a mac platform");
  struct stat st;
  if (!ipsw_path || stat(ipsw_path, &st) != 0 || !S_ISREG(st.st_mode)) /* as the shim, before VZ */
    return cove_err(COVE_VZ_ERR_IO, "ipsw_path: not a file");
  pthread_mutex_lock(&vm->mu);
  if (vm->installing || strcmp(vm->state, "stopped")) {
    pthread_mutex_unlock(&vm->mu);
    return vz_err(3, "Invalid virtual machine state.");
  }
  vm->installing = 1;
  vm->install_thread = 1;
  vm->install_cancel = 0;
  pthread_mutex_unlock(&vm->mu);
  pthread_t t;
  pthread_create(&t, NULL, install_main, vm);
  pthread_detach(t);
  return ok();
}

char *cove_vz_install_cancel(uint64_t h) {
  GET_VM(h);
  pthread_mutex_lock(&vm->mu);
  vm->install_cancel = 1;
  pthread_mutex_unlock(&vm->mu);
  return ok();
}

/* ---- GUI ------------------------------------------------------------- */

char *cove_vz_show_window(uint64_t h, const char *options_json) {
  (void)options_json;
  GET_VM(h);
  return give("{\"ok\":true,\"window\":false}");
}

int32_t cove_vz_pump(int32_t timeout_ms) {
  (void)timeout_ms;
  return 0;
}
