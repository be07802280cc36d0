/*
 * cowshare: N MiB of pseudo-random data shared copy-on-write with a forked child,
 * as in a prefork server.  Reading such pages with process_vm_readv pins them,
 * and the kernel answers a pin of a shared anonymous page by copying it into
 * the process read from: a snapshot must not do that.
 *
 * Usage: cowshare MIB.  Prints READY {"buf": addr, "len": bytes, "child": pid}
 * and answers ping.  The child dies with the parent (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    size_t n = (argc > 1 ? strtoul(argv[1], NULL, 10) : 64) << 20;
    uint64_t *buf = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        return 1;
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < n / 8; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        buf[i] = x;
    }
    pid_t child = fork();
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1)
            _exit(0);
        for (;;)
            pause();
    }
    printf("READY {\"buf\": %lu, \"len\": %zu, \"child\": %d}\n", (unsigned long)buf, n, child);
    fflush(stdout);
    char line[64];
    unsigned long pings = 0;
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "ping", 4))
            printf("pong %lu\n", ++pings);
        else
            printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
