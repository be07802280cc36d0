/*
 * gen: memory that changes all the time, to check that a live snapshot is one
 * instant.  Four writer threads each own PAGES pages; each sweep writes
 * count+1 into the first word of every page in order, then sets count+1.  So
 * at any instant a writer's pages read c+1 up to some page and c after it,
 * where c is its count: any copy that is not one instant breaks that.
 *
 * Also: a MADV_DONTFORK region and a MADV_WIPEONFORK region filled with a
 * known byte (what fork leaves out or wipes), and with the argument
 * "seccomp" an allow-everything seccomp filter (live mode must then fall back).
 *
 * Prints READY {json with addresses}; answers ping (pong = writer 0's count).
 */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define WRITERS 4
#define PAGES 256
#define PAGE 4096

struct writer {
    volatile uint64_t count;
    char *pages;
} writers[WRITERS];

static void *writer_thread(void *arg)
{
    struct writer *w = arg;
    for (;;) {
        uint64_t next = w->count + 1;
        for (int p = 0; p < PAGES; p++)
            *(volatile uint64_t *)(w->pages + (size_t)p * PAGE) = next;
        w->count = next;
        usleep(20);                /* leave the CPU to the rest of the machine */
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int use_seccomp = argc > 1 && !strcmp(argv[1], "seccomp");
    for (int i = 0; i < WRITERS; i++) {
        writers[i].pages = mmap(NULL, (size_t)PAGES * PAGE, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (writers[i].pages == MAP_FAILED)
            return 1;
    }
    size_t nl = 16 * PAGE;
    char *dontfork = mmap(NULL, nl, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *wipe = mmap(NULL, nl, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (dontfork == MAP_FAILED || wipe == MAP_FAILED)
        return 1;
    memset(dontfork, 0xD0, nl);
    memset(wipe, 0xE1, nl);
    if (madvise(dontfork, nl, MADV_DONTFORK) || madvise(wipe, nl, MADV_WIPEONFORK))
        return 1;
    if (use_seccomp) {
        struct sock_filter allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
        struct sock_fprog prog = { 1, allow };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
            return 1;
    }
    pthread_t t;
    for (int i = 0; i < WRITERS; i++)
        pthread_create(&t, NULL, writer_thread, &writers[i]);
    printf("READY {\"writers\": %lu, \"writer_size\": %zu, \"nwriters\": %d, \"pages\": %d, "
           "\"dontfork\": %lu, \"wipe\": %lu, \"nofork_len\": %zu}\n",
           (unsigned long)writers, sizeof writers[0], WRITERS, PAGES,
           (unsigned long)dontfork, (unsigned long)wipe, nl);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "ping", 4))
            printf("pong %lu\n", (unsigned long)writers[0].count);
        else
            printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
