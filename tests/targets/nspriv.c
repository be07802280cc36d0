/*
 * libnspriv.so: the private library of nsapp (see nsapp.c), built twice:
 * bin/nspriv/libnspriv.so and, with -DNSPRIV_VARIANT=2, bin/nspriv2/libnspriv.so
 * (another build-id: a "deploy" that replaces the library under a running process).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef NSPRIV_VARIANT
#define NSPRIV_VARIANT 1
#endif

#define NSPRIV_STR2(x) #x
#define NSPRIV_STR(x) NSPRIV_STR2(x)
const char nspriv_variant[] = "nspriv variant " NSPRIV_STR(NSPRIV_VARIANT);
volatile unsigned long nspriv_ticks;

/* the sleeper thread: ticks while the process runs */
__attribute__((noinline)) void *nspriv_sleeper(void *arg) {
    (void)arg;
    struct timespec ts = {0, 2000000};
    for (;;) {
        nanosleep(&ts, NULL);
        nspriv_ticks++;
    }
    return NULL;
}

/* one line of stdin into buf (the main thread waits in here) */
__attribute__((noinline)) int nspriv_read_line(char *buf, int size) {
    int n = 0;
    while (n < size - 1) {
        ssize_t r = read(0, buf + n, 1);
        if (r <= 0) return -1;
        if (buf[n] == '\n') break;
        n++;
    }
    buf[n] = 0;
    return n;
}

/* answers the test protocol (tests/helpers.py Target): ping -> "pong TICKS" */
__attribute__((noinline)) int nspriv_command_loop(void) {
    char line[256];
    while (nspriv_read_line(line, sizeof line) >= 0) {
        if (strcmp(line, "exit") == 0) return 0;
        if (strncmp(line, "ping", 4) == 0)
            printf("pong %lu\n", nspriv_ticks);
        else
            printf("ok\n");
        fflush(stdout);
    }
    return 1;
}
