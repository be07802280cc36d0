/*
 * sigcount: counts the signals it receives, with a C handler per signal.
 *
 * Three threads (main + two workers blocked in pause) share the handlers.
 * SIGUSR1, SIGUSR2, SIGWINCH and SIGRTMIN..SIGRTMIN+3 are counted (SA_RESTART,
 * no signal blocked).  `sigcount [MIB]` adds MIB of pseudo-random data so a
 * snapshot lasts long enough to send signals into it.
 * Prints "READY {json with tids}", then answers:
 *   ping    -> "pong TICKS"
 *   counts  -> "counts USR1 USR2 WINCH RT0 RT1 RT2 RT3"
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

static int counts[8];
static volatile unsigned long ticks;
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
static void on_signal(int sig) { __atomic_add_fetch(&counts[slot(sig)], 1, __ATOMIC_SEQ_CST); }

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
    for (;;) {
        nanosleep(&ts, NULL);
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
        else if (!strncmp(line, "counts", 6))
            printf("counts %d %d %d %d %d %d %d\n", counts[0], counts[1], counts[2],
                   counts[3], counts[4], counts[5], counts[6]);
        else
            printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
