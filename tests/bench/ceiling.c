/*
 * ceiling: the raw speed of this machine at what a core writer does, measured
 * for `make bench`.  It reads LEN bytes at ADDR of process PID with
 * process_vm_readv in 16 MiB chunks and write()s each chunk to OUT, one after
 * the other, in one thread: no residency scan, no zero detection, no overlap.
 * With OUT "-" it only reads (the read ceiling).
 *
 *   ceiling PID ADDR LEN OUT|-    -> {"bytes": N, "seconds": S}
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (16UL << 20)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: ceiling PID ADDR LEN OUT|-\n");
        return 2;
    }
    pid_t pid = (pid_t)strtol(argv[1], NULL, 10);
    uint64_t addr = strtoull(argv[2], NULL, 0);
    uint64_t len = strtoull(argv[3], NULL, 0);
    int fd = -1;
    if (strcmp(argv[4], "-")) {
        fd = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
            fprintf(stderr, "ceiling: %s: %s\n", argv[4], strerror(errno));
            return 1;
        }
    }
    char *buf = malloc(CHUNK);
    if (!buf)
        return 1;
    memset(buf, 1, CHUNK);                    /* fault the buffer in before timing */
    double t0 = now();
    uint64_t done = 0;
    while (done < len) {
        size_t n = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
        struct iovec local = { buf, n };
        struct iovec remote = { (void *)(uintptr_t)(addr + done), n };
        ssize_t r = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (r <= 0) {
            fprintf(stderr, "ceiling: process_vm_readv at %#llx: %s\n",
                    (unsigned long long)(addr + done), r < 0 ? strerror(errno) : "short");
            return 1;
        }
        for (ssize_t w = 0; fd >= 0 && w < r;) {
            ssize_t k = write(fd, buf + w, (size_t)(r - w));
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0) {
                fprintf(stderr, "ceiling: write: %s\n", k < 0 ? strerror(errno) : "short");
                return 1;
            }
            w += k;
        }
        done += (uint64_t)r;
    }
    double t1 = now();
    if (fd >= 0)
        close(fd);
    printf("{\"bytes\": %llu, \"seconds\": %.6f}\n", (unsigned long long)done, t1 - t0);
    return 0;
}
