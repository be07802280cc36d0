/*
 * nsapp: a target whose code lives mostly in a private library, for bundle and
 * namespace tests.  Linked against libnspriv.so with RUNPATH /opt/nspriv/lib,
 * a path that exists only inside the root a test makes for it (or found through
 * LD_LIBRARY_PATH).
 *
 *   main thread      main() -> nspriv_command_loop() -> nspriv_read_line() -> read()
 *   "sleeper"        nspriv_sleeper() -> nanosleep()
 *
 * Prints READY {"pid": P, "tids": [main, sleeper], "variant": "..."} with the ids
 * of its own pid namespace, then answers ping/exit (tests/helpers.py Target).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

extern const char nspriv_variant[];
void *nspriv_sleeper(void *arg);
int nspriv_command_loop(void);

static volatile int sleeper_tid;

static void *sleeper_start(void *arg) {
    sleeper_tid = (int)syscall(SYS_gettid);
    return nspriv_sleeper(arg);
}

int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, sleeper_start, NULL);
    pthread_setname_np(t, "sleeper");
    while (!sleeper_tid) usleep(1000);
    printf("READY {\"pid\": %d, \"tids\": [%d, %d], \"variant\": \"%s\"}\n", (int)getpid(),
           (int)getpid(), sleeper_tid, nspriv_variant);
    fflush(stdout);
    return nspriv_command_loop();
}
