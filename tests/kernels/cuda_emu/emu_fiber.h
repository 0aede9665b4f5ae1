// The emulated CUDA threads of cuda_emu.h as fibers: every thread of a block is a fiber with a
// stack of its own, all on the OS thread that called launch, switched in user space where a
// thread waits (a barrier, a warp collective, an mbarrier, a named barrier). One OS thread per
// block replaced one per CUDA thread (a std::thread each, then a pool of them): waking the
// threads parked at a barrier through the kernel was most of an emulation run's time — more
// system time than user time on 2 cores, and worse when ctest runs two drivers at once.
//
// Scheduling: a fiber runs until it waits; then the first runnable fiber in a random order of
// the block's warps (and of the lanes within a warp) runs, so that one warp runs ahead as far as
// its waits let it while the others lag — a kernel that reads what another warp writes without a
// barrier between them, or overwrites what another warp still reads, shows it whenever the
// order puts the wrong warp first. The order is drawn again at every __syncthreads; where a
// phase of a barrier that only some warps meet at completes (an mbarrier, a named barrier) the
// order of the warps it releases and of the completing one is drawn again among the places they
// hold (release()); and a warp or a warpgroup drops to the end now and then (1 in 64 of its
// collectives). So in the kernels that run long without block barriers (the warp-specialized
// ones, whose consumer warpgroups and producer meet only at mbarriers and named barriers after
// their start) the order of the roles changes at every hand-over of a tile, not once per block.
// (Measured, default seed: in attn_bwd_ws the consumer warpgroup that passes a phase of its
// mbarriers first changed 100 times, in 41 of 73 blocks, against 11 times in 11 blocks when only
// __syncthreads and the 1-in-64 drops reordered; attn_fwd_ws*: 103 against 89.) All of it
// only orders the runnable fibers: which fibers are runnable, the report of a block whose
// threads wait for each other and ThreadSanitizer's edges stay as they were.
// xorshift, seeded per process: the same schedule on every run; CUDA_EMU_SEED=n picks another
// (one stream, drawn in the launch's own order). defer(): the fiber runs again only when
// no other can — where a thread's arrival completes a phase (mbarrier, named barrier) the
// released waiters run first, as a fast consumer could on the GPU; and the drivers' lagging
// warpgroup or producer. When nothing is runnable and a launch's threads have not all
// finished, they wait for each other: the launch prints where each waits and aborts, at once
// (a thread that skips a collective the others reach, a barrier phase that never completes).
//
// Thread-local state of an emulated thread: FiberLocal<T> (one T per fiber, indexed by the
// running fiber), not thread_local (one OS thread runs them all).
//
// Sanitizers: AddressSanitizer is told of every stack switch (__sanitizer_start_switch_fiber /
// finish); ThreadSanitizer sees each fiber as a thread (__tsan_create_fiber), switched without
// synchronisation, so that only the emulated barriers (an __tsan_release before the arrival, an
// __tsan_acquire after the release), the mutexes of the atomics and mbarriers, and a launch's
// start and end order two threads; the scheduler's own bookkeeping is hidden from it.
//
// The switch is a few lines of x86-64 assembly (callee-saved registers, MXCSR and the x87
// control word); elsewhere, or built with CUDA_EMU_UCONTEXT, swapcontext (slower: a system call
// per switch). Written 2026-11-28.
#pragma once
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <deque>
#include <vector>

#if !defined(__x86_64__) && !defined(CUDA_EMU_UCONTEXT)
#define CUDA_EMU_UCONTEXT 1
#endif
#ifdef CUDA_EMU_UCONTEXT
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define CUDA_EMU_TSAN 1
extern "C" void AnnotateIgnoreReadsBegin(const char* f, int l);
extern "C" void AnnotateIgnoreReadsEnd(const char* f, int l);
extern "C" void AnnotateIgnoreWritesBegin(const char* f, int l);
extern "C" void AnnotateIgnoreWritesEnd(const char* f, int l);
#endif

#ifndef CUDA_EMU_UCONTEXT
// emu_ctx_switch(save, to): pushes the callee-saved registers and the FP control words on the
// running stack, stores its stack pointer at *save, loads `to` and pops what it finds there. A new
// stack is laid out as if it had switched away just before emu_fiber_trampoline.
asm(R"(
  .pushsection .text
  .globl emu_ctx_switch
  .type emu_ctx_switch, @function
emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_ctx_switch, .-emu_ctx_switch
  .globl emu_fiber_trampoline
  .type emu_fiber_trampoline, @function
emu_fiber_trampoline:
  call emu_fiber_start
  ud2
  .size emu_fiber_trampoline, .-emu_fiber_trampoline
  .popsection
)");
extern "C" void emu_ctx_switch(void** save, void* to);
extern "C" void emu_fiber_trampoline();
#endif
extern "C" void emu_fiber_start();

namespace emu {

constexpr int kMaxFibers = 1024;       // threads per block (kMaxWarps · 32 in cuda_emu.h)
constexpr int kMain = kMaxFibers;      // the OS thread that launches, in the tables below
constexpr size_t kStackBytes = 1 << 20;  // per fiber, reserved, touched on demand; a guard page below

// Hides the scheduler's own reads and writes from ThreadSanitizer (they are not the kernel's;
// it would see every fiber touching the run queue without synchronisation). Synchronisation
// inside still counts.
struct TsanQuiet {
#ifdef CUDA_EMU_TSAN
  TsanQuiet() {
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
  }
  ~TsanQuiet() {
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  }
#endif
};
inline void tsan_release(void* p) {
#ifdef CUDA_EMU_TSAN
  __tsan_release(p);
#else
  (void)p;
#endif
}
inline void tsan_acquire(void* p) {
#ifdef CUDA_EMU_TSAN
  __tsan_acquire(p);
#else
  (void)p;
#endif
}

class Sched {
 public:
  Sched() {
    const char* s = std::getenv("CUDA_EMU_SEED");
    rng_ = 0x2545f4914f6cdd1dull ^ (s != nullptr ? std::strtoull(s, nullptr, 10) * 0x9e3779b97f4a7c15ull : 0);
    if (rng_ == 0) rng_ = 1;
    pthread_attr_t attr;
    void* lo = nullptr;
    size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attr) != 0 || pthread_attr_getstack(&attr, &lo, &size) != 0) {
      std::printf("emu: the launching thread's stack bounds are unknown\n");
      std::abort();
    }
    pthread_attr_destroy(&attr);
    fibers_[kMain].stack_lo = lo;
    fibers_[kMain].stack_size = size;
#ifdef CUDA_EMU_TSAN
    fibers_[kMain].tsan = __tsan_get_current_fiber();
#endif
  }
  // The running fiber (kMain outside a launch).
  int self() const { return cur_.load(std::memory_order_relaxed); }

  // Runs f(0) … f(n − 1), each on fiber i, and returns when all have returned; aborts with a
  // report of where each waits if they stop making progress first. From the launching thread.
  void run(int n, const std::function<void(int)>& f) {
    if (self() != kMain || n > kMaxFibers) {
      std::printf("emu: run(%d) from fiber %d\n", n, self());
      std::abort();
    }
    {
      TsanQuiet q;
      for (int i = created_; i < n; ++i) create(i);
      job_ = &f;
      n_ = remaining_ = n;
      draw_ranks();
      for (int i = 0; i < n; ++i) wake(i);
    }
    tsan_release(&job_);
    {
      TsanQuiet q;
      next();
    }
    tsan_acquire(&remaining_);
    TsanQuiet q;
    if (remaining_ != 0) {
      std::printf("emu: the block's threads wait for each other (%d of %d not finished):\n", remaining_, n);
      report_waiting(n);
      std::abort();
    }
    job_ = nullptr;
  }
  // The running fiber stops until woken (where: for the report if that never comes).
  void wait(const char* where) {
    TsanQuiet q;
    fibers_[self()].waiting = where;
    next();
    fibers_[self()].waiting = nullptr;
  }
  // Fiber i is runnable again, in its rank.
  void wake(int i) {
    TsanQuiet q;
    ready_[i / 32] |= 1u << lane_rank_[i % 32];
  }
  // Every fiber in ids runnable again; ids is cleared.
  void wake_all(std::vector<int>& ids) {
    for (int i : ids) wake(i);
    ids.clear();
  }
  // A phase of an mbarrier or a named barrier completed, releasing the fibers in ids (cleared):
  // they are runnable again, and the warps taking part (theirs and the running fiber's, the one
  // whose arrival or landed copy completed it) are ranked again in a random order among the
  // ranks they hold, the other warps keeping theirs. E.g. the 8 consumer warps released by a
  // tile's "full" barrier and the producer that filled it: which warpgroup runs ahead, and
  // whether the producer runs before or after them, is drawn again at every tile. (Only the
  // order changes: no fiber is made runnable that was not, nothing is synchronised.)
  void release(std::vector<int>& ids) {
    TsanQuiet q;
    static_assert(kMaxFibers / 32 <= 32, "a warp mask of 32 bits");
    uint32_t mask = self() == kMain ? 0u : 1u << (self() / 32);
    for (int i : ids) mask |= 1u << (i / 32);
    int w[32];
    uint64_t r[32];
    size_t n = 0;
    for (; mask != 0; mask &= mask - 1, ++n) {
      w[n] = __builtin_ctz(mask);
      r[n] = warp_rank_[w[n]];
    }
    shuffle(r, n);
    for (size_t k = 0; k < n; ++k) warp_rank_[w[k]] = r[k];
    wake_all(ids);
  }
  // The running fiber is runnable in its rank: the first runnable fiber runs, maybe this one.
  void requeue() {
    TsanQuiet q;
    wake(self());
    next();
  }
  // The running fiber runs again only when no other fiber can (after those deferred before it).
  void defer() {
    TsanQuiet q;
    deferred_.push_back(self());
    next();
  }
  // A barrier over the whole block completed: the warps' ranks are drawn again.
  void block_barrier_done() {
    TsanQuiet q;
    draw_ranks();
  }
  // A collective of fiber i's warp or warpgroup completed (i: the fiber that arrived last):
  // now and then (1 in 64) i's warp drops to the last rank, so that within a long stretch
  // without block barriers (the warp-specialized kernels have none after their start) the
  // order of the warps changes too. For a warpgroup that puts the whole group behind the other
  // warps: its next collective waits for the warp that dropped.
  void collective_done(int i) {
    TsanQuiet q;
    if (next_random() % 64 != 0) return;
    warp_rank_[i / 32] = ++top_warp_rank_;
  }

  // Entered on a fiber's own stack at its start (emu_fiber_start); never returns.
  [[noreturn]] void fiber_main() {
#ifdef CUDA_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    const int me = self();
    for (;;) {
      tsan_acquire(&job_);
      (*job_)(me);
      tsan_release(&remaining_);
      TsanQuiet q;
      --remaining_;
      fibers_[me].waiting = kFinished;
      next();  // resumed by the next run
      fibers_[me].waiting = nullptr;
    }
  }

 private:
  struct Fiber {
    void* sp = nullptr;
    void* stack_lo = nullptr;  // the usable stack (above the guard page)
    size_t stack_size = 0;
    void* asan_fake = nullptr;
    void* tsan = nullptr;
    const char* waiting = nullptr;
#ifdef CUDA_EMU_UCONTEXT
    ucontext_t uc;
#endif
  };
  static constexpr const char* kFinished = "(finished)";
  void create(int i) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED || mprotect(m, page, PROT_NONE) != 0) {
      std::printf("emu: no stack for fiber %d\n", i);
      std::abort();
    }
    Fiber& f = fibers_[i];
    f.stack_lo = static_cast<unsigned char*>(m) + page;
    f.stack_size = kStackBytes;
#ifdef CUDA_EMU_TSAN
    f.tsan = __tsan_create_fiber(0);
#endif
#ifdef CUDA_EMU_UCONTEXT
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.stack_lo;
    f.uc.uc_stack.ss_size = f.stack_size;
    f.uc.uc_link = nullptr;
    makecontext(&f.uc, emu_fiber_start, 0);
#else
    // As emu_ctx_switch leaves a stack: from sp up, MXCSR and the x87 control word, r15, r14,
    // r13, r12, rbx, rbp (all 0), then the return address (the trampoline), which is 8 mod 16 so
    // that the trampoline calls emu_fiber_start with the stack aligned as the ABI wants.
    auto* top = reinterpret_cast<uint64_t*>(static_cast<unsigned char*>(f.stack_lo) + f.stack_size);
    uint64_t* sp = top - 10;  // 80 bytes: the return address at top - 24
    uint32_t mxcsr = 0;
    uint16_t fpcw = 0;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpcw));
    for (int w = 0; w < 10; ++w) sp[w] = 0;
    sp[0] = mxcsr | (uint64_t{fpcw} << 32);
    sp[7] = reinterpret_cast<uint64_t>(&emu_fiber_trampoline);
    f.sp = sp;
#endif
    created_ = i + 1;
  }
  uint64_t next_random() {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return rng_;
  }
  template <class T>
  void shuffle(T* v, size_t n) {
    for (size_t i = n; i > 1; --i) std::swap(v[i - 1], v[next_random() % i]);
  }
  // The ranks: the warps in a random order, and within each the lanes in a random order (one
  // for all warps; the lanes of a warp meet at its collectives anyway). The first runnable
  // fiber in that order runs next: a warp runs ahead until it waits, and the one behind it
  // lags. ready_ keeps each warp's runnable lanes as bits at their lanes' ranks.
  void draw_ranks() {
    const int warps = (n_ + 31) / 32;
    uint8_t old_lane_of_rank[32];
    std::copy(lane_of_rank_, lane_of_rank_ + 32, old_lane_of_rank);
    int wo[kMaxFibers / 32];
    for (int w = 0; w < warps; ++w) wo[w] = w;
    shuffle(wo, static_cast<size_t>(warps));
    for (int w = 0; w < warps; ++w) warp_rank_[w] = static_cast<uint64_t>(wo[w]);
    top_warp_rank_ = static_cast<uint64_t>(warps);
    shuffle(lane_of_rank_, 32);
    for (int k = 0; k < 32; ++k) lane_rank_[lane_of_rank_[k]] = static_cast<uint8_t>(k);
    for (int w = 0; w < warps; ++w) {
      uint32_t m = 0;
      for (uint32_t old = ready_[w]; old != 0; old &= old - 1) m |= 1u << lane_rank_[old_lane_of_rank[__builtin_ctz(old)]];
      ready_[w] = m;
    }
  }
  // The running fiber has been queued, parked or finished: switch to the first runnable one,
  // or back to the launching thread when none is.
  void next() {
    int to = kMain, best = -1;
    for (int w = 0; w < (n_ + 31) / 32; ++w) {
      if (ready_[w] != 0 && (best < 0 || warp_rank_[w] < warp_rank_[best])) best = w;
    }
    if (best >= 0) {
      const int k = __builtin_ctz(ready_[best]);
      ready_[best] &= ready_[best] - 1;
      to = 32 * best + lane_of_rank_[k];
    } else if (!deferred_.empty()) {
      to = deferred_.front();
      deferred_.pop_front();
    }
    if (to != self()) switch_to(to);
  }
  void switch_to(int to) {
    Fiber& from = fibers_[self()];
    Fiber& t = fibers_[to];
    cur_.store(to, std::memory_order_relaxed);
#ifdef CUDA_EMU_ASAN
    __sanitizer_start_switch_fiber(&from.asan_fake, t.stack_lo, t.stack_size);
#endif
#ifdef CUDA_EMU_TSAN
    __tsan_switch_to_fiber(t.tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef CUDA_EMU_UCONTEXT
    swapcontext(&from.uc, &t.uc);
#else
    emu_ctx_switch(&from.sp, t.sp);
#endif
#ifdef CUDA_EMU_ASAN
    __sanitizer_finish_switch_fiber(from.asan_fake, nullptr, nullptr);
#endif
  }
  void report_waiting(int n) {
    for (int i = 0; i < n; ++i) {
      const char* w = fibers_[i].waiting;
      if (w == nullptr || w == kFinished) continue;
      int last = i;
      while (last + 1 < n && fibers_[last + 1].waiting == w) ++last;
      std::printf("  threads %d..%d: %s\n", i, last, w);
      i = last;
    }
  }

  std::atomic<int> cur_{kMain};
  Fiber fibers_[kMaxFibers + 1];
  int created_ = 0, remaining_ = 0, n_ = 0;
  const std::function<void(int)>* job_ = nullptr;
  uint32_t ready_[kMaxFibers / 32] = {};  // per warp: its runnable lanes, bit k = the lane of rank k
  uint64_t warp_rank_[kMaxFibers / 32] = {}, top_warp_rank_ = 0;
  uint8_t lane_rank_[32] = {}, lane_of_rank_[32] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                                    16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
  std::deque<int> deferred_;  // runnable only when no ranked fiber is, in the order deferred
  uint64_t rng_ = 1;
};
// Never destroyed: fibers may still be parked in it when the process exits.
inline Sched& sched() {
  static Sched* s = new Sched;
  return *s;
}

// One T per fiber (and one for the launching thread): what thread_local was for a std::thread.
template <class T>
class FiberLocal {
 public:
  explicit FiberLocal(T init = T{}) : v_(new T[kMaxFibers + 1]) {
    for (int i = 0; i <= kMaxFibers; ++i) v_[i] = init;
  }
  T& get() { return v_[sched().self()]; }

 private:
  std::unique_ptr<T[]> v_;
};

// A barrier over n fibers (std::barrier's arrive_and_wait): the completing arrival makes the
// waiters runnable and goes on; where names it in a report. A block barrier draws the warps'
// ranks again when it completes, a warp or warpgroup barrier may move the last arrival's warp
// to the last rank.
class Barrier {
 public:
  enum Kind { kBlock, kWarp, kWarpGroup, kOther };
  Barrier(int n, const char* where, Kind kind = kOther) : n_(n), kind_(kind), where_(where) { waiters_.reserve(n); }
  void arrive_and_wait() {
    TsanQuiet q;
    // ThreadSanitizer: the arrivals of phase k release into sync_[k % 2], its waiters acquire
    // from it. One object for every phase would let a waiter woken late acquire what the fibers
    // woken before it released at the next phase, and hide a missing barrier between the two.
    // Two are enough: phase k + 2 needs every waiter of phase k to have arrived at k + 1.
    const uint64_t phase = phase_;
    tsan_release(&sync_[phase % 2]);
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++phase_;
      if (kind_ == kBlock) sched().block_barrier_done();
      if (kind_ == kWarp || kind_ == kWarpGroup) sched().collective_done(sched().self());
      sched().wake_all(waiters_);
      sched().requeue();  // the completing thread too takes its place in the order
    } else {
      waiters_.push_back(sched().self());
      sched().wait(where_);
    }
    tsan_acquire(&sync_[phase % 2]);
  }

 private:
  int n_, arrived_ = 0;
  Kind kind_;
  const char* where_;
  uint64_t phase_ = 0;
  char sync_[2] = {};
  std::vector<int> waiters_;
};

}  // namespace emu

// Defined here (cuda_emu.h is included by one source file per driver): the trampoline calls it.
extern "C" __attribute__((used)) void emu_fiber_start() { emu::sched().fiber_main(); }
