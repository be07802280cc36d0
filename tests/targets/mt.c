/*
 * mt: a multi-threaded target with known state, for tests and `make demo`.
 *
 *   mt [still] [edge=DIR] [hugetlb] [maps=N]
 *
 * Four threads, each blocked in a function of its own name:
 *   main                -> command_loop()      reads commands on stdin
 *   "sleeper"           -> sleeper_thread()    nanosleep loop, counts ticks
 *   "waiter"            -> cond_waiter_thread() pthread_cond_wait forever
 *   "reader"            -> pipe_reader_thread() read() on a pipe nobody writes
 * Known memory: the global snapcore_marker, a 1 MiB anonymous buffer filled
 * with a pattern, and a 4 MiB buffer of which only the first 1 MiB is touched.
 *
 * Options:
 *   still      the sleeper blocks in pause() instead of ticking: nothing in the
 *              process changes while it waits for commands (kernel differential)
 *   edge=DIR   add the edge mappings of setup_edge() (files are created in DIR)
 *   hugetlb    with edge=: also a MAP_HUGETLB mapping, if the kernel grants one
 *   maps=N     add N one-page VMAs (alternating PROT_NONE / read-write), e.g.
 *              more than 65535 of them for a PN_XNUM core
 *   mib=N      add N MiB of pseudo-random data (a bigger snapshot)
 *   threads=N  add N idle threads (blocked in pause)
 *
 * On start it prints one line, "READY {json}", then answers commands:
 *   ping        -> "pong TICKS"   (TICKS grows while the target runs)
 *   vfork SECS  -> "ok", then a new thread vfork()s and the child sleeps SECS
 *                  seconds: that thread sits in an uninterruptible (D) wait
 *   exit        -> exits 0
 *   anything else -> "ok"
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
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
static int still;

#ifndef MAP_HUGETLB
#define MAP_HUGETLB 0x40000
#endif

/* extra "key": value pairs for the READY line */
static char ready_extra[8192];
static size_t ready_len;

static void ready_add(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ready_len += vsnprintf(ready_extra + ready_len, sizeof ready_extra - ready_len, fmt, ap);
    va_end(ap);
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

#define BUF_LEN (1UL << 20)
#define HALF_LEN (4UL << 20)

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

__attribute__((noinline)) void *sleeper_thread(void *arg)
{
    tids[1] = gettid_();
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    struct timespec ts = { 0, 1000000 };
    while (still)
        pause();
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

/* The bytes tests/support/targets.py edge_pattern(seed, n) expects. */
static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 31 + seed * 17 + (i >> 12));
}

static void write_file(const char *path, size_t len, unsigned seed)
{
    unsigned char *buf = malloc(len);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (!buf || fd < 0)
        die(path);
    fill(buf, len, seed);
    if (write(fd, buf, len) != (ssize_t)len)
        die("write");
    close(fd);
    free(buf);
}

static void *map_file(const char *path, size_t len, int prot, int flags)
{
    int fd = open(path, prot & PROT_WRITE && flags & MAP_SHARED ? O_RDWR : O_RDONLY);
    if (fd < 0)
        die(path);
    void *p = mmap(NULL, len, prot, flags, fd, 0);
    if (p == MAP_FAILED)
        die("mmap file");
    close(fd);
    return p;
}

static unsigned char *map_anon(size_t len, int flags)
{
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap anon");
    return p;
}

/*
 * One mapping for each rule of the kernel's vma_dump_size() worth checking.
 * Each is reported as "name": address; every region is 2 pages unless noted.
 * Also a blocked, pending SIGUSR1 in the main thread.
 */
static void setup_edge(const char *dir, int want_huge)
{
    long pg = sysconf(_SC_PAGESIZE);
    char path[4096];

    /* written, then PROT_NONE: the kernel dumps it with its contents */
    unsigned char *prot_none = map_anon(2 * pg, MAP_PRIVATE);
    fill(prot_none, 2 * pg, 1);
    if (mprotect(prot_none, 2 * pg, PROT_NONE))
        die("mprotect");
    ready_add(", \"prot_none\": %lu", (unsigned long)prot_none);

    /* written, then MADV_DONTDUMP: not dumped */
    unsigned char *dontdump = map_anon(2 * pg, MAP_PRIVATE);
    fill(dontdump, 2 * pg, 2);
    if (madvise(dontdump, 2 * pg, MADV_DONTDUMP))
        die("madvise");
    ready_add(", \"dontdump\": %lu", (unsigned long)dontdump);

    /* shared anonymous (shmem, "/dev/zero (deleted)") */
    unsigned char *shared_anon = map_anon(2 * pg, MAP_SHARED);
    fill(shared_anon, 2 * pg, 3);
    ready_add(", \"shared_anon\": %lu", (unsigned long)shared_anon);

    /* memfd, shared */
    int mfd = memfd_create("snapcore-memfd", 0);
    if (mfd < 0 || ftruncate(mfd, 2 * pg))
        die("memfd");
    unsigned char *memfd = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (memfd == MAP_FAILED)
        die("mmap memfd");
    close(mfd);
    fill(memfd, 2 * pg, 4);
    ready_add(", \"memfd\": %lu", (unsigned long)memfd);

    /* a shared file mapping whose file is then deleted */
    snprintf(path, sizeof path, "%s/deleted-file", dir);
    write_file(path, 2 * pg, 5);
    void *deleted = map_file(path, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED);
    if (unlink(path))
        die("unlink");
    ready_add(", \"deleted\": %lu", (unsigned long)deleted);

    /* a private file mapping of 3 pages; only the middle one is written (COW) */
    snprintf(path, sizeof path, "%s/cow-file", dir);
    write_file(path, 3 * pg, 6);
    unsigned char *cow = map_file(path, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE);
    fill(cow + pg, pg, 7);
    ready_add(", \"cow\": %lu", (unsigned long)cow);

    /* a file whose name holds spaces and a newline (NT_FILE keeps it exact) */
    snprintf(path, sizeof path, "%s/with space\nand newline", dir);
    write_file(path, pg, 8);
    void *odd_name = map_file(path, pg, PROT_READ, MAP_SHARED);
    ready_add(", \"odd_name\": %lu", (unsigned long)odd_name);

    unsigned long huge = 0;
    if (want_huge) {
        size_t hlen = 2UL << 20;
        unsigned char *h = mmap(NULL, hlen, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        if (h != MAP_FAILED) {
            fill(h, hlen, 9);
            huge = (unsigned long)h;
        }
    }
    ready_add(", \"hugetlb\": %lu", huge);

    /* the main thread blocks SIGUSR1 and has one pending (pr_sighold, pr_sigpend) */
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    if (pthread_sigmask(SIG_BLOCK, &usr1, NULL) || raise(SIGUSR1))
        die("SIGUSR1");
    ready_add(", \"main_sigpend\": %lu", 1UL << (SIGUSR1 - 1));
}

/* n one-page VMAs: PROT_NONE and read-write pages alternate, so none merge. */
static void setup_many_maps(unsigned long n)
{
    long pg = sysconf(_SC_PAGESIZE);
    unsigned char *base = mmap(NULL, n * pg, PROT_NONE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        die("mmap maps");
    for (unsigned long i = 1; i < n; i += 2) {
        if (mprotect(base + i * pg, pg, PROT_READ | PROT_WRITE))
            die("mprotect (is vm.max_map_count high enough?)");
        if (i % 1024 == 1)
            base[i * pg] = (unsigned char)(i >> 10) | 1;   /* some pages hold data */
    }
    ready_add(", \"maps_base\": %lu, \"maps_pages\": %lu", (unsigned long)base, n);
}

int main(int argc, char **argv)
{
    const char *edge_dir = NULL;
    int want_huge = 0;
    unsigned long many = 0, extra_mib = 0;
    int extra_threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "still"))
            still = 1;
        else if (!strncmp(argv[i], "edge=", 5))
            edge_dir = argv[i] + 5;
        else if (!strcmp(argv[i], "hugetlb"))
            want_huge = 1;
        else if (!strncmp(argv[i], "maps=", 5))
            many = strtoul(argv[i] + 5, NULL, 0);
        else if (!strncmp(argv[i], "mib=", 4))
            extra_mib = strtoul(argv[i] + 4, NULL, 0);
        else if (!strncmp(argv[i], "threads=", 8))
            extra_threads = atoi(argv[i] + 8);
        else {
            fprintf(stderr, "mt: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    tids[0] = gettid_();
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
    if (edge_dir)
        setup_edge(edge_dir, want_huge);
    if (many)
        setup_many_maps(many);
    while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < 3)
        usleep(1000);
    printf("READY {\"pid\": %d, \"tids\": [%d, %d, %d, %d], \"marker_addr\": %lu, "
           "\"buf\": %lu, \"buf_len\": %lu, \"half\": %lu, \"half_len\": %lu, "
           "\"page_size\": %ld%s}\n",
           (int)getpid(), tids[0], tids[1], tids[2], tids[3],
           (unsigned long)&snapcore_marker, (unsigned long)buf, BUF_LEN,
           (unsigned long)half, HALF_LEN, sysconf(_SC_PAGESIZE), ready_extra);
    fflush(stdout);
    command_loop();
    return 0;
}
