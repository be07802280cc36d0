/*
 * execloop: re-executes itself from a second thread every few milliseconds,
 * keeping its pid, so an exec can land in the middle of a snapshot.
 * Generation N prints "GEN N" to stderr; the first prints "READY {}" on
 * stdout.  Usage: execloop [GEN]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static char **g_argv;
static int gen;

static void *reexec(void *arg)
{
    struct timespec ts = { 0, 3000000 };
    nanosleep(&ts, NULL);
    char next[16];
    snprintf(next, sizeof next, "%d", gen + 1);
    char *argv[] = { g_argv[0], next, NULL };
    execv("/proc/self/exe", argv);
    return arg;
}

int main(int argc, char **argv)
{
    g_argv = argv;
    gen = argc > 1 ? atoi(argv[1]) : 0;
    if (gen == 0) {
        printf("READY {}\n");
        fflush(stdout);
    }
    pthread_t t;
    pthread_create(&t, NULL, reexec, NULL);
    for (;;)
        pause();
}
