// The emulator's runtime (kernels/emu/emu.h): guarded allocations, the fiber scheduler that runs a
// block's threads, and the C interface the Rust side calls (src/backend/cuda/emu.rs).
//
// Scheduling. A block's threads are fibers with their own stacks. The scheduler makes
// passes over them; in a pass every runnable fiber runs until it waits (at __syncthreads or a warp
// collective) or finishes. The order of a pass is the threads' index order by default; a GPU runs
// them in no fixed order, so reading within a barrier interval what a lower-numbered thread wrote
// would always work here. DYDIFF_EMU_ORDER=reverse runs each pass in reverse index order and
// DYDIFF_EMU_ORDER=random[:SEED] in a seeded random order per pass and block, so that such a race
// shows (CI runs the kernel tests in both; dydiff_emu_set_order sets it for the calling thread).
// Between passes it releases what can go on: the block barrier once every thread waits there; a
// warp collective once every lane of its mask has deposited at one with the same kind and mask
// (each released lane gets its own copy of the deposits). A pass that neither runs nor releases
// anything is a deadlock, reported with what each thread waits for.
//
// Memory. Every allocation is the end of a mapping between two inaccessible pages, its start 16-byte
// aligned. The bytes between its end and the upper guard page (fewer than 16) and those before its
// start hold a canary, checked after each launch in every allocation a pointer argument points
// into. A fault inside a launch is caught (SIGSEGV/SIGBUS, on an alternate stack) and reported
// with the kernel, block, thread and the nearest allocation.
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "emu.h"
#include "registry.h"

extern "C" const emu::Kernel* dydiff_emu_find(const char* name);
extern "C" void* dydiff_emu_alloc(size_t bytes);
extern "C" int dydiff_emu_free(void* p);

namespace emu {
namespace {

constexpr unsigned char kCanary = 0xA5;
constexpr size_t kStackBytes = 512 * 1024;
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kMaxStaticShared = 48 * 1024;
constexpr unsigned kRegistersPerSm = 64 * 1024;

size_t page_size() {
  static const size_t p = size_t(sysconf(_SC_PAGESIZE));
  return p;
}

// ---------------------------------------------------------------- guarded allocations
struct Mapping {
  unsigned char* base;  // mapping start (lower guard page)
  size_t len;           // whole mapping
  unsigned char* start;  // the allocation
  size_t bytes;
};

std::mutex g_alloc_mutex;
std::map<uintptr_t, Mapping> g_allocs;  // by start

unsigned char* data_lo(const Mapping& m) { return m.base + page_size(); }
unsigned char* data_hi(const Mapping& m) { return m.base + m.len - page_size(); }

void restore_canary(const Mapping& m) {
  std::memset(data_lo(m), kCanary, size_t(m.start - data_lo(m)));
  std::memset(m.start + m.bytes, kCanary, size_t(data_hi(m) - m.start - m.bytes));
}

bool map_guarded(size_t bytes, Mapping* out) {
  size_t ps = page_size();
  size_t rounded = (bytes + 15) & ~size_t(15);
  size_t data = (rounded + ps - 1) / ps * ps;
  if (data == 0) data = ps;
  size_t len = data + 2 * ps;
  void* p = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return false;
  auto* base = static_cast<unsigned char*>(p);
  if (mprotect(base + ps, data, PROT_READ | PROT_WRITE) != 0) {
    munmap(p, len);
    return false;
  }
  Mapping m{base, len, nullptr, bytes};
  m.start = data_hi(m) - rounded;
  restore_canary(m);
  *out = m;
  return true;
}

// The first canary byte that changed, or null.
const unsigned char* broken_canary(const Mapping& m) {
  for (const unsigned char* p = data_lo(m); p < m.start; ++p)
    if (*p != kCanary) return p;
  for (const unsigned char* p = m.start + m.bytes; p < data_hi(m); ++p)
    if (*p != kCanary) return p;
  return nullptr;
}

// Where `addr` lies relative to the nearest allocation, in words.
std::string describe(uintptr_t addr) {
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  char buf[200];
  for (auto& [start, m] : g_allocs) {
    auto lo = uintptr_t(m.base), hi = uintptr_t(m.base + m.len);
    if (addr < lo || addr >= hi) continue;
    long off = long(addr) - long(start);
    std::snprintf(buf, sizeof buf, "byte %ld of an allocation of %zu bytes%s", off, m.bytes,
                  off < 0 ? " (before its start)" : size_t(off) >= m.bytes ? " (past its end)" : "");
    return buf;
  }
  return "outside every allocation";
}

// ---------------------------------------------------------------- fibers
enum class Wait { Run, Barrier, Warp, Done };

struct PendingCopy {
  void* dst;
  const void* src;
  size_t bytes, src_bytes;
  unsigned group;
};

struct Fiber {
  ucontext_t ctx;  // the first entry (makecontext: its own stack)
  jmp_buf jb;      // where it waits, once started
  bool started = false;
  std::vector<PendingCopy> pending;  // cp.async copies not yet carried out
  unsigned commits = 0;
  ThreadState ts;
  unsigned linear = 0;
  Wait wait = Wait::Run;
  unsigned warp_mask = 0;
  const char* warp_kind = nullptr;
  size_t deposit_bytes = 0;
  unsigned char deposit[kSlotBytes];
  unsigned char table[32 * kSlotBytes];
  unsigned char* stack = nullptr;  // lowest page is the guard
};

// The static shared memory of one declaration (DYDIFF_SHARED) in a launch.
struct StaticShared {
  const void* site;
  unsigned char* region;
  size_t bytes;
};

struct Launch {
  const Kernel* kernel = nullptr;
  void** args = nullptr;
  dim3 grid, block;
  unsigned char* shared = nullptr;
  size_t shared_bytes = 0;
  std::vector<StaticShared> statics;  // in the order the declarations were first reached
  size_t static_bytes = 0;
  size_t max_shared = 0;  // the device's shared memory per block
  unsigned long long block_serial = 0;
  unsigned threads = 0;
  std::vector<Fiber>* fibers = nullptr;
  jmp_buf sched;  // where the scheduler waits while a fiber runs
  Fiber* cur = nullptr;
  bool failed = false;
  std::string error;
  sigjmp_buf fault_jmp;
  uintptr_t fault_addr = 0;
};

// The order of a scheduler pass: 0 forward, 1 reverse, 2 random (seeded).
struct PassOrder {
  int mode = 0;
  unsigned long long seed = 0;
};

PassOrder order_from_env() {
  PassOrder o;
  const char* e = std::getenv("DYDIFF_EMU_ORDER");
  if (!e) return o;
  std::string v(e);
  if (v == "reverse") {
    o.mode = 1;
  } else if (v.rfind("random", 0) == 0) {
    o.mode = 2;
    if (v.size() > 7 && v[6] == ':') o.seed = std::strtoull(v.c_str() + 7, nullptr, 10);
  }
  return o;
}

thread_local bool g_order_set = false;
thread_local PassOrder g_order;

const PassOrder& pass_order() {
  static const PassOrder from_env = order_from_env();
  return g_order_set ? g_order : from_env;
}

// SplitMix64: the random pass order's generator.
unsigned long long splitmix(unsigned long long& x) {
  unsigned long long z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

thread_local Launch* g_launch = nullptr;
thread_local std::vector<Fiber>* g_pool = nullptr;  // reused fibers (and their stacks)

std::vector<Fiber>& fiber_pool(unsigned n) {
  if (!g_pool) g_pool = new std::vector<Fiber>();
  auto& pool = *g_pool;
  size_t ps = page_size();
  while (pool.size() < n) {
    pool.emplace_back();
    void* p = mmap(nullptr, kStackBytes + ps, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      pool.pop_back();
      break;
    }
    mprotect(p, ps, PROT_NONE);
    pool.back().stack = static_cast<unsigned char*>(p);
  }
  return pool;
}

std::string where(const Launch& L, const Fiber* f) {
  char buf[160];
  if (f)
    std::snprintf(buf, sizeof buf, "block (%u, %u, %u) thread (%u, %u, %u)", f->ts.block_idx.x,
                  f->ts.block_idx.y, f->ts.block_idx.z, f->ts.thread_idx.x, f->ts.thread_idx.y,
                  f->ts.thread_idx.z);
  else
    std::snprintf(buf, sizeof buf, "block (%u, %u, %u)", (*L.fibers)[0].ts.block_idx.x,
                  (*L.fibers)[0].ts.block_idx.y, (*L.fibers)[0].ts.block_idx.z);
  return buf;
}

void set_error(Launch& L, const Fiber* f, const std::string& what) {
  if (L.failed) return;
  L.failed = true;
  L.error = std::string("kernel ") + L.kernel->name + ": " + where(L, f) + ": " + what;
}

// Switches between the scheduler and a fiber with _setjmp/_longjmp (no system call; ucontext's
// swapcontext saves the signal mask on every switch) after a fiber's first entry by setcontext.
void yield() {
  Launch& L = *g_launch;
  if (_setjmp(L.cur->jb) == 0) _longjmp(L.sched, 1);
}

void fiber_main() {
  Launch& L = *g_launch;
  L.kernel->invoke(L.args);
  L.cur->wait = Wait::Done;
  _longjmp(L.sched, 1);  // never returns: the scheduler's frame is where it waits
}

// Runs fiber `f` until it waits or finishes. Not inlined: its frame holds the scheduler's
// jump buffer while the fiber runs on its own stack.
__attribute__((noinline)) void resume(Launch& L, Fiber& f) {
  if (_setjmp(L.sched) == 0) {
    if (!f.started) {
      f.started = true;
      setcontext(&f.ctx);
    }
    _longjmp(f.jb, 1);
  }
}

// Releases whatever can go on after a pass; false if nothing could.
bool release(Launch& L) {
  auto& fs = *L.fibers;
  unsigned n = L.threads;
  bool released = false;
  // warp collectives
  for (unsigned w0 = 0; w0 < n; w0 += 32) {
    unsigned lanes = std::min(32u, n - w0);
    for (unsigned l = 0; l < lanes; ++l) {
      Fiber& f = fs[w0 + l];
      if (f.wait != Wait::Warp) continue;
      unsigned mask = f.warp_mask;
      bool ready = true;
      for (unsigned m = 0; m < 32 && ready; ++m) {
        if (!(mask >> m & 1u)) continue;
        if (m >= lanes) {
          set_error(L, &f, std::string(f.warp_kind) + " with a mask naming lane " + std::to_string(m) +
                               ", which does not exist (the block has " + std::to_string(n) +
                               " threads)");
          return false;
        }
        Fiber& g = fs[w0 + m];
        if (g.wait == Wait::Done) {
          set_error(L, &f, std::string(f.warp_kind) + " waits for lane " + std::to_string(m) +
                               ", which has exited");
          return false;
        }
        if (g.wait != Wait::Warp || g.warp_mask != mask || std::strcmp(g.warp_kind, f.warp_kind) != 0)
          ready = false;
      }
      if (!ready) continue;
      for (unsigned m = 0; m < 32; ++m) {
        if (!(mask >> m & 1u)) continue;
        Fiber& g = fs[w0 + m];
        for (unsigned s = 0; s < 32; ++s)
          if (mask >> s & 1u)
            std::memcpy(g.table + s * kSlotBytes, fs[w0 + s].deposit, fs[w0 + s].deposit_bytes);
      }
      for (unsigned m = 0; m < 32; ++m)
        if (mask >> m & 1u) fs[w0 + m].wait = Wait::Run;
      released = true;
    }
  }
  // the block barrier
  unsigned at_barrier = 0, done = 0;
  for (unsigned i = 0; i < n; ++i) {
    at_barrier += fs[i].wait == Wait::Barrier;
    done += fs[i].wait == Wait::Done;
  }
  if (at_barrier > 0 && at_barrier + done == n) {
    if (done > 0) {
      const Fiber* exited = nullptr;
      for (unsigned i = 0; i < n && !exited; ++i)
        if (fs[i].wait == Wait::Done) exited = &fs[i];
      set_error(L, nullptr,
                std::to_string(at_barrier) + " of " + std::to_string(n) +
                    " threads wait at __syncthreads while " + std::to_string(done) +
                    " have exited (the first: thread (" + std::to_string(exited->ts.thread_idx.x) +
                    ", " + std::to_string(exited->ts.thread_idx.y) + ", " +
                    std::to_string(exited->ts.thread_idx.z) + "))");
      return false;
    }
    for (unsigned i = 0; i < n; ++i) fs[i].wait = Wait::Run;
    released = true;
  }
  return released;
}

void deadlock(Launch& L) {
  auto& fs = *L.fibers;
  unsigned bar = 0, warp = 0, done = 0;
  const Fiber* first_warp = nullptr;
  for (unsigned i = 0; i < L.threads; ++i) {
    bar += fs[i].wait == Wait::Barrier;
    done += fs[i].wait == Wait::Done;
    if (fs[i].wait == Wait::Warp) {
      ++warp;
      if (!first_warp) first_warp = &fs[i];
    }
  }
  char buf[300];
  std::snprintf(buf, sizeof buf,
                "deadlock: %u threads wait at __syncthreads, %u at warp collectives, %u have exited",
                bar, warp, done);
  std::string what = buf;
  if (first_warp) {
    std::snprintf(buf, sizeof buf, " (thread %u waits at %s with mask 0x%08x)", first_warp->linear,
                  first_warp->warp_kind, first_warp->warp_mask);
    what += buf;
  }
  set_error(L, nullptr, what);
}

// A fresh context for `f` that runs the kernel on its own stack. (Apart from the scheduler loop:
// getcontext "returns twice" as far as the compiler knows.)
__attribute__((noinline)) void start_context(Fiber& f) {
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack + page_size();
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_main, 0);
  f.started = false;
}

std::atomic<unsigned long long> g_block_serial{0};

void run_block(Launch& L, uint3 bidx) {
  auto& fs = *L.fibers;
  L.block_serial = ++g_block_serial;
  for (unsigned i = 0; i < L.threads; ++i) {
    Fiber& f = fs[i];
    unsigned x = i % L.block.x, y = i / L.block.x % L.block.y, z = i / (L.block.x * L.block.y);
    f.ts = ThreadState{{x, y, z}, bidx, L.block, L.grid, i % 32};
    f.linear = i;
    f.wait = Wait::Run;
    f.pending.clear();
    f.commits = 0;
    start_context(f);
  }
  if (L.shared) std::memset(L.shared, 0xff, L.shared_bytes);  // uninitialised: NaN
  const PassOrder& po = pass_order();
  std::vector<unsigned> order(L.threads);
  for (unsigned k = 0; k < L.threads; ++k) order[k] = po.mode == 1 ? L.threads - 1 - k : k;
  unsigned long long rng =
      po.seed ^ (0x632be59bd9b4e019ull * (1 + bidx.x + 65536ull * (bidx.y + 65536ull * bidx.z)));
  for (;;) {
    bool ran = false;
    if (po.mode == 2)  // a fresh permutation for every pass
      for (unsigned k = L.threads; k > 1; --k) std::swap(order[k - 1], order[splitmix(rng) % k]);
    for (unsigned i : order) {
      if (fs[i].wait != Wait::Run) continue;
      L.cur = &fs[i];
      resume(L, fs[i]);
      if (L.failed) return;
      ran = true;
    }
    unsigned done = 0;
    for (unsigned i = 0; i < L.threads; ++i) done += fs[i].wait == Wait::Done;
    if (done == L.threads) return;
    bool released = release(L);
    if (L.failed) return;
    if (!ran && !released) {
      deadlock(L);
      return;
    }
  }
}

// ---------------------------------------------------------------- faults
struct sigaction g_prev_segv, g_prev_bus;
std::once_flag g_handler_once;

void on_fault(int sig, siginfo_t* info, void* uc) {
  Launch* L = g_launch;
  if (L) {
    L->fault_addr = uintptr_t(info->si_addr);
    siglongjmp(L->fault_jmp, sig);
  }
  struct sigaction* prev = sig == SIGSEGV ? &g_prev_segv : &g_prev_bus;
  if (prev->sa_flags & SA_SIGINFO) {
    prev->sa_sigaction(sig, info, uc);
  } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
    prev->sa_handler(sig);
  } else {
    signal(sig, SIG_DFL);  // the faulting instruction runs again and ends the process
  }
}

void install_handler() {
  std::call_once(g_handler_once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
    sigaction(SIGBUS, &sa, &g_prev_bus);
  });
  // The handler runs on an alternate stack so that a fiber's stack overflow can be reported.
  stack_t cur;
  if (sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) {
    thread_local std::vector<unsigned char> alt(64 * 1024);
    stack_t ss{};
    ss.ss_sp = alt.data();
    ss.ss_size = alt.size();
    sigaltstack(&ss, nullptr);
  }
}

std::string fault_message(const Launch& L, int sig) {
  uintptr_t a = L.fault_addr;
  const Fiber* f = L.cur;
  size_t ps = page_size();
  if (f && a >= uintptr_t(f->stack) && a < uintptr_t(f->stack) + ps)
    return "stack overflow (each thread has " + std::to_string(kStackBytes / 1024) + " KiB)";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s at address 0x%zx: ", sig == SIGBUS ? "bus error" : "invalid access",
                size_t(a));
  return buf + describe(a);
}

}  // namespace

const ThreadState& self() { return g_launch->cur->ts; }

void* dynamic_shared() { return g_launch->shared; }

unsigned long long block_serial() { return g_launch->block_serial; }

void* static_shared(const void* site, size_t bytes) {
  Launch& L = *g_launch;
  unsigned char* region = nullptr;
  for (const StaticShared& s : L.statics)
    if (s.site == site) region = s.region;
  if (!region) {
    // the GPU's limits: 48 KiB of static shared memory, 227 KiB with the dynamic
    if (L.static_bytes + bytes > kMaxStaticShared ||
        L.static_bytes + bytes + L.shared_bytes > L.max_shared) {
      char buf[160];
      std::snprintf(buf, sizeof buf,
                    "%zu bytes of static shared memory with %zu dynamic: more than a block has "
                    "(%zu static, %zu in all)",
                    L.static_bytes + bytes, L.shared_bytes, kMaxStaticShared, L.max_shared);
      fail(buf);
    }
    region = static_cast<unsigned char*>(dydiff_emu_alloc(bytes ? bytes : 1));
    if (!region) fail("cannot map static shared memory");
    L.statics.push_back({site, region, bytes});
    L.static_bytes += bytes;
  }
  std::memset(region, 0xff, bytes);  // uninitialised: NaN
  return region;
}

void block_barrier() {
  g_launch->cur->wait = Wait::Barrier;
  yield();
}

const unsigned char* warp_exchange(unsigned mask, const void* in, size_t bytes, const char* kind) {
  Launch& L = *g_launch;
  Fiber& f = *L.cur;
  if (bytes > kSlotBytes) fail("a warp collective deposits more than 128 bytes per lane");
  if (!(mask >> f.ts.lane & 1u)) fail((std::string(kind) + " called by a lane outside its mask").c_str());
  if (bytes) std::memcpy(f.deposit, in, bytes);
  f.deposit_bytes = bytes;
  f.warp_mask = mask;
  f.warp_kind = kind;
  f.wait = Wait::Warp;
  yield();
  return f.table;
}

void async_copy(void* dst, const void* src, size_t bytes, size_t src_bytes) {
  Fiber& f = *g_launch->cur;
  f.pending.push_back(PendingCopy{dst, src, bytes, src_bytes, f.commits});
}

void async_commit() { ++g_launch->cur->commits; }

void async_wait(int n) {
  Fiber& f = *g_launch->cur;
  unsigned keep = unsigned(n) < f.commits ? f.commits - unsigned(n) : 0;  // groups < keep complete
  size_t w = 0;
  for (auto& c : f.pending) {
    if (c.group < keep) {
      std::memcpy(c.dst, c.src, c.src_bytes);
      std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
    } else {
      f.pending[w++] = c;
    }
  }
  f.pending.resize(w);
}

void fail(const char* what) {
  Launch& L = *g_launch;
  set_error(L, L.cur, what);
  L.cur->wait = Wait::Done;
  yield();  // the scheduler sees the failure and never resumes this fiber
  __builtin_unreachable();
}

}  // namespace emu

// ---------------------------------------------------------------- the C interface
namespace {
void write_error(char* err, size_t err_len, const std::string& msg) {
  if (!err || err_len == 0) return;
  size_t n = std::min(err_len - 1, msg.size());
  std::memcpy(err, msg.data(), n);
  err[n] = 0;
}
}  // namespace

extern "C" {

// A guarded allocation of `bytes` (16-byte aligned), or null.
void* dydiff_emu_alloc(size_t bytes) {
  emu::Mapping m;
  if (!emu::map_guarded(bytes, &m)) return nullptr;
  std::lock_guard<std::mutex> lock(emu::g_alloc_mutex);
  emu::g_allocs[uintptr_t(m.start)] = m;
  return m.start;
}

// Frees an allocation of dydiff_emu_alloc; 0, or -1 if `p` is not one.
int dydiff_emu_free(void* p) {
  emu::Mapping m;
  {
    std::lock_guard<std::mutex> lock(emu::g_alloc_mutex);
    auto it = emu::g_allocs.find(uintptr_t(p));
    if (it == emu::g_allocs.end()) return -1;
    m = it->second;
    emu::g_allocs.erase(it);
  }
  munmap(m.base, m.len);
  return 0;
}

// 1 if the emulator holds kernel `name`.
int dydiff_emu_has_kernel(const char* name) { return dydiff_emu_find(name) != nullptr; }

// Kernel `name`'s resource figures (registry.h; 0 where not known): its launch bounds' most
// threads, registers per thread, static shared bytes. 0 if there is no such kernel.
int dydiff_emu_resources(const char* name, unsigned out[3]) {
  const emu::Kernel* k = dydiff_emu_find(name);
  if (!k) return 0;
  out[0] = k->max_threads;
  out[1] = k->registers;
  out[2] = k->static_shared;
  return 1;
}

// The pass order of the launches of the calling thread: mode 0 forward, 1 reverse, 2 random with
// `seed`; mode -1 returns to DYDIFF_EMU_ORDER's.
void dydiff_emu_set_order(int mode, unsigned long long seed) {
  emu::g_order_set = mode >= 0;
  emu::g_order.mode = mode;
  emu::g_order.seed = seed;
}

// Runs kernel `name` on a grid of `grid` blocks of `block` threads with `shared_bytes` of dynamic
// shared memory on a device that gives a block `max_shared` bytes in all; `args[i]` points at the
// value of parameter i, `arg_sizes[i]` its size in bytes.
// 0 on success; otherwise non-zero with a one-line message in `err`.
int dydiff_emu_launch(const char* name, const unsigned grid[3], const unsigned block[3],
                      size_t shared_bytes, size_t max_shared, void** args, const size_t* arg_sizes,
                      size_t nargs, char* err, size_t err_len) {
  using namespace emu;
  const Kernel* k = dydiff_emu_find(name);
  char buf[256];
  if (!k) {
    write_error(err, err_len, std::string("no kernel named ") + name);
    return 1;
  }
  if (nargs != k->params) {
    std::snprintf(buf, sizeof buf, "kernel %s takes %zu arguments, the launch passed %zu", name,
                  k->params, nargs);
    write_error(err, err_len, buf);
    return 1;
  }
  for (size_t i = 0; i < nargs; ++i)
    if (arg_sizes[i] != k->param_sizes[i]) {
      std::snprintf(buf, sizeof buf,
                    "kernel %s: argument %zu is %zu bytes, the launch passed %zu bytes", name, i,
                    k->param_sizes[i], arg_sizes[i]);
      write_error(err, err_len, buf);
      return 1;
    }
  unsigned threads = block[0] * block[1] * block[2];
  if (threads == 0 || threads > kMaxThreads || block[2] > 64 || grid[0] == 0 || grid[1] == 0 ||
      grid[2] == 0 || grid[0] > 0x7fffffffu || grid[1] > 65535 || grid[2] > 65535 ||
      shared_bytes > max_shared) {
    std::snprintf(buf, sizeof buf,
                  "kernel %s: invalid launch: grid (%u, %u, %u), block (%u, %u, %u), %zu shared "
                  "bytes",
                  name, grid[0], grid[1], grid[2], block[0], block[1], block[2], shared_bytes);
    write_error(err, err_len, buf);
    return 1;
  }
  // what the GPU refuses: more threads than the kernel's launch bounds, more registers than an
  // SM has for the block (allocated per warp in units of 256, to warps in fours: one per
  // scheduler, as cuda_occupancy.h counts them), more shared memory than a block may have
  const unsigned warps = (threads + 127) / 128 * 4;
  const unsigned long long per_warp = (k->registers * 32ull + 255) / 256 * 256;
  if (k->max_threads && threads > k->max_threads) {
    std::snprintf(buf, sizeof buf,
                  "kernel %s: a block of %u threads, more than its __launch_bounds__ allow (%u)",
                  name, threads, k->max_threads);
    write_error(err, err_len, buf);
    return 1;
  }
  if (warps * per_warp > kRegistersPerSm) {
    std::snprintf(buf, sizeof buf,
                  "kernel %s: too many resources requested for launch: %u registers per thread × "
                  "%u threads need %llu of an SM's %u",
                  name, k->registers, threads, warps * per_warp, kRegistersPerSm);
    write_error(err, err_len, buf);
    return 1;
  }
  if (k->static_shared + shared_bytes > max_shared) {
    std::snprintf(buf, sizeof buf,
                  "kernel %s: %u bytes of static and %zu of dynamic shared memory, more than a "
                  "block may have (%zu)",
                  name, k->static_shared, shared_bytes, max_shared);
    write_error(err, err_len, buf);
    return 1;
  }
  auto& pool = fiber_pool(threads);
  if (pool.size() < threads) {
    write_error(err, err_len, std::string("kernel ") + name + ": cannot map the threads' stacks");
    return 1;
  }
  Launch L;
  L.kernel = k;
  L.args = args;
  L.grid = dim3(grid[0], grid[1], grid[2]);
  L.block = dim3(block[0], block[1], block[2]);
  L.threads = threads;
  L.fibers = &pool;
  L.shared_bytes = shared_bytes;
  L.max_shared = max_shared;
  if (shared_bytes) L.shared = static_cast<unsigned char*>(dydiff_emu_alloc(shared_bytes));
  install_handler();
  Launch* outer = g_launch;
  g_launch = &L;
  int sig = sigsetjmp(L.fault_jmp, 1);
  if (sig == 0) {
    for (unsigned z = 0; z < grid[2] && !L.failed; ++z)
      for (unsigned y = 0; y < grid[1] && !L.failed; ++y)
        for (unsigned x = 0; x < grid[0] && !L.failed; ++x) run_block(L, uint3{x, y, z});
  } else {
    set_error(L, L.cur, fault_message(L, sig));
  }
  g_launch = outer;
  {
    // shared memory written inside the slack before a guard page (16-byte rounding)
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    auto check = [&](const void* p, const char* what) {
      auto it = g_allocs.find(uintptr_t(p));
      if (L.failed || it == g_allocs.end() || !broken_canary(it->second)) return;
      std::snprintf(buf, sizeof buf, "kernel %s wrote past the end of its %s shared memory (%zu bytes)",
                    name, what, it->second.bytes);
      L.failed = true;
      L.error = buf;
      restore_canary(it->second);
    };
    if (L.shared) check(L.shared, "dynamic");
    for (const StaticShared& s : L.statics) check(s.region, "static");
  }
  if (L.shared) dydiff_emu_free(L.shared);
  for (const StaticShared& s : L.statics) dydiff_emu_free(s.region);
  if (!L.failed) {
    // The canaries of the allocations the kernel was given (a pointer argument anywhere inside).
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    for (size_t i = 0; i < nargs && !L.failed; ++i) {
      if (arg_sizes[i] != sizeof(void*)) continue;
      uintptr_t a;
      std::memcpy(&a, args[i], sizeof a);
      auto it = g_allocs.upper_bound(a);
      if (it == g_allocs.begin()) continue;
      const Mapping& m = (--it)->second;
      if (a > it->first + m.bytes) continue;
      if (const unsigned char* p = broken_canary(m)) {
        long off = long(p - m.start);
        std::snprintf(buf, sizeof buf,
                      "kernel %s wrote outside an allocation of %zu bytes (argument %zu): its byte "
                      "%ld (%s) changed",
                      name, m.bytes, i, off, off < 0 ? "before its start" : "past its end");
        L.failed = true;
        L.error = buf;
        restore_canary(m);
      }
    }
  }
  if (L.failed) {
    write_error(err, err_len, L.error);
    return 1;
  }
  return 0;
}

}  // extern "C"
