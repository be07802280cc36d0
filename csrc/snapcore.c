/*
 * snapcore.c - the C shim: thin syscall wrappers and the bulk memory copy.
 *
 * See snapcore.h for the contract (>= 0 or -errno, no policy, no printing).
 * The only non-trivial code is sc_copy(), the loop that moves a target's
 * memory into the core file: it asks pagemap which pages are resident, reads
 * them with process_vm_readv, many runs per call (falling back to
 * /proc/PID/mem, which uses FOLL_FORCE and reads PROT_NONE memory as the
 * kernel's dumper does), skips all-zero pages so the core stays sparse, and
 * pwrite()s the rest at their file offsets.  Optionally a second thread does
 * the zero scan and the writes while the first one reads the next batches.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "snapcore.h"

#define SC_ABI_VERSION 7
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

/* One read of a /proc file printed at once (status, stat): bytes, or -errno. */
static long read_once(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, cap - 1);
    long ret = n < 0 ? -errno : (long)n;
    close(fd);
    if (ret >= 0)
        buf[ret] = '\0';
    return ret;
}

/* The text after "\n<key>" (key ends in ':'), blanks skipped; NULL if absent. */
static const char *status_field(const char *text, const char *key)
{
    const char *at = strstr(text, key);
    if (at == NULL)
        return NULL;
    at += strlen(key);
    while (*at == ' ' || *at == '\t')
        at++;
    return at;
}

static int parse_status(const char *text, int64_t *f)
{
    const char *state = status_field(text, "\nState:");
    const char *pnd = status_field(text, "\nSigPnd:");
    const char *blk = status_field(text, "\nSigBlk:");
    char *end;
    if (state == NULL || pnd == NULL || blk == NULL || *state == '\0')
        return -EBADMSG;
    f[SC_STATE] = (unsigned char)*state;
    f[SC_SIGPND] = (int64_t)strtoull(pnd, &end, 16);
    if (end == pnd || *end != '\n')
        return -EBADMSG;
    f[SC_SIGBLK] = (int64_t)strtoull(blk, &end, 16);
    if (end == blk || *end != '\n')
        return -EBADMSG;
    return 0;
}

static int parse_stat(const char *text, int64_t *f)
{
    const char *at = strrchr(text, ')');  /* comm may hold ')' itself */
    char *end;
    if (at == NULL)
        return -EBADMSG;
    at++;
    /* after ')': state is field 3; utime and stime are fields 14 and 15 */
    for (int field = 3; field < 14; field++) {
        at = strchr(at + 1, ' ');
        if (at == NULL)
            return -EBADMSG;
    }
    f[SC_UTIME] = (int64_t)strtoull(at + 1, &end, 10);
    if (end == at + 1 || *end != ' ')
        return -EBADMSG;
    at = end;
    f[SC_STIME] = (int64_t)strtoull(at + 1, &end, 10);
    if (end == at + 1 || *end != ' ')
        return -EBADMSG;
    return 0;
}

long sc_read_threads(int pid, const int *tids, int n, const unsigned int *types,
                     const size_t *caps, int ntypes, int64_t *facts, char *regbuf,
                     size_t slot_len, long *reglens)
{
    char path[64];
    char text[8192];
    size_t need = 0;
    if (n < 0 || ntypes < 0)
        return -EINVAL;
    for (int j = 0; j < ntypes; j++)
        need += caps[j];
    if (need > slot_len)
        return -EINVAL;
    for (int i = 0; i < n; i++) {
        int64_t *f = facts + (size_t)i * SC_THREAD_FACTS;
        long got;
        memset(f, 0, SC_THREAD_FACTS * sizeof *f);
        snprintf(path, sizeof path, "/proc/%d/task/%d/status", pid, tids[i]);
        got = read_once(path, text, sizeof text);
        f[SC_STATUS_ERR] = got < 0 ? got : parse_status(text, f);
        snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tids[i]);
        got = read_once(path, text, sizeof text);
        f[SC_STAT_ERR] = got < 0 ? got : parse_stat(text, f);
        char *p = regbuf + (size_t)i * slot_len;
        long *lens = reglens + (size_t)i * (size_t)ntypes;
        for (int j = 0; j < ntypes; j++) {
            lens[j] = sc_getregset(tids[i], types[j], p, caps[j]);
            p += caps[j];
        }
    }
    return 0;
}

long sc_read_task_files(int pid, const int *tids, int ntids, const char *names,
                        int nnames, char *buf, size_t bufsize, size_t max_file,
                        long *lens)
{
    char path[PATH_MAX];
    size_t used = 0;
    int i;
    if (ntids < 0 || nnames <= 0 || max_file < 2)
        return -EINVAL;
    for (i = 0; i < ntids; i++) {
        const char *name = names;
        long *len = lens + (size_t)i * (size_t)nnames;
        if (bufsize - used < (size_t)nnames * max_file)
            break;
        for (int j = 0; j < nnames; j++, len++, name += strlen(name) + 1) {
            snprintf(path, sizeof path, "/proc/%d/task/%d/%s", pid, tids[i], name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                *len = -errno;
                continue;
            }
            ssize_t n = read(fd, buf + used, max_file);
            *len = n < 0 ? -errno : (size_t)n == max_file ? -EFBIG : (long)n;
            close(fd);
            if (*len > 0)
                used += (size_t)n;
        }
    }
    return i;
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
struct sc_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define SC_PAGEMAP_SCAN _IOWR('f', 16, struct sc_pm_scan_arg)

long sc_pagemap_scan(int pagemap_fd, uint64_t start, uint64_t end, struct sc_region *out,
                     size_t cap, uint64_t *walk_end)
{
    struct sc_pm_scan_arg arg;
    memset(&arg, 0, sizeof arg);
    arg.size = sizeof arg;
    arg.start = start;
    arg.end = end;
    arg.vec = (uint64_t)(uintptr_t)out;
    arg.vec_len = cap;
    arg.category_anyof_mask = SC_PAGE_IS_PRESENT | SC_PAGE_IS_SWAPPED;
    arg.return_mask = SC_PAGE_IS_PRESENT | SC_PAGE_IS_SWAPPED | SC_PAGE_IS_PFNZERO;
    long r = ioctl(pagemap_fd, SC_PAGEMAP_SCAN, &arg);
    if (r < 0)
        return -errno;
    *walk_end = arg.walk_end;
    return r;
}

enum { R_ABSENT = 0, R_RESIDENT = 1, R_ZEROPAGE = 2 };

/*
 * Iterator over a segment [pos, end) yielding runs of one residency kind.  It
 * lives as long as the copy: one PAGEMAP_SCAN may cover several segments (up
 * to `limit`, the end of a group of nearby segments in address order), and a
 * region that runs past one segment's end is kept for the next.  A mapping
 * per page (65,000 one-page VMAs) then costs a few ioctls, not one each.
 */
struct resid_iter {
    struct sc_copy_ctx *ctx;
    struct sc_copy_stats *st;
    uint64_t pos, end;                        /* the current segment, what is left */
    uint64_t limit;                           /* scan ahead up to here */
    struct sc_region regs[512];
    int nregs, ri;
    uint64_t scanned_to;                      /* regs[] describe up to here */
    uint64_t pm[512];                         /* raw pagemap entries */
    uint64_t pm_base;
    int pm_n;
};

/* Start on a new segment [start, end); scans may run on to limit. */
static void resid_begin(struct resid_iter *it, uint64_t start, uint64_t end, uint64_t limit)
{
    int reuse = it->ctx != NULL && start >= it->pos && start <= it->scanned_to;
    it->pos = start;
    it->end = end;
    it->limit = limit > end ? limit : end;
    if (!reuse) {
        it->nregs = it->ri = 0;
        it->scanned_to = start;
        return;
    }
    while (it->ri < it->nregs && it->regs[it->ri].end <= start)
        it->ri++;                             /* regions of what lay between */
}

/* Next run via PAGEMAP_SCAN; 1 with a run, 0 at end, -errno. */
static int next_scan(struct resid_iter *it, uint64_t *a, uint64_t *b, int *kind)
{
    if (it->pos >= it->end)
        return 0;
    while (it->ri >= it->nregs) {
        if (it->scanned_to >= it->end) {      /* tail after the last resident region */
            *a = it->pos; *b = it->end; *kind = R_ABSENT;
            it->pos = it->end;
            return 1;
        }
        uint64_t from = it->scanned_to > it->pos ? it->scanned_to : it->pos;
        uint64_t walk_end = 0;
        long r = sc_pagemap_scan(it->ctx->pagemap_fd, from, it->limit, it->regs,
                                 sizeof it->regs / sizeof it->regs[0], &walk_end);
        it->st->scan_calls++;
        if (r < 0) {
            it->nregs = it->ri = 0;           /* nothing cached survives an error */
            it->scanned_to = it->pos;
            return (int)r;
        }
        it->nregs = (int)r;
        it->ri = 0;
        it->scanned_to = walk_end > from ? walk_end : it->limit;
    }
    struct sc_region *rg = &it->regs[it->ri];
    if (rg->start >= it->end) {               /* the rest of this segment: absent */
        *a = it->pos; *b = it->end; *kind = R_ABSENT;
        it->pos = it->end;
        return 1;
    }
    if (rg->start > it->pos) {                /* gap before this region: absent */
        *a = it->pos; *b = rg->start; *kind = R_ABSENT;
        it->pos = rg->start;
        return 1;
    }
    *a = it->pos;
    *b = rg->end < it->end ? rg->end : it->end;
    *kind = (rg->categories & SC_PAGE_IS_PFNZERO) ? R_ZEROPAGE : R_RESIDENT;
    it->pos = *b;
    if (rg->end <= it->end)
        it->ri++;                             /* else: the next segment starts in it */
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

/*
 * The reader (the calling thread) walks the segments and their resident runs
 * and packs them into batches: one buffer of ctx->bufsize bytes and up to
 * IOV_MAX pieces, each a run of the target or of a backing file together with
 * the file offset it goes to.  A full batch is read with as few system calls
 * as its pieces allow: one process_vm_readv for up to IOV_MAX target pieces
 * (so scattered 4 KiB runs cost one call per batch, not one each), one pread
 * per /proc/PID/mem or backing-file piece.  The writer (a second thread, or
 * the reader itself) zero-scans each page and pwrite()s the non-zero runs; in
 * sequential mode it writev()s the pieces, and zeros for the holes between
 * them, in order.  Batches go round a ring of ctx->nbufs buffers: one
 * hand-off per batch.
 */

#define SC_PIECES IOV_MAX
#define SC_MAX_BUFS 16

enum { SRC_TARGET, SRC_BACKING };

struct piece {
    const struct sc_seg *seg;
    uint64_t addr;                            /* target address of buf[buf_off] */
    uint64_t len;
    uint64_t file_off;
    uint64_t buf_off;
    int      src;
};

struct batch {
    char *buf;
    struct piece pieces[SC_PIECES];
    int npieces;
    uint64_t used;                            /* bytes of buf taken by pieces */
    int ready;                                /* read, waiting for the writer */
};

struct copier {
    struct sc_copy_ctx *ctx;
    struct sc_copy_stats *st;
    struct sc_bad *bad;
    size_t bad_cap;
    struct batch *b;
    int nb;
    int fill;                                 /* the batch the reader packs */
    int have;                                 /* ... and it holds it */
    struct resid_iter it;                     /* reader: residency, across segments */
    struct iovec riov[IOV_MAX];               /* reader: remote ranges */
    struct iovec wiov[IOV_MAX];               /* writer: sequential mode */
    /* writer thread */
    int threaded;
    pthread_t thr;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int write_err;                            /* first fatal write errno */
};

static void add_ns(uint64_t *counter, uint64_t t0)
{
    __atomic_add_fetch(counter, now_ns() - t0, __ATOMIC_RELAXED);
}

/* Random data leaves at the first word; only zero pages are read whole. */
static int page_is_zero(const char *p)
{
    const uint64_t *w = (const uint64_t *)p;
    for (size_t i = 0; i < PAGE / 8; i += 8)
        if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7])
            return 0;
    return 1;
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

/* writev all of iov[0..n) to a stream (pipes may take part of it). */
static int writev_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t w = writev(fd, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (w == 0)
            return -EIO;
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++; n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

static char zero_buf[1 << 20];                /* never written: maps the zero page */

long sc_write_zeros(int fd, uint64_t n)
{
    while (n > 0) {
        uint64_t k = n < sizeof zero_buf ? n : sizeof zero_buf;
        int r = write_out(fd, zero_buf, k, -1);
        if (r < 0)
            return r;
        n -= k;
    }
    return 0;
}

/* Sequential sink: the holes since the last byte written as zeros, then the data,
 * in as few writev() calls as IOV_MAX allows. */
static int write_batch_stream(struct copier *c, struct batch *b)
{
    struct sc_copy_ctx *ctx = c->ctx;
    struct iovec *iov = c->wiov;
    uint64_t pos = ctx->stream_pos, data = 0;
    int n = 0, r;
    for (int i = 0; i < b->npieces; i++) {
        struct piece *p = &b->pieces[i];
        if (p->file_off < pos)
            return -EINVAL;                   /* out of order: a bug, not an I/O error */
        uint64_t gap = p->file_off - pos;
        while (gap > 0) {
            uint64_t k = gap < sizeof zero_buf ? gap : sizeof zero_buf;
            iov[n].iov_base = zero_buf;
            iov[n++].iov_len = k;
            gap -= k;
            if (n == IOV_MAX) {
                if ((r = writev_all(ctx->out_fd, iov, n)) < 0)
                    return r;
                n = 0;
            }
        }
        iov[n].iov_base = b->buf + p->buf_off;
        iov[n++].iov_len = p->len;
        if (n == IOV_MAX) {
            if ((r = writev_all(ctx->out_fd, iov, n)) < 0)
                return r;
            n = 0;
        }
        pos = p->file_off + p->len;
        data += p->len;
    }
    if (n > 0 && (r = writev_all(ctx->out_fd, iov, n)) < 0)
        return r;
    ctx->stream_pos = pos;
    __atomic_add_fetch(&c->st->bytes_written, data, __ATOMIC_RELAXED);
    return 0;
}

/* Zero-scan a batch and pwrite its non-zero page runs.  Returns 0 or -errno. */
static int write_batch(struct copier *c, struct batch *b)
{
    uint64_t t0 = now_ns();
    if (c->ctx->sequential) {
        int r = write_batch_stream(c, b);
        add_ns(&c->st->write_ns, t0);
        return r;
    }
    uint64_t zero = 0, written = 0;
    for (int k = 0; k < b->npieces; k++) {
        struct piece *p = &b->pieces[k];
        const char *buf = b->buf + p->buf_off;
        uint64_t i = 0, len = p->len;
        while (i < len) {
            uint64_t n = len - i < PAGE ? len - i : PAGE;
            if (n == PAGE && page_is_zero(buf + i)) {
                zero += n;
                i += n;
                continue;
            }
            uint64_t s = i;
            i += n;
            while (i < len) {
                uint64_t m = len - i < PAGE ? len - i : PAGE;
                if (m == PAGE && page_is_zero(buf + i))
                    break;
                i += m;
            }
            int r = write_out(c->ctx->out_fd, buf + s, i - s, (int64_t)(p->file_off + s));
            if (r < 0) {
                add_ns(&c->st->write_ns, t0);
                return r;
            }
            written += i - s;
        }
    }
    __atomic_add_fetch(&c->st->bytes_zero, zero, __ATOMIC_RELAXED);
    __atomic_add_fetch(&c->st->bytes_written, written, __ATOMIC_RELAXED);
    add_ns(&c->st->write_ns, t0);
    return 0;
}

static void *writer_main(void *arg)
{
    struct copier *c = arg;
    int k = 0;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->b[k].ready && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        if (!c->b[k].ready && c->stop)
            break;
        int skip = c->write_err != 0;
        pthread_mutex_unlock(&c->mu);
        int r = skip ? 0 : write_batch(c, &c->b[k]);
        pthread_mutex_lock(&c->mu);
        if (r < 0 && !c->write_err)
            c->write_err = -r;
        c->b[k].ready = 0;
        pthread_cond_broadcast(&c->cv);
        k = (k + 1) % c->nb;
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
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
 * The rest of a target piece, from byte done on, through /proc/PID/mem (which
 * uses FOLL_FORCE and never unshares a copy-on-write page); pages neither path
 * can read are zeroed (holes) and reported.  Returns 0, or -ESRCH once the
 * target is gone (its memory can no longer be read at all: the copy must stop,
 * not fill holes).
 */
static int read_mem(struct copier *c, struct piece *p, char *buf, uint64_t done)
{
    struct sc_copy_ctx *ctx = c->ctx;
    while (done < p->len) {
        uint64_t a = p->addr + done;
        long r = -EIO;
        if (ctx->mem_fd >= 0) {
            r = sc_pread(ctx->mem_fd, buf + done, p->len - done, a);
            c->st->mem_reads++;
            if (r == 0 || r == -ESRCH)
                return -ESRCH;                /* /proc/PID/mem reads 0 once the mm is gone */
        }
        if (r > 0) {
            done += (uint64_t)r;
            continue;
        }
        if (r == -EINTR)
            continue;
        uint64_t n = PAGE - (a & (PAGE - 1));
        if (n > p->len - done)
            n = p->len - done;
        memset(buf + done, 0, n);
        note_bad(c, a, n, r < 0 ? (int)-r : EIO);
        done += n;
    }
    return 0;
}

/* A backing-file piece; bytes past the file's end read as zeros. */
static void read_backing(struct copier *c, struct piece *p, char *buf)
{
    const struct sc_seg *s = p->seg;
    uint64_t done = 0;
    while (done < p->len) {
        long r = sc_pread(s->backing_fd, buf + done, p->len - done,
                          s->backing_off + (p->addr - s->vaddr) + done);
        if (r == -EINTR)
            continue;
        if (r <= 0)
            break;
        done += (uint64_t)r;
    }
    if (done < p->len)
        memset(buf + done, 0, p->len - done);
    c->st->bytes_from_file += done;
}

static int by_readv(struct copier *c, struct piece *p)
{
    return p->src == SRC_TARGET && c->ctx->readv_ok && !(p->seg->flags & SC_SEG_FORCE_MEM);
}

/* Fill a packed batch.  Returns 0 or -ESRCH. */
static int read_batch(struct copier *c, struct batch *b)
{
    uint64_t t0 = now_ns();
    struct sc_copy_stats *st = c->st;
    int i = 0, r = 0;
    while (i < b->npieces && r == 0) {
        struct piece *p = &b->pieces[i];
        char *buf = b->buf + p->buf_off;
        if (p->src == SRC_BACKING) {
            read_backing(c, p, buf);
            i++;
            continue;
        }
        if (!by_readv(c, p)) {
            r = read_mem(c, p, buf, 0);
            st->bytes_read += p->len;
            i++;
            continue;
        }
        int j = i;
        uint64_t want = 0;
        while (j < b->npieces && j - i < IOV_MAX && by_readv(c, &b->pieces[j])) {
            c->riov[j - i].iov_base = (void *)(uintptr_t)b->pieces[j].addr;
            c->riov[j - i].iov_len = b->pieces[j].len;
            want += b->pieces[j].len;
            j++;
        }
        struct iovec liov = { buf, want };
        ssize_t got = process_vm_readv(c->ctx->pid, &liov, 1, c->riov, (unsigned long)(j - i), 0);
        st->readv_calls++;
        if (got < 0) {
            int e = errno;
            if (e == ESRCH) {
                r = -ESRCH;
                break;
            }
            if (e == ENOSYS || e == EPERM)
                c->ctx->readv_ok = 0;         /* kernel or sandbox refuses it */
            got = 0;
        }
        /* the pieces read whole; then the one it stopped in goes through /proc/PID/mem */
        uint64_t left = (uint64_t)got;
        while (i < j && left >= b->pieces[i].len) {
            left -= b->pieces[i].len;
            st->bytes_read += b->pieces[i].len;
            i++;
        }
        if (i < j) {
            p = &b->pieces[i];
            r = read_mem(c, p, b->buf + p->buf_off, left);
            st->bytes_read += p->len;
            i++;
        }
    }
    add_ns(&st->read_ns, t0);
    return r;
}

/* Take the next ring buffer for packing (wait until the writer is done with it). */
static struct batch *batch_acquire(struct copier *c)
{
    struct batch *b = &c->b[c->fill];
    if (!c->have) {
        if (c->threaded) {
            pthread_mutex_lock(&c->mu);
            if (b->ready) {
                uint64_t t0 = now_ns();
                while (b->ready)
                    pthread_cond_wait(&c->cv, &c->mu);
                add_ns(&c->st->wait_ns, t0);
            }
            pthread_mutex_unlock(&c->mu);
        }
        b->npieces = 0;
        b->used = 0;
        c->have = 1;
    }
    return b;
}

/* Read the packed batch and hand it to the writer (or write it now). */
static int batch_submit(struct copier *c)
{
    if (!c->have)
        return 0;
    struct batch *b = &c->b[c->fill];
    c->have = 0;
    if (b->npieces == 0)
        return 0;
    int r = read_batch(c, b);
    if (r < 0)
        return r;
    __atomic_add_fetch(&c->st->bytes_done, b->used, __ATOMIC_RELAXED);
    if (!c->threaded)
        return write_batch(c, b);
    pthread_mutex_lock(&c->mu);
    int err = c->write_err;
    b->ready = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    c->fill = (c->fill + 1) % c->nb;
    return err ? -err : 0;
}

/* Queue [a, end) of segment s, read from src, packing it into batches. */
static int add_range(struct copier *c, const struct sc_seg *s, uint64_t a, uint64_t end,
                     int src)
{
    uint64_t cap = c->ctx->bufsize;
    while (a < end) {
        if (__atomic_load_n(&c->st->cancel, __ATOMIC_RELAXED))
            return -ECANCELED;
        struct batch *b = batch_acquire(c);
        uint64_t file_off = s->file_off + (a - s->vaddr);
        if (b->used == cap || b->npieces == SC_PIECES) {
            int r = batch_submit(c);
            if (r < 0)
                return r;
            continue;
        }
        uint64_t room = cap - b->used;
        uint64_t n = end - a < room ? end - a : room;
        int cut = 0;
        if (end - a > room) {
            /* The range goes on past this batch: end the batch where the file
             * offset is a multiple of cap, so that the next batches are written
             * at aligned offsets.  The page cache then takes each write in one
             * large folio, not a ramp of small ones (-12% write time measured
             * for 1 MiB writes at 16 KiB past alignment, ext4, Linux 6.18). */
            uint64_t to_aligned = cap - file_off % cap;
            if (to_aligned < room) {
                n = to_aligned;
                cut = 1;
            }
        }
        struct piece *last = b->npieces ? &b->pieces[b->npieces - 1] : NULL;
        if (last && last->src == src && last->addr + last->len == a &&
            last->file_off + last->len == file_off &&
            (last->seg == s || (src == SRC_TARGET && last->seg->flags == s->flags))) {
            /* contiguous in memory and in the file (adjacent segments too: the
             * backing file of a piece is its first segment's, so those stay apart) */
            last->len += n;
        } else {
            struct piece *p = &b->pieces[b->npieces++];
            p->seg = s;
            p->addr = a;
            p->len = n;
            p->file_off = file_off;
            p->buf_off = b->used;
            p->src = src;
        }
        b->used += n;
        a += n;
        if (cut) {
            int r = batch_submit(c);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

static int copy_seg(struct copier *c, const struct sc_seg *s, uint64_t limit)
{
    uint64_t end = s->vaddr + s->len;
    if (s->flags & SC_SEG_BACKING_ONLY)
        return add_range(c, s, s->vaddr, end, SRC_BACKING);
    if (!(s->flags & SC_SEG_RESIDENT_ONLY))
        return add_range(c, s, s->vaddr, end, SRC_TARGET);
    struct resid_iter *it = &c->it;
    resid_begin(it, s->vaddr, end, limit);
    uint64_t a = 0, b = 0;
    int kind = R_ABSENT, r;
    for (;;) {
        uint64_t t0 = now_ns();
        r = resid_next(it, &a, &b, &kind);
        add_ns(&c->st->scan_ns, t0);
        if (r <= 0)
            break;
        if (a < s->vaddr) a = s->vaddr;
        if (b > end) b = end;
        if (a >= b)
            continue;
        if (kind == R_RESIDENT) {
            r = add_range(c, s, a, b, SRC_TARGET);
        } else if (kind == R_ABSENT && s->backing_fd >= 0) {
            r = add_range(c, s, a, b, SRC_BACKING);
        } else if (kind == R_ABSENT && (s->flags & SC_SEG_FAULT_ABSENT)) {
            r = add_range(c, s, a, b, SRC_TARGET);
        } else {
            c->st->bytes_absent += b - a;     /* never touched: a hole, never faulted in */
            __atomic_add_fetch(&c->st->bytes_done, b - a, __ATOMIC_RELAXED);
            r = __atomic_load_n(&c->st->cancel, __ATOMIC_RELAXED) ? -ECANCELED : 0;
        }
        if (r < 0)
            return r;
    }
    if (r < 0) {
        /* No residency information for the rest (e.g. the VMA went away):
         * report it unreadable rather than risk faulting memory in. */
        note_bad(c, it->pos, end - it->pos, -r);
        __atomic_add_fetch(&c->st->bytes_done, end - it->pos, __ATOMIC_RELAXED);
        it->pos = end;
    }
    return 0;
}

/* How far one PAGEMAP_SCAN from segs[i] may run: to the end of the last of the
 * resident-only segments that follow in address order, each starting less than
 * SCAN_GAP past the one before (what lies between, a guard page or a VMA that
 * is not dumped, is walked for nothing; keep that small). */
#define SCAN_GAP (2ULL << 20)

static uint64_t scan_limit(const struct sc_seg *segs, size_t nsegs, size_t i)
{
    uint64_t limit = segs[i].vaddr + segs[i].len;
    for (size_t j = i + 1; j < nsegs; j++) {
        const struct sc_seg *s = &segs[j];
        if (!(s->flags & SC_SEG_RESIDENT_ONLY) || (s->flags & SC_SEG_BACKING_ONLY) ||
            s->vaddr < limit || s->vaddr - limit > SCAN_GAP)
            break;
        limit = s->vaddr + s->len;
    }
    return limit;
}

static void free_bufs(struct copier *c)
{
    for (int k = 0; k < c->nb; k++)
        if (c->b[k].buf)
            munmap(c->b[k].buf, c->ctx->bufsize);
    free(c->b);
}

long sc_copy(struct sc_copy_ctx *ctx, const struct sc_seg *segs, size_t nsegs,
             struct sc_copy_stats *stats, struct sc_bad *bad, size_t bad_cap)
{
    struct copier *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->ctx = ctx;
    c->st = stats;
    c->bad = bad;
    c->bad_cap = bad_cap;
    if (ctx->bufsize < PAGE)
        ctx->bufsize = PAGE;
    ctx->bufsize &= ~(PAGE - 1);
    c->threaded = ctx->writer_thread != 0;
    c->nb = ctx->nbufs > 0 ? ctx->nbufs : 2;
    if (c->nb > SC_MAX_BUFS)
        c->nb = SC_MAX_BUFS;
    if (!c->threaded)
        c->nb = 1;
    c->b = calloc((size_t)c->nb, sizeof *c->b);
    if (!c->b) {
        free(c);
        return -ENOMEM;
    }
    for (int k = 0; k < c->nb; k++) {
        void *m = mmap(NULL, ctx->bufsize, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            free_bufs(c);
            free(c);
            return -ENOMEM;
        }
        c->b[k].buf = m;
    }
    if (c->threaded) {
        pthread_mutex_init(&c->mu, NULL);
        pthread_cond_init(&c->cv, NULL);
        sigset_t all, old;
        sigfillset(&all);                     /* signals stay with the caller's threads */
        pthread_sigmask(SIG_BLOCK, &all, &old);
        if (pthread_create(&c->thr, NULL, writer_main, c) != 0)
            c->threaded = 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    c->it.ctx = ctx;
    c->it.st = stats;
    long ret = 0;
    uint64_t limit = 0;
    for (size_t i = 0; i < nsegs && ret == 0; i++) {
        if (limit <= segs[i].vaddr)
            limit = scan_limit(segs, nsegs, i);
        ret = copy_seg(c, &segs[i], limit);
    }
    if (ret == 0)
        ret = batch_submit(c);
    if (c->threaded) {
        pthread_mutex_lock(&c->mu);
        c->stop = 1;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->thr, NULL);
        if (ret == 0 && c->write_err)
            ret = -c->write_err;
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
    }
    free_bufs(c);
    free(c);
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
