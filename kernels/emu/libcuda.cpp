// A stand-in for the CUDA driver library (`libcuda.so`) over the emulator, built by build.rs for
// tests only (never shipped, never a driver): with its folder on LD_LIBRARY_PATH, cudarc loads it
// in place of NVIDIA's, so that `src/backend/cuda/driver.rs` — contexts, streams, the module
// loaded from the embedded fatbin, launches, copies, events, stream capture and graphs — runs on
// a machine without a GPU, and runs the kernels on the emulator (docs/devices.md, "The stand-in
// driver").
//
// What it holds the caller to, as the driver does (each a driver error code; where the driver
// would go on silently or crash, also one line on stderr beginning "libcuda stand-in:"):
// - cuInit first; a current context for every call that needs one.
// - The image: a fatbin, 8-byte aligned, the very one the build embedded (its size and hash), with
//   machine code for sm_90 (the device it models: an H100's compute capability, shared memory and
//   registers); each kernel's parameters, registers, static shared memory and launch bounds read
//   from that cubin's `.nv.info` metadata, and its parameters checked against the emulator's
//   build of the same kernel.
// - Launches: the argument layout (kernelParams read at the cubin's sizes, or one packed buffer
//   whose size must be the kernel's parameter block), the block's threads against the launch
//   bounds and the SM's registers, dynamic shared memory against what the kernel was allowed
//   (48 KiB unless raised with cuFuncSetAttribute).
// - Streams run their work in order on a worker thread of their own, so that the host and the
//   device overlap as on a GPU; a synchronous copy (the legacy stream) that touches memory a
//   non-blocking stream's queued work may still use is a race and fails.
// - Stream capture: what each mode forbids (allocations and synchronous copies outside relaxed
//   mode; in every mode a free, synchronising the capturing stream or the context, and copies
//   between the capturing stream and pageable host memory) fails with the driver's code and
//   invalidates the capture, whose cuStreamEndCapture then fails.
// - Events with real timestamps (steady clock, taken when the worker reaches them).
// - Device memory between guard pages (the emulator's allocations); DYDIFF_STANDIN_MEMORY sets
//   the device's size in bytes (default 80 GiB) so that running out of it can be tested.
// - A kernel that fails (an access outside an allocation, a barrier not every thread reaches) is
//   sticky, as on a GPU: every later call returns its error.
// - DYDIFF_STANDIN_FAIL=NAME makes entry point NAME return CUDA_ERROR_UNKNOWN once (a fault to
//   test the caller's error paths).
//
// Exported: the cu* entry points below (a version script hides everything else, so the copy of
// the emulator inside this library and the one linked into the program do not meet).

#include <atomic>
#include <cstdarg>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "registry.h"

extern "C" const emu::Kernel* dydiff_emu_find(const char* name);
extern "C" void* dydiff_emu_alloc(size_t bytes);
extern "C" int dydiff_emu_free(void* p);
extern "C" int dydiff_emu_launch(const char* name, const unsigned grid[3], const unsigned block[3],
                                 size_t shared_bytes, size_t max_shared, void** args,
                                 const size_t* arg_sizes, size_t nargs, char* err, size_t err_len);

#ifndef DYDIFF_FATBIN_BYTES
#define DYDIFF_FATBIN_BYTES 0ull
#define DYDIFF_FATBIN_FNV 0ull
#endif

#define API extern "C" __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum : int {
  OK = 0,
  INVALID_VALUE = 1,
  OUT_OF_MEMORY = 2,
  NOT_INITIALIZED = 3,
  NO_DEVICE = 100,
  INVALID_DEVICE = 101,
  INVALID_IMAGE = 200,
  INVALID_CONTEXT = 201,
  NO_BINARY_FOR_GPU = 209,
  INVALID_HANDLE = 400,
  ILLEGAL_STATE = 401,
  NOT_FOUND = 500,
  NOT_READY = 600,
  ILLEGAL_ADDRESS = 700,
  LAUNCH_OUT_OF_RESOURCES = 701,
  LAUNCH_FAILED = 719,
  CAPTURE_UNSUPPORTED = 900,
  CAPTURE_INVALIDATED = 901,
  CAPTURED_EVENT = 907,
  CAPTURE_WRONG_THREAD = 908,
  UNKNOWN = 999,
};

namespace {

// ---------------------------------------------------------------- the device it models
constexpr int kComputeMajor = 9, kComputeMinor = 0;
constexpr unsigned kArch = 90;
constexpr size_t kMaxSharedOptin = 227 * 1024;  // an H100's opt-in shared memory per block
constexpr size_t kDefaultShared = 48 * 1024;    // without cuFuncSetAttribute
// what sm_90's `.nv.shared.NAME` sections hold beyond the kernel's own static shared memory: the
// 1 KiB each block reserves for the system (CUDA C++ Programming Guide, "Shared Memory",
// compute capability 9.0; build.rs subtracts it from cuobjdump's figures too)
constexpr unsigned kReservedShared = 1024;
constexpr unsigned kRegistersPerSm = 65536;
constexpr int kSmCount = 132;

void note(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void note(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "libcuda stand-in: %s\n", buf);
}

std::atomic<bool> g_init{false};
std::atomic<int> g_sticky{0};  // a failed kernel's error, returned by every later call

// DYDIFF_STANDIN_FAIL: the entry point that fails once.
bool injected(const char* name) {
  static std::mutex m;
  static std::string target = [] {
    const char* v = std::getenv("DYDIFF_STANDIN_FAIL");
    return std::string(v ? v : "");
  }();
  std::lock_guard<std::mutex> lock(m);
  if (target.empty() || target != name) return false;
  target.clear();
  return true;
}

// ---------------------------------------------------------------- memory
std::mutex g_mem;
std::map<uintptr_t, size_t> g_allocs;  // device allocations: start -> bytes
size_t g_used = 0;

size_t total_memory() {
  static size_t total = [] {
    const char* v = std::getenv("DYDIFF_STANDIN_MEMORY");
    unsigned long long n = v ? std::strtoull(v, nullptr, 10) : 0;
    return size_t(n ? n : 80ull << 30);
  }();
  return total;
}

// The allocation holding [p, p + bytes), as its start; 0 if there is none.
uintptr_t allocation_of(uintptr_t p, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mem);
  auto it = g_allocs.upper_bound(p);
  if (it == g_allocs.begin()) return 0;
  --it;
  if (p + bytes > it->first + it->second) return 0;
  return it->first;
}

// ---------------------------------------------------------------- modules and kernels
struct Param {
  unsigned offset, size;
};

struct Function {
  std::string name;
  const emu::Kernel* kernel = nullptr;  // the emulator's build of it
  std::vector<Param> params;            // by ordinal
  unsigned param_bytes = 0;             // the parameter block
  unsigned registers = 0, static_shared = 0, max_threads = 0;
  // the dynamic shared memory a launch may take: what is left of the default 48 KiB beside the
  // static, unless cuFuncSetAttribute raised it (set at load)
  std::atomic<size_t> allowed_shared{0};
};

struct Module {
  std::map<std::string, std::unique_ptr<Function>> functions;
};

uint64_t fnv1a(const unsigned char* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

template <typename T>
T read(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The kernels of a cubin (64-bit ELF): per kernel, from its `.nv.info.NAME` section the
// parameters (EIATTR_KPARAM_INFO), the parameter block (EIATTR_CBANK_PARAM_SIZE) and the launch
// bounds (EIATTR_MAX_THREADS); from `.nv.shared.NAME` its static shared memory (less the block's
// reserved 1 KiB the section includes on sm_90); from the global
// `.nv.info` its registers (EIATTR_REGCOUNT, by symbol). Empty string on success.
std::string parse_cubin(const unsigned char* e, size_t len, Module& m) {
  if (len < 64 || std::memcmp(e, "\x7f" "ELF", 4) != 0 || e[4] != 2) return "not a 64-bit ELF cubin";
  const uint64_t shoff = read<uint64_t>(e + 0x28);
  const unsigned shentsize = read<uint16_t>(e + 0x3a), shnum = read<uint16_t>(e + 0x3c),
                 shstrndx = read<uint16_t>(e + 0x3e);
  if (shentsize < 0x40 || shoff + uint64_t(shnum) * shentsize > len || shstrndx >= shnum) return "truncated cubin";
  struct Section {
    std::string name;
    uint32_t type;
    uint64_t offset, size;
    uint32_t link, info;
  };
  std::vector<Section> secs(shnum);
  for (unsigned i = 0; i < shnum; ++i) {
    const unsigned char* h = e + shoff + uint64_t(i) * shentsize;
    secs[i] = {"", read<uint32_t>(h + 4), read<uint64_t>(h + 0x18), read<uint64_t>(h + 0x20),
               read<uint32_t>(h + 0x28), read<uint32_t>(h + 0x2c)};
    if (secs[i].type != 8 && secs[i].offset + secs[i].size > len) return "truncated cubin section";
  }
  const Section& names = secs[shstrndx];
  for (unsigned i = 0; i < shnum; ++i) {
    const unsigned char* h = e + shoff + uint64_t(i) * shentsize;
    const uint32_t off = read<uint32_t>(h);
    if (off >= names.size) return "bad section name";
    secs[i].name = reinterpret_cast<const char*>(e + names.offset + off);
  }
  auto kernel = [&](const std::string& name) -> Function& {
    auto& f = m.functions[name];
    if (!f) {
      f.reset(new Function);
      f->name = name;
    }
    return *f;
  };
  // symbol names, for EIATTR_REGCOUNT
  std::vector<std::string> symbols;
  for (const Section& s : secs) {
    if (s.type != 2) continue;  // SHT_SYMTAB
    if (s.link >= secs.size()) return "bad symbol table";
    const Section& str = secs[s.link];
    for (uint64_t p = s.offset; p + 24 <= s.offset + s.size; p += 24)
      symbols.push_back(reinterpret_cast<const char*>(e + str.offset + read<uint32_t>(e + p)));
  }
  const std::string info = ".nv.info.", shared = ".nv.shared.";
  for (const Section& s : secs) {
    if (s.name.compare(0, shared.size(), shared) == 0 && s.name.find(".reserved") == std::string::npos) {
      kernel(s.name.substr(shared.size())).static_shared =
          s.size > kReservedShared ? unsigned(s.size) - kReservedShared : 0;
      continue;
    }
    const bool global = s.name == ".nv.info";
    if (!global && s.name.compare(0, info.size(), info) != 0) continue;
    Function* f = global ? nullptr : &kernel(s.name.substr(info.size()));
    for (uint64_t p = s.offset; p + 4 <= s.offset + s.size;) {
      const unsigned fmt = e[p], attr = e[p + 1];
      const unsigned char* v = e + p + 4;
      const unsigned vlen = fmt == 4 ? read<uint16_t>(e + p + 2) : 0;  // EIFMT_SVAL
      if (fmt == 4 && p + 4 + vlen > s.offset + s.size) return "truncated .nv.info";
      if (global && attr == 0x2f && vlen >= 8) {  // EIATTR_REGCOUNT: symbol, registers
        const uint32_t sym = read<uint32_t>(v);
        if (sym < symbols.size()) kernel(symbols[sym]).registers = read<uint32_t>(v + 4);
      } else if (f && attr == 0x17 && vlen >= 12) {  // EIATTR_KPARAM_INFO
        const unsigned ordinal = read<uint16_t>(v + 4), offset = read<uint16_t>(v + 6);
        const unsigned size = (read<uint32_t>(v + 8) >> 18) & 0x3fff;
        if (f->params.size() <= ordinal) f->params.resize(ordinal + 1, Param{0, 0});
        f->params[ordinal] = Param{offset, size};
      } else if (f && attr == 0x19) {  // EIATTR_CBANK_PARAM_SIZE (a half-word value)
        f->param_bytes = read<uint16_t>(e + p + 2);
      } else if (f && attr == 0x05 && vlen >= 12) {  // EIATTR_MAX_THREADS: x, y, z
        f->max_threads = read<uint32_t>(v) * read<uint32_t>(v + 4) * read<uint32_t>(v + 8);
      }
      p += 4 + vlen;
    }
  }
  // a kernel is what has a `.text.NAME` section; drop the names that only shared memory named
  for (auto it = m.functions.begin(); it != m.functions.end();) {
    bool text = false;
    for (const Section& s : secs) text = text || s.name == ".text." + it->first;
    it = text ? std::next(it) : m.functions.erase(it);
  }
  return "";
}

// The fatbin's header (magic, version, header size, payload size) and its entries (kind 2: a
// cubin; then the architecture at byte 28 of the entry header), as nvcc writes them.
CUresult load_image(const void* image, Module& m) {
  const auto* b = static_cast<const unsigned char*>(image);
  if (reinterpret_cast<uintptr_t>(image) % 8 != 0) {
    note("cuModuleLoadData: the image at %p is not 8-byte aligned (a fatbin's header holds 8-byte fields)", image);
    return INVALID_VALUE;
  }
  if (read<uint32_t>(b) != 0xBA55ED50u) {
    note("cuModuleLoadData: the image is not a fatbin (it begins %02x %02x %02x %02x)", b[0], b[1], b[2], b[3]);
    return INVALID_IMAGE;
  }
  const size_t header = read<uint16_t>(b + 6), bytes = header + read<uint64_t>(b + 8);
  const uint64_t hash = bytes == DYDIFF_FATBIN_BYTES ? fnv1a(b, bytes) : 0;
  if (DYDIFF_FATBIN_BYTES && hash != DYDIFF_FATBIN_FNV) {
    note("cuModuleLoadData: the image (%zu bytes, FNV-1a %016llx) is not the fatbin this build embedded "
         "(%llu bytes, %016llx)",
         bytes, (unsigned long long)hash, DYDIFF_FATBIN_BYTES, DYDIFF_FATBIN_FNV);
    return INVALID_IMAGE;
  }
  const unsigned char* cubin = nullptr;
  size_t cubin_len = 0;
  for (size_t off = header; off + 32 <= bytes;) {
    const unsigned kind = read<uint16_t>(b + off);
    const size_t eh = read<uint32_t>(b + off + 4), payload = read<uint64_t>(b + off + 8);
    if (eh < 32) break;  // not an entry header
    if (kind == 2 && read<uint32_t>(b + off + 28) == kArch) {
      cubin = b + off + eh;
      cubin_len = payload;
    }
    off += eh + payload;
  }
  if (!cubin) {
    note("cuModuleLoadData: the fatbin holds no machine code for sm_%u (this stand-in runs no PTX)", kArch);
    return NO_BINARY_FOR_GPU;
  }
  std::string err = parse_cubin(cubin, cubin_len, m);
  if (!err.empty()) {
    note("cuModuleLoadData: sm_%u cubin: %s", kArch, err.c_str());
    return INVALID_IMAGE;
  }
  for (auto& [name, f] : m.functions) {
    f->kernel = dydiff_emu_find(name.c_str());
    if (!f->kernel) {
      note("cuModuleLoadData: kernel %s is not in the emulator's build", name.c_str());
      return INVALID_IMAGE;
    }
    bool same = f->kernel->params == f->params.size();
    for (size_t i = 0; same && i < f->params.size(); ++i) same = f->kernel->param_sizes[i] == f->params[i].size;
    if (!same) {
      note("cuModuleLoadData: kernel %s: the cubin's parameters differ from the emulator's build of it", name.c_str());
      return INVALID_IMAGE;
    }
    // the resources read from the cubin against build.rs's (cuobjdump's, the most over the
    // architectures; 0 where nvcc's figures were not read): a misread figure would disable a check
    const emu::Kernel& k = *f->kernel;
    const bool figures = f->registers > 0 && (!k.registers || f->registers <= k.registers) &&
                         (!k.registers || f->static_shared <= k.static_shared) &&
                         (!k.max_threads || f->max_threads == k.max_threads);
    if (!figures) {
      note("cuModuleLoadData: kernel %s: the cubin's resources (%u registers, %u static shared bytes, launch "
           "bounds %u) disagree with the build's (%u, %u, %u)",
           name.c_str(), f->registers, f->static_shared, f->max_threads, k.registers, k.static_shared,
           k.max_threads);
      return INVALID_IMAGE;
    }
    f->allowed_shared = f->static_shared < kDefaultShared ? kDefaultShared - f->static_shared : 0;
  }
  return OK;
}

// ---------------------------------------------------------------- streams, events, graphs
using Clock = std::chrono::steady_clock;

// An event: its flags, and the state its queued records mark (shared with them, so that an event
// may be destroyed while a record of it is still queued, as on a GPU).
struct EventState {
  std::mutex m;
  bool recorded = false, done = false, captured = false;
  unsigned long long record = 0;  // the latest record's number: an earlier one marks nothing
  Clock::time_point at;
};
struct Event {
  unsigned flags = 0;
  std::shared_ptr<EventState> state = std::make_shared<EventState>();
};

// One piece of queued work: what it does, and the allocations it may read or write.
struct Op {
  std::function<void()> run;
  std::vector<uintptr_t> touches;
};

struct Graph {
  std::vector<Op> ops;
};

enum { CAPTURE_GLOBAL = 0, CAPTURE_THREAD_LOCAL = 1, CAPTURE_RELAXED = 2 };

struct Stream {
  unsigned flags = 0;  // 1: non-blocking
  std::mutex m;
  std::condition_variable cv;
  std::deque<Op> queue;
  bool busy = false, stop = false;
  // the allocations that work queued since the host last synchronised with the stream touches
  std::set<uintptr_t> unsynced;
  std::thread worker;
  // stream capture
  bool capturing = false, invalidated = false;
  int mode = 0;
  std::thread::id capture_thread;
  std::unique_ptr<Graph> graph;

  Stream() {
    worker = std::thread([this] { work(); });
  }
  void work() {
    std::unique_lock<std::mutex> lock(m);
    for (;;) {
      cv.wait(lock, [this] { return stop || !queue.empty(); });
      if (queue.empty()) return;
      Op op = std::move(queue.front());
      queue.pop_front();
      busy = true;
      lock.unlock();
      if (!g_sticky.load()) op.run();
      lock.lock();
      busy = false;
      cv.notify_all();
    }
  }
  // Waits until the queued work is done (the host synchronises with the stream).
  void drain() {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [this] { return queue.empty() && !busy; });
    unsynced.clear();
  }
  bool unsynchronised(uintptr_t allocation) {
    std::lock_guard<std::mutex> lock(m);
    return unsynced.count(allocation) != 0;
  }
  ~Stream() {
    {
      std::lock_guard<std::mutex> lock(m);
      stop = true;
      cv.notify_all();
    }
    worker.join();
  }
};

struct Context {
  std::atomic<int> refs{0};
};

std::mutex g_streams_mutex;
std::map<Stream*, std::shared_ptr<Stream>> g_streams;  // by handle
Context g_context;
thread_local Context* t_current = nullptr;

CUresult need_context() {
  if (!g_init.load()) return NOT_INITIALIZED;
  if (int s = g_sticky.load()) return s;
  return t_current ? OK : INVALID_CONTEXT;
}

// The streams, each kept alive while the caller uses it (another thread may destroy its handle).
std::vector<std::shared_ptr<Stream>> streams() {
  std::lock_guard<std::mutex> lock(g_streams_mutex);
  std::vector<std::shared_ptr<Stream>> all;
  for (auto& entry : g_streams) all.push_back(entry.second);
  return all;
}

// What stream capture forbids: `call` by this thread. `unsafe`: a "potentially unsafe" call
// (forbidden while this thread captures outside relaxed mode, or any thread in global mode);
// otherwise one that conflicts with every capture (it synchronises the context). The captures it
// breaks are invalidated.
CUresult capture_rules(const char* call, bool unsafe) {
  CUresult r = OK;
  for (const auto& s : streams()) {
    std::lock_guard<std::mutex> lock(s->m);
    if (!s->capturing) continue;
    const bool mine = s->capture_thread == std::this_thread::get_id();
    const bool forbidden = !unsafe || (mine && s->mode != CAPTURE_RELAXED) || (!mine && s->mode == CAPTURE_GLOBAL);
    if (!forbidden) continue;
    static const char* modes[] = {"global", "thread-local", "relaxed"};
    note("%s while stream %p captures (%s mode): not permitted; the capture is invalidated", call,
         static_cast<void*>(s.get()), modes[s->mode]);
    s->invalidated = true;
    r = CAPTURE_UNSUPPORTED;
  }
  return r;
}

// Records `op` into `s`'s capture, or queues it (under one lock: a capture cannot begin between
// the two). Work sent to an invalidated capture is refused, as the driver does.
CUresult submit(Stream* s, Op op) {
  std::lock_guard<std::mutex> lock(s->m);
  if (s->capturing) {
    if (s->invalidated) return CAPTURE_INVALIDATED;
    s->graph->ops.push_back(std::move(op));
    return OK;
  }
  s->unsynced.insert(op.touches.begin(), op.touches.end());
  s->queue.push_back(std::move(op));
  s->cv.notify_all();
  return OK;
}

bool capturing(Stream* s) {
  std::lock_guard<std::mutex> lock(s->m);
  return s->capturing;
}

// A kernel's failure: sticky, as on a GPU, and said once on stderr.
void kernel_failed(const char* message) {
  // the emulator's words for an access outside memory (kernels/emu/emu.cpp)
  const bool address = std::strstr(message, "invalid access") || std::strstr(message, "outside an allocation") ||
                       std::strstr(message, "outside every allocation") || std::strstr(message, "past the end") ||
                       std::strstr(message, "past its end");
  int expected = 0;
  if (g_sticky.compare_exchange_strong(expected, address ? ILLEGAL_ADDRESS : LAUNCH_FAILED))
    note("%s", message);
}

// A synchronous copy's check: no work queued on a non-blocking stream since the host last
// synchronised with it touches `allocation` (the legacy stream does not wait for such work: on a
// GPU the copy races with it, whether or not it happens to have finished).
CUresult race_check(const char* call, uintptr_t allocation) {
  for (const auto& s : streams()) {
    if (!(s->flags & 1)) {
      s->drain();  // a blocking stream: the legacy stream waits for it
      continue;
    }
    if (s->unsynchronised(allocation)) {
      note("%s: touches an allocation that work queued on non-blocking stream %p uses, and the stream "
           "was not synchronised since: a race on a GPU",
           call, static_cast<void*>(s.get()));
      return ILLEGAL_STATE;
    }
  }
  return OK;
}

const char* error_string(CUresult r) {
  switch (r) {
    case OK: return "no error";
    case INVALID_VALUE: return "invalid argument";
    case OUT_OF_MEMORY: return "out of memory";
    case NOT_INITIALIZED: return "initialization error";
    case NO_DEVICE: return "no CUDA-capable device is detected";
    case INVALID_DEVICE: return "invalid device ordinal";
    case INVALID_IMAGE: return "device kernel image is invalid";
    case INVALID_CONTEXT: return "invalid device context";
    case NO_BINARY_FOR_GPU: return "no kernel image is available for execution on the device";
    case INVALID_HANDLE: return "invalid resource handle";
    case ILLEGAL_STATE: return "the operation cannot be performed in the present state";
    case NOT_FOUND: return "named symbol not found";
    case NOT_READY: return "device not ready";
    case ILLEGAL_ADDRESS: return "an illegal memory access was encountered";
    case LAUNCH_OUT_OF_RESOURCES: return "too many resources requested for launch";
    case LAUNCH_FAILED: return "unspecified launch failure";
    case CAPTURE_UNSUPPORTED: return "operation not permitted when stream is capturing";
    case CAPTURE_INVALIDATED: return "operation failed due to a previous error during capture";
    case CAPTURED_EVENT: return "operation not permitted on an event last recorded in a capturing stream";
    case CAPTURE_WRONG_THREAD: return "attempt to terminate a thread-local capture sequence from another thread";
    case UNKNOWN: return "unknown error";
    default: return nullptr;
  }
}

// The checks every query of the device makes: cuInit first, somewhere to write, device 0.
CUresult device_query(const void* out, CUdevice device) {
  if (!g_init.load()) return NOT_INITIALIZED;
  if (!out) return INVALID_VALUE;
  return device == 0 ? OK : INVALID_DEVICE;
}

}  // namespace

#define CHECK_FAULT(name) \
  if (injected(name)) return UNKNOWN
#define NEED_CONTEXT()                   \
  if (CUresult r_ = need_context(); r_) \
  return r_

// ---------------------------------------------------------------- initialisation and devices
API CUresult cuInit(unsigned flags) {
  CHECK_FAULT("cuInit");
  if (flags != 0) return INVALID_VALUE;
  g_init = true;
  return OK;
}

API CUresult cuDriverGetVersion(int* version) {
  CHECK_FAULT("cuDriverGetVersion");
  if (!version) return INVALID_VALUE;
  *version = 13000;
  return OK;
}

API CUresult cuDeviceGetCount(int* count) {
  CHECK_FAULT("cuDeviceGetCount");
  if (!g_init.load()) return NOT_INITIALIZED;
  if (!count) return INVALID_VALUE;
  *count = 1;
  return OK;
}

API CUresult cuDeviceGet(CUdevice* device, int ordinal) {
  CHECK_FAULT("cuDeviceGet");
  if (!g_init.load()) return NOT_INITIALIZED;
  if (!device) return INVALID_VALUE;
  if (ordinal != 0) return INVALID_DEVICE;
  *device = 0;
  return OK;
}

API CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice device) {
  CHECK_FAULT("cuDeviceGetAttribute");
  if (CUresult r = device_query(value, device)) return r;
  switch (attribute) {
    case 1: *value = 1024; return OK;                 // max threads per block
    case 8: *value = 48 * 1024; return OK;            // shared memory per block
    case 10: *value = 32; return OK;                  // warp size
    case 16: *value = kSmCount; return OK;            // multiprocessors
    case 75: *value = kComputeMajor; return OK;
    case 76: *value = kComputeMinor; return OK;
    case 81: *value = 228 * 1024; return OK;          // shared memory per multiprocessor
    case 82: *value = kRegistersPerSm; return OK;     // registers per multiprocessor
    case 97: *value = int(kMaxSharedOptin); return OK;  // opt-in shared memory per block
    case 115: *value = 0; return OK;                  // memory pools: not modelled
    default:
      note("cuDeviceGetAttribute: attribute %d is not modelled", attribute);
      return INVALID_VALUE;
  }
}

API CUresult cuDeviceGetName(char* name, int len, CUdevice device) {
  CHECK_FAULT("cuDeviceGetName");
  if (CUresult r = device_query(name, device)) return r;
  if (len <= 0) return INVALID_VALUE;
  std::snprintf(name, size_t(len), "dydiff stand-in driver (CPU emulator, sm_%u)", kArch);
  return OK;
}

API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice device) {
  CHECK_FAULT("cuDeviceTotalMem_v2");
  if (CUresult r = device_query(bytes, device)) return r;
  *bytes = total_memory();
  return OK;
}

API CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice device) {
  CHECK_FAULT("cuDeviceGetUuid_v2");
  if (CUresult r = device_query(uuid, device)) return r;
  static const char bytes[16] = {'d', 'y', 'd', 'i', 'f', 'f', '-', 's', 't', 'a', 'n', 'd', '-', 'i', 'n', '0'};
  std::memcpy(uuid, bytes, 16);
  return OK;
}

// ---------------------------------------------------------------- contexts
API CUresult cuDevicePrimaryCtxRetain(Context** ctx, CUdevice device) {
  CHECK_FAULT("cuDevicePrimaryCtxRetain");
  if (CUresult r = device_query(ctx, device)) return r;
  ++g_context.refs;
  *ctx = &g_context;
  return OK;
}

API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device) {
  CHECK_FAULT("cuDevicePrimaryCtxRelease_v2");
  if (!g_init.load()) return NOT_INITIALIZED;
  if (device != 0) return INVALID_DEVICE;
  if (g_context.refs == 0) return INVALID_CONTEXT;
  --g_context.refs;
  return OK;
}

API CUresult cuCtxGetCurrent(Context** ctx) {
  CHECK_FAULT("cuCtxGetCurrent");
  if (!g_init.load()) return NOT_INITIALIZED;
  if (!ctx) return INVALID_VALUE;
  *ctx = t_current;
  return OK;
}

API CUresult cuCtxSetCurrent(Context* ctx) {
  CHECK_FAULT("cuCtxSetCurrent");
  if (!g_init.load()) return NOT_INITIALIZED;
  if (ctx && ctx != &g_context) return INVALID_CONTEXT;
  t_current = ctx;
  return OK;
}

API CUresult cuCtxSynchronize() {
  CHECK_FAULT("cuCtxSynchronize");
  NEED_CONTEXT();
  if (CUresult r = capture_rules("cuCtxSynchronize", false)) return r;
  for (const auto& s : streams()) s->drain();
  return CUresult(g_sticky.load());
}

// ---------------------------------------------------------------- memory
API CUresult cuMemAlloc_v2(CUdeviceptr* ptr, size_t bytes) {
  CHECK_FAULT("cuMemAlloc_v2");
  NEED_CONTEXT();
  if (!ptr || bytes == 0) return INVALID_VALUE;
  if (CUresult r = capture_rules("cuMemAlloc_v2", true)) return r;
  {
    std::lock_guard<std::mutex> lock(g_mem);
    if (bytes > total_memory() - g_used) return OUT_OF_MEMORY;
    g_used += bytes;
  }
  void* p = dydiff_emu_alloc(bytes);
  std::lock_guard<std::mutex> lock(g_mem);
  if (!p) {
    g_used -= bytes;
    return OUT_OF_MEMORY;
  }
  g_allocs[uintptr_t(p)] = bytes;
  *ptr = CUdeviceptr(uintptr_t(p));
  return OK;
}

API CUresult cuMemFree_v2(CUdeviceptr ptr) {
  CHECK_FAULT("cuMemFree_v2");
  NEED_CONTEXT();
  // cuMemFree synchronises the context: it conflicts with every capture
  if (CUresult r = capture_rules("cuMemFree_v2", false)) return r;
  for (const auto& s : streams()) s->drain();
  {
    std::lock_guard<std::mutex> lock(g_mem);
    auto it = g_allocs.find(uintptr_t(ptr));
    if (it == g_allocs.end()) {
      note("cuMemFree_v2: %#llx is not an allocation", ptr);
      return INVALID_VALUE;
    }
    g_used -= it->second;
    g_allocs.erase(it);
  }
  dydiff_emu_free(reinterpret_cast<void*>(uintptr_t(ptr)));
  return OK;
}

API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
  CHECK_FAULT("cuMemGetInfo_v2");
  NEED_CONTEXT();
  if (!free_bytes || !total_bytes) return INVALID_VALUE;
  std::lock_guard<std::mutex> lock(g_mem);
  *total_bytes = total_memory();
  *free_bytes = total_memory() - g_used;
  return OK;
}

static CUresult device_range(const char* call, CUdeviceptr p, size_t bytes, uintptr_t* allocation) {
  *allocation = allocation_of(uintptr_t(p), bytes);
  if (!*allocation) {
    note("%s: [%#llx, +%zu bytes) is not inside a device allocation", call, p, bytes);
    return INVALID_VALUE;
  }
  return OK;
}

API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, Stream* s) {
  CHECK_FAULT("cuMemcpyHtoDAsync_v2");
  NEED_CONTEXT();
  if (!s) return INVALID_HANDLE;
  uintptr_t a;
  if (CUresult r = device_range("cuMemcpyHtoDAsync_v2", dst, bytes, &a)) return r;
  if (capturing(s)) {
    // host memory here is pageable (no cuMemHostAlloc): a graph cannot copy from it
    return capture_rules("cuMemcpyHtoDAsync_v2 (pageable host memory) on the capturing stream", false);
  }
  // from pageable memory the call returns once the source is staged
  auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                             static_cast<const unsigned char*>(src) + bytes);
  return submit(s, Op{[dst, staged] {
                        std::memcpy(reinterpret_cast<void*>(uintptr_t(dst)), staged->data(), staged->size());
                      },
                      {a}});
}

API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
  CHECK_FAULT("cuMemcpyDtoH_v2");
  NEED_CONTEXT();
  uintptr_t a;
  if (CUresult r = device_range("cuMemcpyDtoH_v2", src, bytes, &a)) return r;
  if (CUresult r = capture_rules("cuMemcpyDtoH_v2 (synchronous)", true)) return r;
  if (CUresult r = race_check("cuMemcpyDtoH_v2", a)) return r;
  std::memcpy(dst, reinterpret_cast<const void*>(uintptr_t(src)), bytes);
  return OK;
}

API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, Stream* s) {
  CHECK_FAULT("cuMemcpyDtoDAsync_v2");
  NEED_CONTEXT();
  if (!s) return INVALID_HANDLE;
  uintptr_t a, b;
  if (CUresult r = device_range("cuMemcpyDtoDAsync_v2 (destination)", dst, bytes, &a)) return r;
  if (CUresult r = device_range("cuMemcpyDtoDAsync_v2 (source)", src, bytes, &b)) return r;
  return submit(s, Op{[dst, src, bytes] {
                        std::memmove(reinterpret_cast<void*>(uintptr_t(dst)),
                                     reinterpret_cast<const void*>(uintptr_t(src)), bytes);
                      },
                      {a, b}});
}

// ---------------------------------------------------------------- modules and launches
API CUresult cuModuleLoadData(Module** module, const void* image) {
  CHECK_FAULT("cuModuleLoadData");
  NEED_CONTEXT();
  if (!module || !image) return INVALID_VALUE;
  auto m = std::make_unique<Module>();
  if (CUresult r = load_image(image, *m)) return r;
  *module = m.release();
  return OK;
}

API CUresult cuModuleGetFunction(Function** f, Module* module, const char* name) {
  CHECK_FAULT("cuModuleGetFunction");
  NEED_CONTEXT();
  if (!f || !module || !name) return INVALID_VALUE;
  auto it = module->functions.find(name);
  if (it == module->functions.end()) return NOT_FOUND;
  *f = it->second.get();
  return OK;
}

API CUresult cuFuncGetAttribute(int* value, int attribute, Function* f) {
  CHECK_FAULT("cuFuncGetAttribute");
  NEED_CONTEXT();
  if (!f) return INVALID_HANDLE;
  if (!value) return INVALID_VALUE;
  switch (attribute) {
    case 1: *value = int(f->static_shared); return OK;             // CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES
    case 8: *value = int(f->allowed_shared.load()); return OK;     // MAX_DYNAMIC_SHARED_SIZE_BYTES
    default:
      note("cuFuncGetAttribute: attribute %d is not modelled", attribute);
      return INVALID_VALUE;
  }
}

API CUresult cuFuncSetAttribute(Function* f, int attribute, int value) {
  CHECK_FAULT("cuFuncSetAttribute");
  NEED_CONTEXT();
  if (!f) return INVALID_HANDLE;
  if (attribute != 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    note("cuFuncSetAttribute: attribute %d is not modelled", attribute);
    return INVALID_VALUE;
  }
  if (value < 0 || f->static_shared + size_t(value) > kMaxSharedOptin) return INVALID_VALUE;
  f->allowed_shared = size_t(value);
  return OK;
}

API CUresult cuLaunchKernel(Function* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                            unsigned bz, unsigned shared, Stream* s, void** params, void** extra) {
  CHECK_FAULT("cuLaunchKernel");
  NEED_CONTEXT();
  if (!f) return INVALID_HANDLE;
  if (!s) return INVALID_HANDLE;
  const unsigned threads = bx * by * bz;
  if (!gx || !gy || !gz || !bx || !by || !bz || bx > 1024 || by > 1024 || bz > 64 || threads > 1024 ||
      gy > 65535 || gz > 65535) {
    note("cuLaunchKernel: %s: invalid shape: grid (%u, %u, %u), block (%u, %u, %u)", f->name.c_str(), gx, gy,
         gz, bx, by, bz);
    return INVALID_VALUE;
  }
  if (f->max_threads && threads > f->max_threads) {
    note("cuLaunchKernel: %s: %u threads per block, its launch bounds allow %u", f->name.c_str(), threads,
         f->max_threads);
    return INVALID_VALUE;
  }
  const unsigned long long per_warp = (f->registers * 32ull + 255) / 256 * 256;
  if ((threads + 127) / 128 * 4 * per_warp > kRegistersPerSm) {
    note("cuLaunchKernel: %s: %u registers × %u threads exceed an SM's registers", f->name.c_str(),
         f->registers, threads);
    return LAUNCH_OUT_OF_RESOURCES;
  }
  if (shared > f->allowed_shared.load()) {
    note("cuLaunchKernel: %s: %u bytes of dynamic shared memory, the kernel is allowed %zu "
         "(cuFuncSetAttribute raises it)",
         f->name.c_str(), shared, f->allowed_shared.load());
    return INVALID_VALUE;
  }
  // the arguments, copied now (the caller may reuse its values once the call returns)
  auto block = std::make_shared<std::vector<unsigned char>>(f->param_bytes);
  if (params && extra) {
    note("cuLaunchKernel: %s: give kernelParams or extra, not both", f->name.c_str());
    return INVALID_VALUE;
  }
  if (!params && !extra) {
    if (!f->params.empty()) {
      note("cuLaunchKernel: %s: no arguments for its %zu parameters", f->name.c_str(), f->params.size());
      return INVALID_VALUE;
    }
  } else if (params) {
    for (size_t i = 0; i < f->params.size(); ++i)
      std::memcpy(block->data() + f->params[i].offset, params[i], f->params[i].size);
  } else {
    const void* buffer = nullptr;
    size_t bytes = 0;
    bool have_size = false;
    for (size_t i = 0; extra[i] != nullptr; i += 2) {  // CU_LAUNCH_PARAM_END is 0
      const uintptr_t key = reinterpret_cast<uintptr_t>(extra[i]);
      if (key == 1) buffer = extra[i + 1];     // CU_LAUNCH_PARAM_BUFFER_POINTER
      else if (key == 2 && extra[i + 1]) {  // CU_LAUNCH_PARAM_BUFFER_SIZE
        bytes = *static_cast<const size_t*>(extra[i + 1]);
        have_size = true;
      } else
        return INVALID_VALUE;
    }
    if (!have_size || (bytes && !buffer) || bytes != f->param_bytes) {
      note("cuLaunchKernel: %s: an argument buffer of %zu bytes, the kernel's parameters take %u", f->name.c_str(),
           bytes, f->param_bytes);
      return INVALID_VALUE;
    }
    if (bytes) std::memcpy(block->data(), buffer, bytes);
  }
  // the allocations the arguments point into
  std::vector<uintptr_t> touches;
  for (const Param& p : f->params)
    if (p.size == 8) {
      const uintptr_t a = allocation_of(read<uint64_t>(block->data() + p.offset), 1);
      if (a) touches.push_back(a);
    }
  const Function* fn = f;
  const unsigned grid[3] = {gx, gy, gz}, dims[3] = {bx, by, bz};
  return submit(s, Op{[fn, block, grid = std::vector<unsigned>(grid, grid + 3), dims = std::vector<unsigned>(dims, dims + 3),
                shared] {
                 std::vector<void*> args;
                 std::vector<size_t> sizes;
                 for (const Param& p : fn->params) {
                   args.push_back(block->data() + p.offset);
                   sizes.push_back(p.size);
                 }
                 char err[512];
                 if (dydiff_emu_launch(fn->name.c_str(), grid.data(), dims.data(), shared, kMaxSharedOptin,
                                       args.data(), sizes.data(), args.size(), err, sizeof err))
                   kernel_failed(err);
               },
               touches});
}

// ---------------------------------------------------------------- streams
API CUresult cuStreamCreate(Stream** s, unsigned flags) {
  CHECK_FAULT("cuStreamCreate");
  NEED_CONTEXT();
  if (!s || flags > 1) return INVALID_VALUE;
  auto stream = std::make_shared<Stream>();
  stream->flags = flags;
  std::lock_guard<std::mutex> lock(g_streams_mutex);
  g_streams[stream.get()] = stream;
  *s = stream.get();
  return OK;
}

API CUresult cuStreamDestroy_v2(Stream* s) {
  CHECK_FAULT("cuStreamDestroy_v2");
  NEED_CONTEXT();
  if (!s) return INVALID_HANDLE;
  std::shared_ptr<Stream> stream;
  {
    std::lock_guard<std::mutex> lock(g_streams_mutex);
    auto it = g_streams.find(s);
    if (it == g_streams.end()) return INVALID_HANDLE;
    stream = std::move(it->second);
    g_streams.erase(it);
  }
  stream->drain();  // its work completes first, as on a GPU; the last holder ends its thread
  return OK;
}

API CUresult cuStreamSynchronize(Stream* s) {
  CHECK_FAULT("cuStreamSynchronize");
  NEED_CONTEXT();
  if (!s) return INVALID_HANDLE;
  if (capturing(s)) {
    std::lock_guard<std::mutex> lock(s->m);
    s->invalidated = true;
    note("cuStreamSynchronize on the capturing stream %p: not permitted; the capture is invalidated",
         static_cast<void*>(s));
    return CAPTURE_UNSUPPORTED;
  }
  s->drain();
  return CUresult(g_sticky.load());
}

API CUresult cuStreamBeginCapture_v2(Stream* s, int mode) {
  CHECK_FAULT("cuStreamBeginCapture_v2");
  NEED_CONTEXT();
  if (!s) return CAPTURE_UNSUPPORTED;  // the legacy stream cannot be captured
  if (mode < 0 || mode > 2) return INVALID_VALUE;
  std::lock_guard<std::mutex> lock(s->m);
  if (s->capturing) return ILLEGAL_STATE;
  s->capturing = true;
  s->invalidated = false;
  s->mode = mode;
  s->capture_thread = std::this_thread::get_id();
  s->graph = std::make_unique<Graph>();
  return OK;
}

API CUresult cuStreamIsCapturing(Stream* s, int* status) {
  CHECK_FAULT("cuStreamIsCapturing");
  NEED_CONTEXT();
  if (!s || !status) return INVALID_VALUE;
  std::lock_guard<std::mutex> lock(s->m);
  *status = !s->capturing ? 0 : s->invalidated ? 2 : 1;  // NONE, ACTIVE, INVALIDATED
  return OK;
}

API CUresult cuStreamEndCapture(Stream* s, Graph** graph) {
  CHECK_FAULT("cuStreamEndCapture");
  NEED_CONTEXT();
  if (!s || !graph) return INVALID_VALUE;
  std::lock_guard<std::mutex> lock(s->m);
  if (!s->capturing) return ILLEGAL_STATE;
  if (s->mode != CAPTURE_RELAXED && s->capture_thread != std::this_thread::get_id()) return CAPTURE_WRONG_THREAD;
  s->capturing = false;
  std::unique_ptr<Graph> g = std::move(s->graph);
  if (s->invalidated) {
    *graph = nullptr;
    return CAPTURE_INVALIDATED;
  }
  *graph = g.release();
  return OK;
}

// ---------------------------------------------------------------- graphs
API CUresult cuGraphInstantiateWithFlags(Graph** exec, Graph* graph, unsigned long long flags) {
  CHECK_FAULT("cuGraphInstantiateWithFlags");
  NEED_CONTEXT();
  if (!exec || !graph || flags != 0) return INVALID_VALUE;
  *exec = new Graph(*graph);
  return OK;
}

API CUresult cuGraphLaunch(Graph* exec, Stream* s) {
  CHECK_FAULT("cuGraphLaunch");
  NEED_CONTEXT();
  if (!exec) return INVALID_HANDLE;
  if (!s) return INVALID_HANDLE;
  // a graph's launches and copies use the allocations they were captured with: one freed since
  // is an invalid access when the graph runs
  for (const Op& op : exec->ops)
    for (uintptr_t a : op.touches)
      if (!allocation_of(a, 1)) {
        int expected = 0;
        if (g_sticky.compare_exchange_strong(expected, ILLEGAL_ADDRESS))
          note("cuGraphLaunch: the graph uses an allocation freed since its capture (%#llx)",
               (unsigned long long)a);
        return OK;  // the failure shows at the next call, as a kernel's does
      }
  for (const Op& op : exec->ops)
    if (CUresult r = submit(s, op)) return r;
  return OK;
}

API CUresult cuGraphExecDestroy(Graph* exec) {
  CHECK_FAULT("cuGraphExecDestroy");
  NEED_CONTEXT();
  if (!exec) return INVALID_HANDLE;
  delete exec;  // its queued launches hold their own copies
  return OK;
}

API CUresult cuGraphDestroy(Graph* graph) {
  CHECK_FAULT("cuGraphDestroy");
  NEED_CONTEXT();
  if (!graph) return INVALID_HANDLE;
  delete graph;
  return OK;
}

// ---------------------------------------------------------------- events
API CUresult cuEventCreate(Event** e, unsigned flags) {
  CHECK_FAULT("cuEventCreate");
  NEED_CONTEXT();
  if (!e || flags > 7) return INVALID_VALUE;
  *e = new Event;
  (*e)->flags = flags;
  return OK;
}

API CUresult cuEventDestroy_v2(Event* e) {
  CHECK_FAULT("cuEventDestroy_v2");
  NEED_CONTEXT();
  if (!e) return INVALID_HANDLE;
  delete e;
  return OK;
}

API CUresult cuEventRecord(Event* e, Stream* s) {
  CHECK_FAULT("cuEventRecord");
  NEED_CONTEXT();
  if (!e || !s) return INVALID_HANDLE;
  std::shared_ptr<EventState> st = e->state;
  if (capturing(s)) {
    // a record in a capture is no node of the graph (no CU_EVENT_RECORD_EXTERNAL): the event is
    // a captured one, usable only for dependencies inside the capture
    std::lock_guard<std::mutex> lock(st->m);
    st->recorded = true;
    st->captured = true;
    return OK;
  }
  unsigned long long number;
  {
    std::lock_guard<std::mutex> lock(st->m);
    st->recorded = true;
    st->done = false;
    st->captured = false;
    number = ++st->record;
  }
  return submit(s, Op{[st, number] {
                        std::lock_guard<std::mutex> lock(st->m);
                        if (st->record != number) return;  // recorded again since
                        st->at = Clock::now();
                        st->done = true;
                      },
                      {}});
}

API CUresult cuEventElapsedTime_v2(float* ms, Event* a, Event* b) {
  CHECK_FAULT("cuEventElapsedTime_v2");
  NEED_CONTEXT();
  if (!ms || !a || !b) return INVALID_HANDLE;
  if ((a->flags | b->flags) & 2) return INVALID_HANDLE;  // CU_EVENT_DISABLE_TIMING
  EventState *x = a->state.get(), *y = b->state.get();
  std::unique_lock<std::mutex> la(x->m, std::defer_lock), lb(y->m, std::defer_lock);
  if (x == y) la.lock();
  else std::lock(la, lb);
  if (x->captured || y->captured) return CAPTURED_EVENT;
  if (!x->recorded || !y->recorded) return INVALID_HANDLE;
  if (!x->done || !y->done) return NOT_READY;
  *ms = std::chrono::duration<float, std::milli>(y->at - x->at).count();
  return OK;
}

// ---------------------------------------------------------------- errors
API CUresult cuGetErrorString(CUresult r, const char** text) {
  CHECK_FAULT("cuGetErrorString");
  if (!text) return INVALID_VALUE;
  *text = error_string(r);
  return *text ? OK : INVALID_VALUE;
}

