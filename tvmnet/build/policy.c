/* tvmnet's thread policy, linked into every CPU model library (build/compiler.py: policy_object).
 *
 * 1. When the library is loaded, set TVM's pool variables unless already set (overwrite = 0),
 *    before the pool starts in that process: a board's RPC server gets them with the model.
 *    TVMNET_POLICY_ENV is filled in from core/threads.py: RUN_ENV.
 *
 * 2. Replace sched_yield in TVM's runtime (its PLT slot in libtvm_runtime) with a yield that
 *    sleeps once the CPU is contended. TVM's pool waits by calling sched_yield in a loop (workers
 *    between kernels, the main thread until the workers finish). Under Linux's EEVDF scheduler
 *    every yield pushes the caller's virtual deadline back by a slice, so a thread that yields
 *    many times queues behind a busy neighbour for tens of milliseconds: 1 run in 50 stalled
 *    40-120 ms (Zen 4, kernel 6.18). This yield calls sched_yield as before while yields return
 *    at once (an idle machine: nothing changes), and sleeps 1 us instead (a sleep keeps the
 *    thread's place) for HOLD_NS after a yield took longer than CONTENDED_NS (another task ran).
 *    TVMNET_YIELD=os keeps TVM's own yield. */
#define _GNU_SOURCE
#include <elf.h>
#include <link.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define CONTENDED_NS 1000000ull /* a yield this long ran another task: the CPU is contended */
#define HOLD_NS 50000000ull     /* then sleep rather than yield for this long */
#define SLEEP_NS 1000L          /* 1 us asked; the kernel's timer slack makes it about 50 us */

/* 1 when TVM's runtime yields through tvmnet_yield (read by tests) */
__attribute__((visibility("default"))) int tvmnet_yield_patched = 0;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static __thread uint64_t contended_until;

static int tvmnet_yield(void) {
  uint64_t t0 = now_ns();
  if (t0 >= contended_until) {
    sched_yield(); /* this library's own call: libc's */
    uint64_t t1 = now_ns();
    if (t1 - t0 > CONTENDED_NS) contended_until = t1 + HOLD_NS;
    return 0;
  }
  struct timespec t = {0, SLEEP_NS};
  nanosleep(&t, 0);
  return 0;
}

#if defined(__LP64__)
#define R_SYM ELF64_R_SYM
#else
#define R_SYM ELF32_R_SYM
#endif

static ElfW(Addr) absolute(ElfW(Addr) ptr, ElfW(Addr) base) { return ptr < base ? ptr + base : ptr; }

/* dl_iterate_phdr callback: point libtvm_runtime's PLT slot for sched_yield at tvmnet_yield */
static int patch_runtime(struct dl_phdr_info* info, size_t size, void* data) {
  (void)size;
  (void)data;
  if (!info->dlpi_name || !strstr(info->dlpi_name, "libtvm_runtime")) return 0;
  ElfW(Addr) base = info->dlpi_addr, relro = 0, relro_end = 0;
  const ElfW(Dyn)* dyn = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)* ph = &info->dlpi_phdr[i];
    if (ph->p_type == PT_DYNAMIC) dyn = (const ElfW(Dyn)*)(base + ph->p_vaddr);
    if (ph->p_type == PT_GNU_RELRO) relro = base + ph->p_vaddr, relro_end = relro + ph->p_memsz;
  }
  if (!dyn) return 1;
  ElfW(Addr) jmprel = 0, symtab = 0, strtab = 0;
  size_t relsz = 0;
  long kind = 0;
  for (; dyn->d_tag != DT_NULL; ++dyn) {
    if (dyn->d_tag == DT_JMPREL) jmprel = absolute(dyn->d_un.d_ptr, base);
    if (dyn->d_tag == DT_PLTRELSZ) relsz = dyn->d_un.d_val;
    if (dyn->d_tag == DT_SYMTAB) symtab = absolute(dyn->d_un.d_ptr, base);
    if (dyn->d_tag == DT_STRTAB) strtab = absolute(dyn->d_un.d_ptr, base);
    if (dyn->d_tag == DT_PLTREL) kind = (long)dyn->d_un.d_val;
  }
  if (!jmprel || !symtab || !strtab || kind != DT_RELA) return 1;
  const ElfW(Rela)* rel = (const ElfW(Rela)*)jmprel;
  for (size_t i = 0; i < relsz / sizeof(ElfW(Rela)); ++i) {
    const ElfW(Sym)* sym = (const ElfW(Sym)*)symtab + R_SYM(rel[i].r_info);
    if (strcmp((const char*)strtab + sym->st_name, "sched_yield") != 0) continue;
    void** slot = (void**)(base + rel[i].r_offset);
    int locked = (ElfW(Addr))slot >= relro && (ElfW(Addr))slot < relro_end;
    long page = sysconf(_SC_PAGESIZE);
    void* start = (void*)((uintptr_t)slot & ~(uintptr_t)(page - 1));
    if (locked && mprotect(start, (size_t)page, PROT_READ | PROT_WRITE) != 0) return 1;
    __atomic_store_n(slot, (void*)&tvmnet_yield, __ATOMIC_SEQ_CST);
    if (locked) mprotect(start, (size_t)page, PROT_READ);
    tvmnet_yield_patched = 1;
    return 1;
  }
  return 1;
}

__attribute__((constructor)) static void tvmnet_thread_policy(void) {
  TVMNET_POLICY_ENV
  const char* yield = getenv("TVMNET_YIELD");
  if (!yield || strcmp(yield, "os") != 0) dl_iterate_phdr(patch_runtime, 0);
}
