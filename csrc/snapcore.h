/*
 * snapcore.h - the contract between the C shim and Python.
 *
 * This file is both the C header and cffi's cdef: build_shim.py feeds it to
 * ffibuilder.cdef() after dropping the preprocessor lines, so keep it to plain
 * declarations (no macros, no inline code).
 *
 * Rules of the shim:
 *   - one job per function, thin wrappers over the syscalls;
 *   - every function returns >= 0 on success or -errno on failure;
 *   - no printing, no policy, nothing left allocated for the caller to free.
 * Python (snapcore/_native.py) turns -errno into typed exceptions.
 */
#ifndef SNAPCORE_SHIM_H
#define SNAPCORE_SHIM_H
#include <stdint.h>
#include <stddef.h>

/* Bumped whenever this contract changes; checked by snapcore/_native.py. */
int sc_abi_version(void);

/* ---- ptrace ------------------------------------------------------------ */
int sc_seize(int tid, unsigned long options);
int sc_interrupt(int tid);
int sc_detach(int tid, int sig);
int sc_cont(int tid, int sig);
int sc_singlestep(int tid, int sig);
int sc_setoptions(int tid, unsigned long options);
int sc_geteventmsg(int tid, unsigned long *msg);
/* PTRACE_GETREGSET: returns the number of bytes the kernel filled. */
long sc_getregset(int tid, unsigned int note_type, void *buf, size_t len);
long sc_setregset(int tid, unsigned int note_type, const void *buf, size_t len);
/*
 * What a core needs of each of n stopped tracees, in one call (Python's lock is
 * released meanwhile, so it overlaps other work of snapcore's).  For tids[i],
 * facts[i * SC_THREAD_FACTS ...] gets, from /proc/PID/task/TID/status, State
 * (the letter's code), SigPnd and SigBlk, and from .../stat, utime and stime
 * (fields 14 and 15), each as enum sc_fact places it; then PTRACE_GETREGSET of
 * each of the ntypes regsets goes into regbuf[i * slot_len ...], back to back,
 * at most caps[j] bytes each, and reglens[i * ntypes + j] is what regset j got:
 * bytes, or -errno.  A file that cannot be read gets its -errno in
 * SC_STATUS_ERR or SC_STAT_ERR; one whose fields are not found, -EBADMSG (the
 * caller reads and parses it itself).  Returns 0, or -EINVAL.
 */
enum sc_fact {
    SC_STATUS_ERR, SC_STAT_ERR, SC_STATE, SC_SIGPND, SC_SIGBLK, SC_UTIME, SC_STIME,
    SC_THREAD_FACTS
};
long sc_read_threads(int pid, const int *tids, int n, const unsigned int *types,
                     const size_t *caps, int ntypes, int64_t *facts, char *regbuf,
                     size_t slot_len, long *reglens);
/*
 * Small /proc files of many threads, in one call (Python's lock released): for
 * each tid in turn and each of the nnames names (back to back in names, each
 * ending in NUL), /proc/PID/task/TID/NAME is read with one read() into buf, the
 * files back to back.  lens[i * nnames + j] is that file's length, or -errno, or
 * -EFBIG when it filled the max_file bytes it was given (the caller reads that
 * one itself).  A tid is begun only while nnames * max_file bytes of buf remain.
 * Returns the number of tids done (the caller calls again for the rest), or
 * -EINVAL.
 */
long sc_read_task_files(int pid, const int *tids, int ntids, const char *names,
                        int nnames, char *buf, size_t bufsize, size_t max_file,
                        long *lens);
/* buf must hold 128 bytes (siginfo_t). */
int sc_getsiginfo(int tid, void *buf);
int sc_setsiginfo(int tid, const void *buf);

/*
 * Wait for ptrace events of several tracees, each with waitpid(tid, __WALL).
 * statuses[i] must be SC_WAIT_PENDING on entry for every tid still awaited;
 * on return it holds a waitpid()-style status, or SC_WAIT_GONE when the tid is
 * no longer ours to wait for (ECHILD).  The exit of `noreap_pid` is observed
 * with WNOWAIT and left for its real parent to reap.
 * Returns how many tids are still pending when timeout_ms expired (0 = all
 * reported), or -errno.  timeout_ms 0 makes one non-blocking pass.
 */
enum { SC_WAIT_PENDING = -1, SC_WAIT_GONE = -2 };
int sc_wait_many(const int *tids, int *statuses, int n, int timeout_ms, int noreap_pid);

/* ---- memory ------------------------------------------------------------ */
/* process_vm_readv of n remote ranges into one local buffer (batched by IOV_MAX). */
long sc_readv(int pid, const uint64_t *remote_addrs, const uint64_t *remote_lens,
              size_t n, void *local, size_t local_len);
/* One pread(2); used on /proc/PID/mem (FOLL_FORCE) and backing files. */
long sc_pread(int fd, void *buf, size_t len, uint64_t offset);

/* One page run that PAGEMAP_SCAN reported (the kernel's struct page_region). */
struct sc_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;       /* SC_PAGE_IS_* */
};

enum {
    SC_PAGE_IS_PRESENT = 8,    /* include/uapi/linux/fs.h PAGE_IS_PRESENT */
    SC_PAGE_IS_SWAPPED = 16,
    SC_PAGE_IS_PFNZERO = 32    /* mapped to the shared zero page: reads as zeros */
};

/* One PAGEMAP_SCAN ioctl (Linux 6.7+) on /proc/PID/pagemap over [start, end):
 * up to cap runs of pages that are present or swapped, in address order, with
 * their categories.  *walk_end is where the walk stopped (it may stop before
 * end when out is full: call again from there).  Returns the number of runs,
 * or -errno (-ENOTTY/-EINVAL: the kernel has no PAGEMAP_SCAN). */
long sc_pagemap_scan(int pagemap_fd, uint64_t start, uint64_t end, struct sc_region *out,
                     size_t cap, uint64_t *walk_end);

/* One dumped range: copy [vaddr, vaddr+len) to out_fd at file_off. */
struct sc_seg {
    uint64_t vaddr;
    uint64_t len;
    uint64_t file_off;
    uint64_t backing_off;   /* file offset that vaddr maps, when backing_fd >= 0 */
    int32_t  backing_fd;    /* file to read non-resident pages from, or -1 */
    uint32_t flags;         /* SC_SEG_* */
};

enum {
    SC_SEG_RESIDENT_ONLY = 1,  /* consult pagemap; non-resident pages become holes
                                  (or come from backing_fd) and are never faulted in */
    SC_SEG_FORCE_MEM     = 2,  /* read via /proc/PID/mem only (PROT_NONE, x-only) */
    SC_SEG_FAULT_ABSENT  = 4,  /* non-resident pages with no backing_fd: read them
                                  from the target anyway (file-backed private VMAs) */
    SC_SEG_BACKING_ONLY  = 8   /* every byte comes from backing_fd (live mode: memory
                                  copied aside while the target was frozen) */
};

/* A range of the target that could not be read; it is a hole in the core. */
struct sc_bad {
    uint64_t addr;
    uint64_t len;
    int32_t  err;              /* errno of the last attempt */
    int32_t  pad;
};

struct sc_copy_stats {
    uint64_t bytes_done;       /* bytes of segments processed (progress) */
    uint64_t bytes_read;       /* read from the target */
    uint64_t bytes_from_file;  /* read from backing files */
    uint64_t bytes_written;    /* non-zero data written to the core */
    uint64_t bytes_absent;     /* non-resident pages skipped */
    uint64_t bytes_zero;       /* read, all zero, left as holes */
    uint64_t bytes_unreadable;
    uint64_t n_bad;            /* entries stored in bad[] */
    uint64_t n_bad_total;      /* entries that would have been stored */
    uint64_t readv_calls;
    uint64_t mem_reads;
    uint64_t scan_calls;
    uint64_t read_ns;          /* reading the target and backing files (reader) */
    uint64_t write_ns;         /* zero scan and writes (writer) */
    uint64_t scan_ns;          /* asking pagemap which pages are resident (reader) */
    uint64_t wait_ns;          /* the reader waiting for a free buffer (write-bound) */
    int32_t  cancel;           /* set to 1 from another thread to stop early */
    int32_t  pad;
};

struct sc_copy_ctx {
    int      pid;
    int      mem_fd;           /* /proc/PID/mem, or -1 */
    int      pagemap_fd;       /* /proc/PID/pagemap, or -1 */
    int      out_fd;
    int      scan_mode;        /* 2 PAGEMAP_SCAN, 1 pagemap reads, 0 none; lowered on ENOTTY */
    int      readv_ok;         /* 1 until process_vm_readv proves unusable */
    uint64_t bufsize;          /* bytes per read buffer (rounded to pages) */
    int      nbufs;            /* buffers in the reader -> writer ring (0: 2) */
    int      writer_thread;    /* 1: overlap reads and writes with a second thread */
    int      sequential;       /* 1: out_fd is a stream (pipe): write every byte in
                                  order, zeros included, starting at stream_pos */
    uint64_t stream_pos;       /* sequential mode: file offset of the next byte
                                  out_fd expects; updated as the copy goes */
};

/* Copy the segments; returns 0, -ECANCELED, -ESRCH (the target is gone), or
 * -errno of a fatal write error.  Resident runs are packed into batches of up
 * to bufsize bytes and IOV_MAX runs, each read with one process_vm_readv; the
 * writer takes whole batches from a ring of nbufs buffers. */
long sc_copy(struct sc_copy_ctx *ctx, const struct sc_seg *segs, size_t nsegs,
             struct sc_copy_stats *stats, struct sc_bad *bad, size_t bad_cap);

/* Write n zero bytes to a stream (sequential sinks). */
long sc_write_zeros(int fd, uint64_t n);

/* ---- cpu --------------------------------------------------------------- */
/* CPUID leaf/subleaf into out[0..3] = eax, ebx, ecx, edx. */
int sc_cpuid(unsigned int leaf, unsigned int subleaf, uint32_t *out);

#endif
