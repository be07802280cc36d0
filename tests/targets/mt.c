/*
 * mt: a multi-threaded target with known state, for tests and `make demo`.
 *
 * Four threads, each blocked in a function of its own name:
 *   main                -> command_loop()      reads commands on stdin
 *   "sleeper"           -> sleeper_thread()    nanosleep loop, counts ticks
 *   "waiter"            -> cond_waiter_thread() pthread_cond_wait forever
 *   "reader"            -> pipe_reader_thread() read() on a pipe nobody writes
 * Known memory: the global snapcore_marker, a 1 MiB anonymous buffer filled
 * with a pattern, and a 4 MiB buffer of which only the first 1 MiB is touched.
 *
 * Optional arguments: mt [EXTRA_MIB [EXTRA_THREADS]] adds EXTRA_MIB of
 * pseudo-random data (a bigger snapshot) and EXTRA_THREADS idle threads.
 *
 * On start it prints one line, "READY {json}", then answers commands:
 *   ping        -> "pong TICKS"   (TICKS grows while the target runs)
 *   vfork SECS  -> "ok", then a new thread vfork()s and the child sleeps SECS
 *                  seconds: that thread sits in an uninterruptible (D) wait
 *   exit        -> exits 0
 *   anything else -> "ok"
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

volatile uint64_t snapcore_marker = 0x5eed5eed12345678ULL;
volatile unsigned long ticks;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int never_fd[2];
static volatile int tids[4];
static volatile int started;

#define BUF_LEN (1UL << 20)
#define HALF_LEN (4UL << 20)

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

__attribute__((noinline)) void *sleeper_thread(void *arg)
{
    tids[1] = gettid_();
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    struct timespec ts = { 0, 1000000 };
    for (;;) {
        nanosleep(&ts, NULL);
        ticks++;
    }
    return arg;
}

__attribute__((noinline)) void *cond_waiter_thread(void *arg)
{
    tids[2] = gettid_();
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&mu);
    for (;;)
        pthread_cond_wait(&cv, &mu);
    return arg;
}

__attribute__((noinline)) void *pipe_reader_thread(void *arg)
{
    tids[3] = gettid_();
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    char c;
    for (;;)
        if (read(never_fd[0], &c, 1) <= 0)
            sleep(1);
    return arg;
}

__attribute__((noinline)) void *idle_thread(void *arg)
{
    for (;;)
        pause();
    return arg;
}

__attribute__((noinline)) void *vfork_thread(void *arg)
{
    long secs = (long)arg;
    pid_t child = vfork();
    if (child == 0) {
        /* only raw syscalls in a vfork child */
        struct timespec ts = { secs, 0 };
        syscall(SYS_nanosleep, &ts, NULL);
        syscall(SYS_exit, 0);
    }
    if (child > 0)
        waitpid(child, NULL, 0);
    return NULL;
}

__attribute__((noinline)) void command_loop(void)
{
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "ping", 4))
            printf("pong %lu\n", ticks);
        else if (!strncmp(line, "vfork ", 6)) {
            pthread_t t;
            pthread_create(&t, NULL, vfork_thread, (void *)atol(line + 6));
            pthread_detach(t);
            printf("ok\n");
        }
        else if (!strncmp(line, "exit", 4))
            exit(0);
        else
            printf("ok\n");
        fflush(stdout);
    }
}

int main(int argc, char **argv)
{
    tids[0] = gettid_();
    unsigned long extra_mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 0;
    int extra_threads = argc > 2 ? atoi(argv[2]) : 0;
    if (pipe(never_fd))
        return 1;
    unsigned char *buf = mmap(NULL, BUF_LEN, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *half = mmap(NULL, HALF_LEN, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED || half == MAP_FAILED)
        return 1;
    for (size_t i = 0; i < BUF_LEN; i++)
        buf[i] = (unsigned char)((i * 2654435761u) >> 13) ^ 0xA5;
    for (size_t i = 0; i < HALF_LEN / 4; i++)
        half[i] = (unsigned char)(i * 7 + 1);
    if (extra_mib) {
        size_t n = extra_mib << 20;
        uint64_t *big = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (big == MAP_FAILED)
            return 1;
        uint64_t x = 0x9E3779B97F4A7C15ULL;
        for (size_t i = 0; i < n / 8; i++) {      /* xorshift: incompressible, no zero pages */
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            big[i] = x;
        }
    }
    pthread_t t;
    for (int i = 0; i < extra_threads; i++)
        pthread_create(&t, NULL, idle_thread, NULL);
    pthread_create(&t, NULL, sleeper_thread, NULL);
    pthread_setname_np(t, "sleeper");
    pthread_create(&t, NULL, cond_waiter_thread, NULL);
    pthread_setname_np(t, "waiter");
    pthread_create(&t, NULL, pipe_reader_thread, NULL);
    pthread_setname_np(t, "reader");
    while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < 3)
        usleep(1000);
    printf("READY {\"pid\": %d, \"tids\": [%d, %d, %d, %d], \"marker_addr\": %lu, "
           "\"buf\": %lu, \"buf_len\": %lu, \"half\": %lu, \"half_len\": %lu}\n",
           (int)getpid(), tids[0], tids[1], tids[2], tids[3],
           (unsigned long)&snapcore_marker, (unsigned long)buf, BUF_LEN,
           (unsigned long)half, HALF_LEN);
    fflush(stdout);
    command_loop();
    return 0;
}
