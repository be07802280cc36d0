/*
 * sigcount: counts the signals it receives, with a C handler per signal.
 *
 * Three threads (main + two workers blocked in pause) share the handlers.
 * SIGUSR1, SIGUSR2, SIGWINCH and SIGRTMIN..SIGRTMIN+3 are counted (SA_RESTART,
 * no signal blocked), each with an atomic add: a Python handler would run
 * once for several deliveries of one signal, and after a freeze pending
 * signals land on several threads at once.  `sigcount [MIB]` adds MIB of
 * pseudo-random data so that a snapshot lasts a while.
 *
 * A fourth thread, the heartbeat, blocks every signal and notes the time
 * (CLOCK_MONOTONIC, the clock the test reads too) every millisecond; a gap of
 * more than GAP_NS between two beats is recorded: while the process is frozen
 * nothing beats, so the gap around a freeze is the process's own account of
 * when it was frozen.  Each handler also notes when it ran.
 *
 * Prints "READY {json with tids}", then answers:
 *   ping        -> "pong TICKS"
 *   counts      -> "counts USR1 USR2 WINCH RT0 RT1 RT2 RT3"
 *   gaps        -> "gaps START END ..." (ns) of the gaps since the last "gaps"
 *   deliveries  -> "deliveries N FIRST LAST" (ns): handler runs since the last
 *                  "deliveries", the time of the first and of the last
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define GAP_NS 2000000LL
#define MAX_GAPS 256

static int counts[8];
static volatile unsigned long ticks;
static pthread_mutex_t gaps_mu = PTHREAD_MUTEX_INITIALIZER;
static long long gaps[MAX_GAPS][2];
static int ngaps;
static long long deliv_n, deliv_first, deliv_last;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static volatile int tids[4];
static volatile int started;

static int slot(int sig)
{
    if (sig == SIGUSR1) return 0;
    if (sig == SIGUSR2) return 1;
    if (sig == SIGWINCH) return 2;
    if (sig >= SIGRTMIN && sig <= SIGRTMIN + 3) return 3 + sig - SIGRTMIN;
    return 7;
}

/* atomic: after a freeze, pending signals land on several threads at once */
static void on_signal(int sig)
{
    long long t = now_ns(), first = 0;
    __atomic_add_fetch(&counts[slot(sig)], 1, __ATOMIC_SEQ_CST);
    __atomic_compare_exchange_n(&deliv_first, &first, t, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    long long last = __atomic_load_n(&deliv_last, __ATOMIC_SEQ_CST);
    while (t > last && !__atomic_compare_exchange_n(&deliv_last, &last, t, 0, __ATOMIC_SEQ_CST,
                                                    __ATOMIC_SEQ_CST))
        ;
    __atomic_add_fetch(&deliv_n, 1, __ATOMIC_SEQ_CST);
}

static void *worker(void *arg)
{
    tids[(long)arg] = (int)syscall(SYS_gettid);
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    for (;;)
        pause();
    return NULL;
}

static void *ticker(void *arg)
{
    tids[3] = (int)syscall(SYS_gettid);
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    struct timespec ts = { 0, 1000000 };
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);   /* the ticker takes no signals */
    long long last = now_ns();
    for (;;) {
        nanosleep(&ts, NULL);
        long long t = now_ns();
        if (t - last > GAP_NS) {
            pthread_mutex_lock(&gaps_mu);
            if (ngaps < MAX_GAPS) {
                gaps[ngaps][0] = last;
                gaps[ngaps][1] = t;
                ngaps++;
            }
            pthread_mutex_unlock(&gaps_mu);
        }
        last = t;
        ticks++;
    }
    return arg;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 0;
    if (mib) {
        uint64_t *big = mmap(NULL, mib << 20, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (big == MAP_FAILED)
            return 1;
        uint64_t x = 0x9E3779B97F4A7C15ULL;
        for (size_t i = 0; i < (mib << 20) / 8; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            big[i] = x;
        }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    int sigs[] = { SIGUSR1, SIGUSR2, SIGWINCH, SIGRTMIN, SIGRTMIN + 1, SIGRTMIN + 2,
                   SIGRTMIN + 3 };
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, NULL);
    tids[0] = (int)syscall(SYS_gettid);
    pthread_t t;
    pthread_create(&t, NULL, worker, (void *)1L);
    pthread_create(&t, NULL, worker, (void *)2L);
    pthread_create(&t, NULL, ticker, NULL);
    while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < 3)
        usleep(1000);
    printf("READY {\"tids\": [%d, %d, %d, %d], \"sigrtmin\": %d}\n", tids[0], tids[1],
           tids[2], tids[3], SIGRTMIN);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "ping", 4))
            printf("pong %lu\n", ticks);
        else if (!strncmp(line, "counts", 6)) {
            int c[7];
            for (int i = 0; i < 7; i++)
                c[i] = __atomic_load_n(&counts[i], __ATOMIC_SEQ_CST);
            printf("counts %d %d %d %d %d %d %d\n", c[0], c[1], c[2], c[3], c[4], c[5], c[6]);
        }
        else if (!strncmp(line, "gaps", 4)) {
            pthread_mutex_lock(&gaps_mu);
            printf("gaps");
            for (int i = 0; i < ngaps; i++)
                printf(" %lld %lld", gaps[i][0], gaps[i][1]);
            printf("\n");
            ngaps = 0;
            pthread_mutex_unlock(&gaps_mu);
        }
        else if (!strncmp(line, "deliveries", 10)) {
            printf("deliveries %lld %lld %lld\n", __atomic_exchange_n(&deliv_n, 0, __ATOMIC_SEQ_CST),
                   __atomic_exchange_n(&deliv_first, 0, __ATOMIC_SEQ_CST),
                   __atomic_exchange_n(&deliv_last, 0, __ATOMIC_SEQ_CST));
        }
        else
            printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
