/*
 * execloop: re-executes itself from a second thread, keeping its pid, so an
 * exec can land in the middle of a snapshot.
 *
 *   execloop [GEN]               the second thread execs every ~3 ms, forever
 *   execloop GEN signal NTHREADS N idle threads, then the exec thread, which
 *                                execs when it is sent SIGUSR1 (and only then)
 *
 * The first generation prints
 * "READY {}" on stdout; in signal mode every generation prints
 * READY {"gen": N, "exec_tid": TID} once its threads are up.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static char **g_argv;
static int gen, on_signal, nthreads;
static volatile int exec_tid;

static void *idle(void *arg)
{
    for (;;)
        pause();
    return arg;
}

static void *reexec(void *arg)
{
    char next[16], count[16];
    snprintf(next, sizeof next, "%d", gen + 1);
    snprintf(count, sizeof count, "%d", nthreads);
    if (on_signal) {
        sigset_t usr1;
        sigemptyset(&usr1);
        sigaddset(&usr1, SIGUSR1);
        exec_tid = (int)syscall(SYS_gettid);
        int sig;
        sigwait(&usr1, &sig);
        char *argv[] = { g_argv[0], next, "signal", count, NULL };
        execv("/proc/self/exe", argv);
    } else {
        struct timespec ts = { 0, 3000000 };
        nanosleep(&ts, NULL);
        char *argv[] = { g_argv[0], next, NULL };
        execv("/proc/self/exe", argv);
    }
    return arg;
}

int main(int argc, char **argv)
{
    g_argv = argv;
    gen = argc > 1 ? atoi(argv[1]) : 0;
    on_signal = argc > 2 && !strcmp(argv[2], "signal");
    nthreads = argc > 3 ? atoi(argv[3]) : 0;
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);   /* only the exec thread's sigwait takes it */
    pthread_t t;
    for (int i = 0; i < nthreads; i++)
        pthread_create(&t, NULL, idle, NULL);
    pthread_create(&t, NULL, reexec, NULL);    /* created last: the highest tid */
    if (on_signal) {
        while (!exec_tid)
            usleep(100);
        printf("READY {\"gen\": %d, \"exec_tid\": %d}\n", gen, exec_tid);
        fflush(stdout);
    } else if (gen == 0) {
        printf("READY {}\n");
        fflush(stdout);
    }
    for (;;)
        pause();
}
