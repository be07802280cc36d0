/*
 * floor: what this machine can do at the two halves of a core writer's job, for
 * `make bench`.  snapcore reads a target's memory and writes it to a file; on two
 * cores the two can overlap, so no core writer can beat max(read, write), each
 * measured alone on the same bytes, in the same run, into the same directory.
 *
 *   floor read  PID ADDR LEN CHUNK       process_vm_readv of [ADDR, ADDR+LEN) of PID,
 *                                        CHUNK bytes per call (snapcore's batch size),
 *                                        into one buffer: the read half, same syscalls
 *   floor write OUT LEN CHUNK            pwrite() of LEN bytes to a new file OUT, CHUNK
 *                                        bytes per call: the write half
 *   floor copy  PID ADDR LEN CHUNK OUT   both, one after the other per chunk, in one
 *                                        thread (no overlap): read + write
 *   floor overlap PID ADDR LEN CHUNK OUT both at once, as a core writer on two cores
 *                                        does it: a reader thread fills a ring of 4
 *                                        CHUNK buffers (snapcore's ring), a writer
 *                                        thread pwrites them: the floor the two
 *                                        halves reach together on this machine
 *
 * Prints {"bytes": N, "seconds": S, "calls": C}.  The buffer is faulted in before
 * the clock starts; the file is created with O_TRUNC and left for the caller.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t num(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || end == s) {
        fprintf(stderr, "floor: bad number '%s'\n", s);
        exit(2);
    }
    return v;
}

/* ---- overlap: a reader and a writer thread around a ring of NRING buffers ---- */
#define NRING 4
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *buf[NRING];
    size_t len[NRING];
    int full[NRING];
    int fd;
    int failed;
} ring = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER };

static int write_all(int fd, const char *p, size_t n, off_t off);

static void *ring_writer(void *arg)
{
    (void)arg;
    off_t off = 0;
    for (unsigned k = 0;; k = (k + 1) % NRING) {
        pthread_mutex_lock(&ring.mu);
        while (!ring.full[k])
            pthread_cond_wait(&ring.cv, &ring.mu);
        size_t n = ring.len[k];
        pthread_mutex_unlock(&ring.mu);
        if (n == 0)
            return NULL;                       /* the reader's end mark */
        if (!ring.failed && write_all(ring.fd, ring.buf[k], n, off) < 0)
            ring.failed = 1;
        off += (off_t)n;
        pthread_mutex_lock(&ring.mu);
        ring.full[k] = 0;
        pthread_cond_broadcast(&ring.cv);
        pthread_mutex_unlock(&ring.mu);
    }
}

static void ring_put(unsigned k, size_t n)
{
    pthread_mutex_lock(&ring.mu);
    ring.len[k] = n;
    ring.full[k] = 1;
    pthread_cond_broadcast(&ring.cv);
    pthread_mutex_unlock(&ring.mu);
}

static int overlap(pid_t pid, uint64_t addr, uint64_t len, size_t chunk, int fd,
                   uint64_t *done_out, uint64_t *calls_out)
{
    for (int i = 0; i < NRING; i++) {
        if (!(ring.buf[i] = malloc(chunk)))
            return -1;
        memset(ring.buf[i], 1, chunk);        /* faulted in before the clock starts */
    }
    ring.fd = fd;
    pthread_t writer;
    if (pthread_create(&writer, NULL, ring_writer, NULL) != 0)
        return -1;
    uint64_t done = 0, calls = 0;
    unsigned k = 0;
    int err = 0;
    while (done < len && !err) {
        pthread_mutex_lock(&ring.mu);
        while (ring.full[k])
            pthread_cond_wait(&ring.cv, &ring.mu);
        pthread_mutex_unlock(&ring.mu);
        size_t n = len - done < chunk ? (size_t)(len - done) : chunk;
        struct iovec local = { ring.buf[k], n };
        struct iovec remote = { (void *)(uintptr_t)(addr + done), n };
        ssize_t r = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        calls += 2;
        if (r <= 0) {
            fprintf(stderr, "floor: process_vm_readv at %#llx: %s\n",
                    (unsigned long long)(addr + done), r < 0 ? strerror(errno) : "short");
            err = 1;
            break;
        }
        ring_put(k, (size_t)r);
        done += (uint64_t)r;
        k = (k + 1) % NRING;
    }
    pthread_mutex_lock(&ring.mu);             /* the end mark, in the next slot */
    while (ring.full[k])
        pthread_cond_wait(&ring.cv, &ring.mu);
    pthread_mutex_unlock(&ring.mu);
    ring_put(k, 0);
    pthread_join(writer, NULL);
    *done_out = done;
    *calls_out = calls;
    return err || ring.failed ? -1 : 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: floor read PID ADDR LEN CHUNK | floor write OUT LEN CHUNK |"
                    " floor copy PID ADDR LEN CHUNK OUT | floor overlap PID ADDR LEN CHUNK OUT\n");
    return 2;
}

static int write_all(int fd, const char *p, size_t n, off_t off)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "floor: pwrite: %s\n", w < 0 ? strerror(errno) : "short");
            return -1;
        }
        p += w; n -= (size_t)w; off += w;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *mode = argv[1];
    int do_read = 0, do_write = 0;
    pid_t pid = 0;
    uint64_t addr = 0, len, chunk;
    const char *out = NULL;
    if (!strcmp(mode, "read") && argc == 6) {
        do_read = 1;
        pid = (pid_t)num(argv[2]); addr = num(argv[3]); len = num(argv[4]); chunk = num(argv[5]);
    } else if (!strcmp(mode, "write") && argc == 5) {
        do_write = 1;
        out = argv[2]; len = num(argv[3]); chunk = num(argv[4]);
    } else if ((!strcmp(mode, "copy") || !strcmp(mode, "overlap")) && argc == 7) {
        do_read = do_write = 1;
        pid = (pid_t)num(argv[2]); addr = num(argv[3]); len = num(argv[4]); chunk = num(argv[5]);
        out = argv[6];
    } else {
        return usage();
    }
    if (chunk == 0)
        return usage();
    int fd = -1;
    if (do_write) {
        fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
            fprintf(stderr, "floor: %s: %s\n", out, strerror(errno));
            return 1;
        }
    }
    char *buf = malloc(chunk);
    if (!buf)
        return 1;
    uint64_t x = 0x9E3779B97F4A7C15ULL;       /* non-zero bytes, faulted in now */
    for (size_t i = 0; i + 8 <= chunk; i += 8) {
        x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
        uint64_t v = x * 0x2545F4914F6CDD1DULL;
        memcpy(buf + i, &v, 8);
    }
    uint64_t done = 0, calls = 0;
    double t0 = now();
    if (!strcmp(mode, "overlap")) {
        if (overlap(pid, addr, len, chunk, fd, &done, &calls) < 0)
            return 1;
    }
    while (done < len) {
        size_t n = len - done < chunk ? (size_t)(len - done) : chunk;
        if (do_read) {
            struct iovec local = { buf, n };
            struct iovec remote = { (void *)(uintptr_t)(addr + done), n };
            ssize_t r = process_vm_readv(pid, &local, 1, &remote, 1, 0);
            calls++;
            if (r <= 0) {
                fprintf(stderr, "floor: process_vm_readv at %#llx: %s\n",
                        (unsigned long long)(addr + done), r < 0 ? strerror(errno) : "short");
                return 1;
            }
            n = (size_t)r;
        }
        if (do_write) {
            if (write_all(fd, buf, n, (off_t)done) < 0)
                return 1;
            calls++;
        }
        done += n;
    }
    double t1 = now();
    if (fd >= 0)
        close(fd);
    printf("{\"bytes\": %llu, \"seconds\": %.6f, \"calls\": %llu}\n", (unsigned long long)done,
           t1 - t0, (unsigned long long)calls);
    return 0;
}
