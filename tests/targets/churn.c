/*
 * churn: creates and joins threads without pause (up to 8 at a time), so
 * threads appear and vanish while snapcore freezes it.  Speaks READY/ping.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long ticks;

static void *short_lived(void *arg)
{
    volatile unsigned long x = 0;
    for (int i = 0; i < 1000; i++)
        x += i;
    return arg;
}

static void *spawner(void *arg)
{
    pthread_t t[8];
    for (;;) {
        for (int i = 0; i < 8; i++)
            pthread_create(&t[i], NULL, short_lived, NULL);
        for (int i = 0; i < 8; i++)
            pthread_join(t[i], NULL);
        ticks++;
    }
    return arg;
}

int main(void)
{
    pthread_t t;
    pthread_create(&t, NULL, spawner, NULL);
    pthread_create(&t, NULL, spawner, NULL);
    printf("READY {}\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "ping", 4))
            printf("pong %lu\n", ticks);
        else
            printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
