/*
 * snapcore.c - the C shim: thin syscall wrappers and the bulk memory copy.
 *
 * See snapcore.h for the contract (>= 0 or -errno, no policy, no printing).
 * The only non-trivial code is sc_copy(), the loop that moves a target's
 * memory into the core file: it asks pagemap which pages are resident, reads
 * them with process_vm_readv (falling back to /proc/PID/mem, which uses
 * FOLL_FORCE and reads PROT_NONE memory as the kernel's dumper does), skips
 * all-zero pages so the core stays sparse, and pwrite()s the rest at their
 * file offsets.  Optionally a second thread does the zero scan and the writes
 * while the first one reads the next chunk.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "snapcore.h"

#define SC_ABI_VERSION 3
#define PAGE 4096ULL

int sc_abi_version(void) { return SC_ABI_VERSION; }

/* ---- ptrace ------------------------------------------------------------ */

static int ret_errno(long r) { return r < 0 ? -errno : (int)r; }

int sc_seize(int tid, unsigned long options)
{
    return ret_errno(ptrace(PTRACE_SEIZE, tid, 0, (void *)options));
}

int sc_interrupt(int tid) { return ret_errno(ptrace(PTRACE_INTERRUPT, tid, 0, 0)); }

int sc_detach(int tid, int sig)
{
    return ret_errno(ptrace(PTRACE_DETACH, tid, 0, (void *)(long)sig));
}

int sc_cont(int tid, int sig)
{
    return ret_errno(ptrace(PTRACE_CONT, tid, 0, (void *)(long)sig));
}

int sc_singlestep(int tid, int sig)
{
    return ret_errno(ptrace(PTRACE_SINGLESTEP, tid, 0, (void *)(long)sig));
}

int sc_setoptions(int tid, unsigned long options)
{
    return ret_errno(ptrace(PTRACE_SETOPTIONS, tid, 0, (void *)options));
}

int sc_geteventmsg(int tid, unsigned long *msg)
{
    return ret_errno(ptrace(PTRACE_GETEVENTMSG, tid, 0, msg));
}

long sc_getregset(int tid, unsigned int note_type, void *buf, size_t len)
{
    struct iovec iov = { buf, len };
    if (ptrace(PTRACE_GETREGSET, tid, (void *)(unsigned long)note_type, &iov) < 0)
        return -errno;
    return (long)iov.iov_len;
}

long sc_setregset(int tid, unsigned int note_type, const void *buf, size_t len)
{
    struct iovec iov = { (void *)buf, len };
    if (ptrace(PTRACE_SETREGSET, tid, (void *)(unsigned long)note_type, &iov) < 0)
        return -errno;
    return (long)iov.iov_len;
}

int sc_getsiginfo(int tid, void *buf)
{
    return ret_errno(ptrace(PTRACE_GETSIGINFO, tid, 0, buf));
}

int sc_setsiginfo(int tid, const void *buf)
{
    return ret_errno(ptrace(PTRACE_SETSIGINFO, tid, 0, (void *)buf));
}

/* ---- waiting ----------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* One non-blocking look at tid.  Returns 1 with *status set, 0 if nothing, -errno. */
static int wait_one(int tid, int *status, int noreap_pid)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    /* Peek first: the exit of a process we are also the parent of must not be
     * reaped here, or its real waiter (e.g. subprocess.Popen) loses it. */
    if (waitid(P_PID, (id_t)tid, &si, WEXITED | WSTOPPED | __WALL | WNOHANG | WNOWAIT) < 0)
        return -errno;
    if (si.si_pid == 0)
        return 0;
    switch (si.si_code) {
    case CLD_EXITED:
    case CLD_KILLED:
    case CLD_DUMPED:
        if (tid == noreap_pid) {
            *status = si.si_code == CLD_EXITED ? (si.si_status & 0xff) << 8
                                               : (si.si_status & 0x7f);
            return 1;
        }
        break;
    default:
        break;
    }
    int st = 0;
    pid_t r = waitpid(tid, &st, __WALL | WNOHANG);
    if (r < 0)
        return -errno;
    if (r == 0)
        return 0;
    *status = st;
    return 1;
}

int sc_wait_many(const int *tids, int *statuses, int n, int timeout_ms, int noreap_pid)
{
    uint64_t deadline = now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ULL;
    long nap_ns = 20000;                      /* 20 us, doubling up to 2 ms */
    for (;;) {
        int pending = 0, progressed = 0;
        for (int i = 0; i < n; i++) {
            if (statuses[i] != SC_WAIT_PENDING)
                continue;
            int st = 0;
            int r = wait_one(tids[i], &st, noreap_pid);
            if (r == -ECHILD || r == -ESRCH) {
                statuses[i] = SC_WAIT_GONE;
                progressed = 1;
            } else if (r < 0) {
                return r;
            } else if (r == 1) {
                statuses[i] = st;
                progressed = 1;
            } else {
                pending++;
            }
        }
        if (pending == 0 || now_ns() >= deadline)
            return pending;
        if (progressed) {
            nap_ns = 20000;
            continue;
        }
        struct timespec ts = { 0, nap_ns };
        nanosleep(&ts, NULL);
        if (nap_ns < 2000000)
            nap_ns *= 2;
    }
}

/* ---- memory ------------------------------------------------------------ */

long sc_readv(int pid, const uint64_t *remote_addrs, const uint64_t *remote_lens,
              size_t n, void *local, size_t local_len)
{
    struct iovec liov = { local, local_len };
    struct iovec riov[IOV_MAX];
    long total = 0;
    size_t i = 0;
    while (i < n) {
        size_t k = 0, want = 0;
        while (i + k < n && k < IOV_MAX) {
            riov[k].iov_base = (void *)(uintptr_t)remote_addrs[i + k];
            riov[k].iov_len = remote_lens[i + k];
            want += remote_lens[i + k];
            k++;
        }
        liov.iov_base = (char *)local + total;
        liov.iov_len = local_len - (size_t)total;
        ssize_t r = process_vm_readv(pid, &liov, 1, riov, k, 0);
        if (r < 0)
            return total > 0 ? total : -errno;
        total += r;
        if ((size_t)r < want)
            return total;                     /* partial: caller sees where it stopped */
        i += k;
    }
    return total;
}

long sc_pread(int fd, void *buf, size_t len, uint64_t offset)
{
    ssize_t r = pread(fd, buf, len, (off_t)offset);
    return r < 0 ? -errno : (long)r;
}

/* ---- residency: PAGEMAP_SCAN (Linux 6.7+) or /proc/PID/pagemap ------------ */

/* From include/uapi/linux/fs.h (6.7+); older build headers lack them. */
struct sc_page_region { uint64_t start, end, categories; };
struct sc_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define SC_PAGEMAP_SCAN _IOWR('f', 16, struct sc_pm_scan_arg)
#define SC_PAGE_IS_PRESENT (1ULL << 3)
#define SC_PAGE_IS_SWAPPED (1ULL << 4)
#define SC_PAGE_IS_PFNZERO (1ULL << 5)

enum { R_ABSENT = 0, R_RESIDENT = 1, R_ZEROPAGE = 2 };

/* Iterator over [start, end) yielding runs of one residency kind. */
struct resid_iter {
    struct sc_copy_ctx *ctx;
    struct sc_copy_stats *st;
    uint64_t pos, end;
    struct sc_page_region regs[512];
    int nregs, ri;
    uint64_t scanned_to;                      /* PAGEMAP_SCAN walked up to here */
    uint64_t pm[512];                         /* raw pagemap entries */
    uint64_t pm_base;
    int pm_n;
};

static void resid_init(struct resid_iter *it, struct sc_copy_ctx *ctx,
                       struct sc_copy_stats *st, uint64_t start, uint64_t end)
{
    memset(it, 0, sizeof *it);
    it->ctx = ctx;
    it->st = st;
    it->pos = start;
    it->end = end;
    it->scanned_to = start;
}

/* Next run via PAGEMAP_SCAN; 1 with a run, 0 at end, -errno. */
static int next_scan(struct resid_iter *it, uint64_t *a, uint64_t *b, int *kind)
{
    while (it->ri >= it->nregs) {
        if (it->scanned_to >= it->end) {
            if (it->pos < it->end) {          /* tail after the last resident region */
                *a = it->pos; *b = it->end; *kind = R_ABSENT;
                it->pos = it->end;
                return 1;
            }
            return 0;
        }
        struct sc_pm_scan_arg arg;
        memset(&arg, 0, sizeof arg);
        arg.size = sizeof arg;
        arg.start = it->scanned_to;
        arg.end = it->end;
        arg.vec = (uint64_t)(uintptr_t)it->regs;
        arg.vec_len = sizeof it->regs / sizeof it->regs[0];
        arg.category_anyof_mask = SC_PAGE_IS_PRESENT | SC_PAGE_IS_SWAPPED;
        arg.return_mask = SC_PAGE_IS_PRESENT | SC_PAGE_IS_SWAPPED | SC_PAGE_IS_PFNZERO;
        long r = ioctl(it->ctx->pagemap_fd, SC_PAGEMAP_SCAN, &arg);
        it->st->scan_calls++;
        if (r < 0)
            return -errno;
        it->nregs = (int)r;
        it->ri = 0;
        it->scanned_to = arg.walk_end > it->scanned_to ? arg.walk_end : it->end;
        if (r == 0 && it->scanned_to < it->end && arg.walk_end == 0)
            it->scanned_to = it->end;
    }
    struct sc_page_region *rg = &it->regs[it->ri];
    if (rg->start > it->pos) {                /* gap before this region: absent */
        *a = it->pos; *b = rg->start; *kind = R_ABSENT;
        it->pos = rg->start;
        return 1;
    }
    *a = rg->start;
    *b = rg->end;
    *kind = (rg->categories & SC_PAGE_IS_PFNZERO) ? R_ZEROPAGE : R_RESIDENT;
    it->pos = rg->end;
    it->ri++;
    return 1;
}

/* Next run via /proc/PID/pagemap (8 bytes per page; bit 63 present, 62 swapped). */
static int pm_kind(struct resid_iter *it, uint64_t addr, int *kind)
{
    uint64_t idx = addr / PAGE;
    if (it->pm_n == 0 || idx < it->pm_base || idx >= it->pm_base + (uint64_t)it->pm_n) {
        uint64_t pages = (it->end - addr) / PAGE;
        if (pages > 512) pages = 512;
        ssize_t r = pread(it->ctx->pagemap_fd, it->pm, pages * 8, (off_t)(idx * 8));
        it->st->scan_calls++;
        if (r < 0)
            return -errno;
        if (r < 8)
            return -EIO;
        it->pm_base = idx;
        it->pm_n = (int)(r / 8);
    }
    uint64_t e = it->pm[idx - it->pm_base];
    *kind = (e & (3ULL << 62)) ? R_RESIDENT : R_ABSENT;
    return 0;
}

static int next_pagemap(struct resid_iter *it, uint64_t *a, uint64_t *b, int *kind)
{
    if (it->pos >= it->end)
        return 0;
    int k0, k, r;
    if ((r = pm_kind(it, it->pos, &k0)) < 0)
        return r;
    uint64_t p = it->pos + PAGE;
    while (p < it->end) {
        if ((r = pm_kind(it, p, &k)) < 0)
            return r;
        if (k != k0)
            break;
        p += PAGE;
    }
    *a = it->pos; *b = p; *kind = k0;
    it->pos = p;
    return 1;
}

static int resid_next(struct resid_iter *it, uint64_t *a, uint64_t *b, int *kind)
{
    for (;;) {
        int mode = it->ctx->pagemap_fd >= 0 ? it->ctx->scan_mode : 0;
        if (mode == 2) {
            int r = next_scan(it, a, b, kind);
            if (r == -ENOTTY || r == -EINVAL || r == -EOPNOTSUPP) {
                it->ctx->scan_mode = 1;       /* kernel without PAGEMAP_SCAN */
                it->nregs = it->ri = 0;
                continue;
            }
            return r;
        }
        if (mode == 1)
            return next_pagemap(it, a, b, kind);
        if (it->pos >= it->end)               /* no residency information */
            return 0;
        *a = it->pos; *b = it->end; *kind = R_RESIDENT;
        it->pos = it->end;
        return 1;
    }
}

/* ---- the copy ---------------------------------------------------------- */

struct job {
    char    *buf;
    uint64_t len;                             /* bytes valid in buf */
    uint64_t file_off;                        /* where buf[0] goes */
    int      ready;
};

struct copier {
    struct sc_copy_ctx *ctx;
    struct sc_copy_stats *st;
    struct sc_bad *bad;
    size_t bad_cap;
    struct job jobs[2];
    int next_job;
    /* writer thread */
    int threaded;
    pthread_t thr;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int write_err;                            /* first fatal write errno */
};

static int page_is_zero(const char *p)
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t acc = 0;
    for (size_t i = 0; i < PAGE / 8; i += 8)
        acc |= w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7];
    return acc == 0;
}

/* Write all n bytes: at file offset off, or at the stream position when off < 0. */
static int write_out(int fd, const char *p, uint64_t n, int64_t off)
{
    while (n > 0) {
        ssize_t w = off < 0 ? write(fd, p, n) : pwrite(fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (w == 0)
            return -EIO;
        p += w; n -= (uint64_t)w;
        if (off >= 0)
            off += w;
    }
    return 0;
}

static char zero_page_buf[65536];

long sc_write_zeros(int fd, uint64_t n)
{
    while (n > 0) {
        uint64_t k = n < sizeof zero_page_buf ? n : sizeof zero_page_buf;
        int r = write_out(fd, zero_page_buf, k, -1);
        if (r < 0)
            return r;
        n -= k;
    }
    return 0;
}

/* Sequential sink: fill the gap since the last write with zeros, then the data. */
static int flush_job_stream(struct copier *c, struct job *j)
{
    struct sc_copy_ctx *ctx = c->ctx;
    if (j->file_off < ctx->stream_pos)
        return -EINVAL;                        /* out of order: a bug, not an I/O error */
    long r = sc_write_zeros(ctx->out_fd, j->file_off - ctx->stream_pos);
    if (r < 0)
        return (int)r;
    r = write_out(ctx->out_fd, j->buf, j->len, -1);
    if (r < 0)
        return (int)r;
    ctx->stream_pos = j->file_off + j->len;
    __atomic_add_fetch(&c->st->bytes_written, j->len, __ATOMIC_RELAXED);
    return 0;
}

/* Zero-scan a filled buffer and write its non-zero page runs.  Returns 0 or -errno. */
static int flush_job(struct copier *c, struct job *j)
{
    if (c->ctx->sequential)
        return flush_job_stream(c, j);
    uint64_t i = 0, zero = 0, written = 0;
    while (i < j->len) {
        uint64_t n = j->len - i < PAGE ? j->len - i : PAGE;
        if (n == PAGE && page_is_zero(j->buf + i)) {
            zero += n;
            i += n;
            continue;
        }
        uint64_t s = i;
        i += n;
        while (i < j->len) {
            uint64_t m = j->len - i < PAGE ? j->len - i : PAGE;
            if (m == PAGE && page_is_zero(j->buf + i))
                break;
            i += m;
        }
        int r = write_out(c->ctx->out_fd, j->buf + s, i - s, (int64_t)(j->file_off + s));
        if (r < 0)
            return r;
        written += i - s;
    }
    __atomic_add_fetch(&c->st->bytes_zero, zero, __ATOMIC_RELAXED);
    __atomic_add_fetch(&c->st->bytes_written, written, __ATOMIC_RELAXED);
    return 0;
}

static void *writer_main(void *arg)
{
    struct copier *c = arg;
    int k = 0;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->jobs[k].ready && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        if (!c->jobs[k].ready && c->stop)
            break;
        pthread_mutex_unlock(&c->mu);
        int r = c->write_err ? 0 : flush_job(c, &c->jobs[k]);
        pthread_mutex_lock(&c->mu);
        if (r < 0 && !c->write_err)
            c->write_err = -r;
        c->jobs[k].ready = 0;
        pthread_cond_broadcast(&c->cv);
        k ^= 1;
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* Get an empty buffer to fill. */
static struct job *job_acquire(struct copier *c)
{
    struct job *j = &c->jobs[c->next_job];
    if (c->threaded) {
        pthread_mutex_lock(&c->mu);
        while (j->ready)
            pthread_cond_wait(&c->cv, &c->mu);
        pthread_mutex_unlock(&c->mu);
    }
    return j;
}

/* Hand a filled buffer over (to the writer thread, or write it now). */
static int job_submit(struct copier *c, struct job *j)
{
    if (!c->threaded) {
        int r = flush_job(c, j);
        return r;
    }
    pthread_mutex_lock(&c->mu);
    int err = c->write_err;
    j->ready = 1;
    c->next_job ^= 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return err ? -err : 0;
}

static void note_bad(struct copier *c, uint64_t addr, uint64_t len, int err)
{
    struct sc_copy_stats *st = c->st;
    st->bytes_unreadable += len;
    if (st->n_bad > 0) {
        struct sc_bad *last = &c->bad[st->n_bad - 1];
        if (last->addr + last->len == addr) {
            last->len += len;
            last->err = err;
            return;
        }
    }
    st->n_bad_total++;
    if (st->n_bad < c->bad_cap) {
        c->bad[st->n_bad].addr = addr;
        c->bad[st->n_bad].len = len;
        c->bad[st->n_bad].err = err;
        c->bad[st->n_bad].pad = 0;
        st->n_bad++;
    }
}

/*
 * Fill buf with [addr, addr+len) of the target: process_vm_readv first, then
 * /proc/PID/mem for what it refused, page by page; unreadable pages are zeroed
 * (holes) and reported.  Returns 0, or -ESRCH once the target is gone (its
 * memory can no longer be read at all: the copy must stop, not fill holes).
 */
static int read_target(struct copier *c, const struct sc_seg *s, char *buf,
                       uint64_t addr, uint64_t len)
{
    struct sc_copy_ctx *ctx = c->ctx;
    uint64_t done = 0;
    if (ctx->readv_ok && !(s->flags & SC_SEG_FORCE_MEM)) {
        long r = sc_readv(ctx->pid, &addr, &len, 1, buf, len);
        c->st->readv_calls++;
        if (r == -ESRCH)
            return -ESRCH;
        if (r == -ENOSYS || r == -EPERM)
            ctx->readv_ok = 0;                /* kernel or sandbox refuses it */
        if (r > 0)
            done = (uint64_t)r;
    }
    while (done < len) {
        uint64_t a = addr + done;
        long r = -EIO;
        if (ctx->mem_fd >= 0) {
            r = sc_pread(ctx->mem_fd, buf + done, len - done, a);
            c->st->mem_reads++;
            if (r == 0 || r == -ESRCH)
                return -ESRCH;                /* /proc/PID/mem reads 0 once the mm is gone */
        }
        if (r > 0) {
            done += (uint64_t)r;
            continue;
        }
        /* This page cannot be read by either path: leave a hole. */
        uint64_t n = PAGE - (a & (PAGE - 1));
        if (n > len - done)
            n = len - done;
        memset(buf + done, 0, n);
        note_bad(c, a, n, r < 0 ? (int)-r : EIO);
        done += n;
    }
    c->st->bytes_read += len;
    return 0;
}

/* Fill buf from the backing file; bytes past its end read as zeros. */
static void read_backing(struct copier *c, const struct sc_seg *s, char *buf,
                         uint64_t addr, uint64_t len)
{
    uint64_t done = 0;
    while (done < len) {
        long r = sc_pread(s->backing_fd, buf + done, len - done,
                          s->backing_off + (addr - s->vaddr) + done);
        if (r == -EINTR)
            continue;
        if (r <= 0)
            break;
        done += (uint64_t)r;
    }
    if (done < len)
        memset(buf + done, 0, len - done);
    c->st->bytes_from_file += done;
}

enum { SRC_TARGET, SRC_BACKING };

static int copy_run(struct copier *c, const struct sc_seg *s, uint64_t a, uint64_t b, int src)
{
    uint64_t chunk = c->ctx->bufsize;
    while (a < b) {
        if (__atomic_load_n(&c->st->cancel, __ATOMIC_RELAXED))
            return -ECANCELED;
        uint64_t n = b - a < chunk ? b - a : chunk;
        struct job *j = job_acquire(c);
        if (src == SRC_TARGET) {
            int r = read_target(c, s, j->buf, a, n);
            if (r < 0)
                return r;
        } else {
            read_backing(c, s, j->buf, a, n);
        }
        j->len = n;
        j->file_off = s->file_off + (a - s->vaddr);
        int r = job_submit(c, j);
        if (r < 0)
            return r;
        a += n;
        __atomic_add_fetch(&c->st->bytes_done, n, __ATOMIC_RELAXED);
    }
    return 0;
}

static int copy_seg(struct copier *c, const struct sc_seg *s)
{
    uint64_t end = s->vaddr + s->len;
    if (s->flags & SC_SEG_BACKING_ONLY)
        return copy_run(c, s, s->vaddr, end, SRC_BACKING);
    if (!(s->flags & SC_SEG_RESIDENT_ONLY))
        return copy_run(c, s, s->vaddr, end, SRC_TARGET);
    struct resid_iter it;
    resid_init(&it, c->ctx, c->st, s->vaddr, end);
    uint64_t a = 0, b = 0;
    int kind = R_ABSENT, r;
    while ((r = resid_next(&it, &a, &b, &kind)) > 0) {
        if (a < s->vaddr) a = s->vaddr;
        if (b > end) b = end;
        if (a >= b)
            continue;
        if (kind == R_RESIDENT) {
            r = copy_run(c, s, a, b, SRC_TARGET);
        } else if (kind == R_ABSENT && s->backing_fd >= 0) {
            r = copy_run(c, s, a, b, SRC_BACKING);
        } else if (kind == R_ABSENT && (s->flags & SC_SEG_FAULT_ABSENT)) {
            r = copy_run(c, s, a, b, SRC_TARGET);
        } else {
            c->st->bytes_absent += b - a;     /* never touched: a hole, never faulted in */
            __atomic_add_fetch(&c->st->bytes_done, b - a, __ATOMIC_RELAXED);
            r = 0;
        }
        if (r < 0)
            return r;
    }
    if (r < 0) {
        /* No residency information for the rest (e.g. the VMA went away):
         * report it unreadable rather than risk faulting memory in. */
        note_bad(c, it.pos, end - it.pos, -r);
        __atomic_add_fetch(&c->st->bytes_done, end - it.pos, __ATOMIC_RELAXED);
    }
    return 0;
}

long sc_copy(struct sc_copy_ctx *ctx, const struct sc_seg *segs, size_t nsegs,
             struct sc_copy_stats *stats, struct sc_bad *bad, size_t bad_cap)
{
    struct copier c;
    memset(&c, 0, sizeof c);
    c.ctx = ctx;
    c.st = stats;
    c.bad = bad;
    c.bad_cap = bad_cap;
    if (ctx->bufsize < PAGE)
        ctx->bufsize = PAGE;
    ctx->bufsize &= ~(PAGE - 1);
    for (int k = 0; k < 2; k++) {
        c.jobs[k].buf = malloc(ctx->bufsize);
        if (!c.jobs[k].buf) {
            free(c.jobs[0].buf);
            return -ENOMEM;
        }
    }
    c.threaded = ctx->writer_thread != 0;
    if (c.threaded) {
        pthread_mutex_init(&c.mu, NULL);
        pthread_cond_init(&c.cv, NULL);
        sigset_t all, old;
        sigfillset(&all);                     /* signals stay with the caller's threads */
        pthread_sigmask(SIG_BLOCK, &all, &old);
        if (pthread_create(&c.thr, NULL, writer_main, &c) != 0)
            c.threaded = 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    long ret = 0;
    for (size_t i = 0; i < nsegs && ret == 0; i++)
        ret = copy_seg(&c, &segs[i]);
    if (c.threaded) {
        pthread_mutex_lock(&c.mu);
        c.stop = 1;
        pthread_cond_broadcast(&c.cv);
        pthread_mutex_unlock(&c.mu);
        pthread_join(c.thr, NULL);
        if (ret == 0 && c.write_err)
            ret = -c.write_err;
        pthread_mutex_destroy(&c.mu);
        pthread_cond_destroy(&c.cv);
    }
    free(c.jobs[0].buf);
    free(c.jobs[1].buf);
    return ret;
}

/* ---- cpu --------------------------------------------------------------- */

/* x86 only: elsewhere the shim still builds (a wheel installs), and snapcore
 * refuses the target before it asks (no arch/ module matches its registers). */
int sc_cpuid(unsigned int leaf, unsigned int subleaf, uint32_t *out)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned int a, b, c, d;
    __cpuid_count(leaf, subleaf, a, b, c, d);
    out[0] = a; out[1] = b; out[2] = c; out[3] = d;
    return 0;
#else
    return -ENOSYS;
#endif
}
