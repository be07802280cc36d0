/*
 * benchtarget: a process for `make bench` to dump.  It maps and fills memory as
 * asked, then measures how long it is kept from running: a heartbeat thread
 * ticks every millisecond and records the largest gap between two ticks.  A
 * ptrace freeze (snapcore, gcore) stops every thread, so that gap is the pause
 * the target itself saw, whoever caused it.
 *
 *   benchtarget [--map MIB] [--random MIB] [--zero MIB] [--threads N]
 *               [--thp | --nothp] [--noreserve] [--stride PAGES] [--maps N]
 *               [--churn PAGES_PER_MS]
 *
 * One anonymous private mapping of --map MiB (at least random + zero; with
 * --noreserve it is MAP_NORESERVE, so 64 GiB can be reserved on a 24 GiB machine):
 *
 *     [ random: xorshift bytes, never a zero page | zero: written with zeros | untouched ]
 *
 * With --stride S the random MiB are spread out: one page of data, then S-1 pages
 * never touched, and so on (random * S bytes of address space; every data page is
 * its own resident run).
 *
 * --thp asks for transparent huge pages (madvise MADV_HUGEPAGE, the mapping 2 MiB
 * aligned), --nothp forbids them (MADV_NOHUGEPAGE).  --threads N starts N idle
 * threads with 64 KiB stacks, blocked in a futex wait.
 *
 * --maps N adds N one-page mappings, each written once, read-write and read-only
 * in turn so that the kernel cannot merge them: N more VMAs (one anonymous region
 * of N pages, every other page mprotect()ed read-only).
 *
 * --churn P starts a thread that keeps writing the random data: one word in each
 * of P pages every millisecond, page after page, round and round.  During a live
 * snapshot every first write to a page is a copy-on-write fault.
 *
 * When ready it prints one line, READY {json}, then answers commands on stdin,
 * one line each:
 *     gap     -> GAP <max gap ns> <ticks> <n> <start>:<len> ...
 *                the largest gap since the last `gap`, the ticks so far, and the n
 *                gaps of 1.5 ms or more (start: CLOCK_REALTIME ns, len: ns; the
 *                largest 128 if there were more); then all of it starts again
 *     fork    -> FORK <ns>   how long fork() took here (the page-table copy); the
 *                            child exits at once and is reaped
 *     quit    -> exits
 * The main thread sits in read() between commands (live mode injects there).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1ULL << 20)
#define HUGE (2ULL * MIB)
#define TICK_NS 1000000L

#define LOG_MIN_NS 1500000ULL
#define LOG_MAX 128

static pthread_mutex_t gap_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t max_gap_ns;
static struct { uint64_t start, len; } gap_log[LOG_MAX];
static int gap_n;
static _Atomic uint64_t ticks;

static uint64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void *heartbeat(void *arg)
{
    (void)arg;
    uint64_t last = now_ns();
    struct timespec tick = { 0, TICK_NS };
    for (;;) {
        clock_nanosleep(CLOCK_MONOTONIC, 0, &tick, NULL);
        uint64_t t = now_ns();
        uint64_t gap = t - last;
        last = t;
        if (gap > max_gap_ns || gap >= LOG_MIN_NS) {
            uint64_t start = real_ns() - gap;
            pthread_mutex_lock(&gap_mu);
            if (gap > max_gap_ns)
                max_gap_ns = gap;
            if (gap >= LOG_MIN_NS) {
                int slot = gap_n < LOG_MAX ? gap_n++ : -1;
                if (slot < 0) {                 /* full: replace the smallest */
                    slot = 0;
                    for (int i = 1; i < LOG_MAX; i++)
                        if (gap_log[i].len < gap_log[slot].len)
                            slot = i;
                    if (gap_log[slot].len >= gap)
                        slot = -1;
                }
                if (slot >= 0) {
                    gap_log[slot].start = start;
                    gap_log[slot].len = gap;
                }
            }
            pthread_mutex_unlock(&gap_mu);
        }
        atomic_fetch_add(&ticks, 1);
    }
    return NULL;
}

static char *churn_base;
static size_t churn_pages, churn_stride = 1;
static unsigned long long churn_rate;

static void *churn(void *arg)
{
    (void)arg;
    size_t next = 0;
    struct timespec tick = { 0, TICK_NS };
    for (;;) {
        for (unsigned long long k = 0; k < churn_rate; k++) {
            volatile uint64_t *w = (volatile uint64_t *)(churn_base + next * churn_stride * 4096);
            *w += 1;
            if (++next == churn_pages)
                next = 0;
        }
        clock_nanosleep(CLOCK_MONOTONIC, 0, &tick, NULL);
    }
    return NULL;
}

static pthread_mutex_t idle_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idle_cv = PTHREAD_COND_INITIALIZER;

static void *idle_thread(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&idle_mu);
    for (;;)
        pthread_cond_wait(&idle_cv, &idle_mu);
    return NULL;
}

/* xorshift64*: fast, and no 4 KiB page of its output is all zeros. */
static void fill_random(uint64_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        p[i] = x * 0x2545F4914F6CDD1DULL;
    }
}

static unsigned long long arg_num(const char *s, const char *name)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s) {
        fprintf(stderr, "benchtarget: bad %s '%s'\n", name, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    unsigned long long map_mib = 0, rand_mib = 0, zero_mib = 0, nthreads = 0;
    unsigned long long stride = 1, nmaps = 0, churn_ppms = 0;
    int thp = 0, nothp = 0, noreserve = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--map") && v) { map_mib = arg_num(v, a); i++; }
        else if (!strcmp(a, "--random") && v) { rand_mib = arg_num(v, a); i++; }
        else if (!strcmp(a, "--zero") && v) { zero_mib = arg_num(v, a); i++; }
        else if (!strcmp(a, "--threads") && v) { nthreads = arg_num(v, a); i++; }
        else if (!strcmp(a, "--thp")) thp = 1;
        else if (!strcmp(a, "--nothp")) nothp = 1;
        else if (!strcmp(a, "--noreserve")) noreserve = 1;
        else if (!strcmp(a, "--stride") && v) { stride = arg_num(v, a); i++; }
        else if (!strcmp(a, "--maps") && v) { nmaps = arg_num(v, a); i++; }
        else if (!strcmp(a, "--churn") && v) { churn_ppms = arg_num(v, a); i++; }
        else { fprintf(stderr, "benchtarget: unknown argument '%s'\n", a); return 2; }
    }
    if (stride < 1)
        stride = 1;
    if (map_mib < rand_mib * stride + zero_mib)
        map_mib = rand_mib * stride + zero_mib;
    setvbuf(stdout, NULL, _IOLBF, 0);

    char *base = NULL;
    size_t len = map_mib * MIB;
    double fill_s = 0;
    if (len) {
        /* over-allocate by 2 MiB and trim, so that huge pages can line up */
        int flags = MAP_PRIVATE | MAP_ANONYMOUS | (noreserve ? MAP_NORESERVE : 0);
        char *raw = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, flags, -1, 0);
        if (raw == MAP_FAILED) {
            perror("benchtarget: mmap");
            return 1;
        }
        base = (char *)(((uintptr_t)raw + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
        if (base > raw)
            munmap(raw, (size_t)(base - raw));
        size_t tail = (size_t)(raw + len + HUGE - (base + len));
        if (tail)
            munmap(base + len, tail);
        if (thp && madvise(base, len, MADV_HUGEPAGE) < 0) {
            perror("benchtarget: madvise(MADV_HUGEPAGE)");
            return 1;
        }
        if (nothp)
            madvise(base, len, MADV_NOHUGEPAGE);
        uint64_t t0 = now_ns();
        if (stride == 1) {
            fill_random((uint64_t *)base, rand_mib * MIB / 8, 0x9E3779B97F4A7C15ULL);
        } else {
            for (size_t pg = 0; pg < rand_mib * MIB / 4096; pg++)
                fill_random((uint64_t *)(base + pg * stride * 4096), 4096 / 8,
                            0x9E3779B97F4A7C15ULL + pg);
        }
        memset(base + rand_mib * stride * MIB, 0, zero_mib * MIB);
        fill_s = (double)(now_ns() - t0) / 1e9;
    }
    if (nmaps) {
        char *m = mmap(NULL, nmaps * 4096, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            perror("benchtarget: mmap --maps");
            return 1;
        }
        for (unsigned long long i = 0; i < nmaps; i++)
            fill_random((uint64_t *)(m + i * 4096), 4096 / 8, 0x51ED27A5ULL + i);
        for (unsigned long long i = 1; i < nmaps; i += 2)
            if (mprotect(m + i * 4096, 4096, PROT_READ) < 0) {
                perror("benchtarget: mprotect --maps (vm.max_map_count?)");
                return 1;
            }
    }

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (unsigned long long i = 0; i < nthreads; i++) {
        pthread_t t;
        int r = pthread_create(&t, &attr, idle_thread, NULL);
        if (r) {
            fprintf(stderr, "benchtarget: thread %llu: %s\n", i, strerror(r));
            return 1;
        }
    }
    pthread_t hb;
    if (pthread_create(&hb, NULL, heartbeat, NULL)) {
        fprintf(stderr, "benchtarget: heartbeat thread failed\n");
        return 1;
    }
    /* A real-time heartbeat wakes on time even on a busy machine, so the gap it
     * records is the pause and not the scheduler's latency.  Needs privilege;
     * without it the heartbeat stays SCHED_OTHER and READY says so. */
    struct sched_param sp = { .sched_priority = 1 };
    int fifo = pthread_setschedparam(hb, SCHED_FIFO, &sp) == 0;
    if (churn_ppms && rand_mib) {
        pthread_t ch;
        churn_base = base;
        churn_pages = rand_mib * MIB / 4096;
        churn_stride = stride;
        churn_rate = churn_ppms;
        if (pthread_create(&ch, NULL, churn, NULL)) {
            fprintf(stderr, "benchtarget: churn thread failed\n");
            return 1;
        }
    }

    printf("READY {\"pid\": %d, \"addr\": %llu, \"map_bytes\": %llu, \"random_bytes\": %llu, "
           "\"zero_bytes\": %llu, \"threads\": %llu, \"thp\": %s, \"noreserve\": %s, "
           "\"stride\": %llu, \"maps\": %llu, \"churn\": %llu, "
           "\"fill_seconds\": %.3f, \"heartbeat\": \"%s\", \"tick_ns\": %ld}\n",
           (int)getpid(), (unsigned long long)(uintptr_t)base, (unsigned long long)len,
           rand_mib * MIB, zero_mib * MIB, nthreads, thp ? "true" : "false",
           noreserve ? "true" : "false", stride, nmaps, churn_ppms, fill_s,
           fifo ? "SCHED_FIFO" : "SCHED_OTHER", TICK_NS);

    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "gap", 3)) {
            static struct { uint64_t start, len; } copy[LOG_MAX];
            pthread_mutex_lock(&gap_mu);        /* copy and reset; print unlocked */
            uint64_t g = max_gap_ns;
            int n = gap_n;
            memcpy(copy, gap_log, sizeof copy);
            max_gap_ns = 0;
            gap_n = 0;
            pthread_mutex_unlock(&gap_mu);
            printf("GAP %llu %llu %d", (unsigned long long)g,
                   (unsigned long long)atomic_load(&ticks), n);
            for (int i = 0; i < n; i++)
                printf(" %llu:%llu", (unsigned long long)copy[i].start,
                       (unsigned long long)copy[i].len);
            printf("\n");
        } else if (!strncmp(line, "fork", 4)) {
            uint64_t t0 = now_ns();
            pid_t child = fork();
            uint64_t t1 = now_ns();
            if (child == 0)
                _exit(0);
            if (child < 0) {
                printf("ERR fork: %s\n", strerror(errno));
                continue;
            }
            while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
                ;
            printf("FORK %llu\n", (unsigned long long)(t1 - t0));
        } else if (!strncmp(line, "quit", 4)) {
            return 0;
        } else {
            printf("ERR unknown command\n");
        }
    }
    return 0;
}
