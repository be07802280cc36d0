/*
 * hang: processes that hang in known ways, for `snapcore why`.
 *
 *   hang mutex        two threads lock two mutexes in opposite order: a deadlock
 *   hang workers N    N threads wait on one condition variable nobody signals
 *   hang spin         the main thread spins on the CPU
 *   hang accept       the main thread waits in accept() on a listening socket
 *   hang waitpipe     the parent waits for its child in waitpid(); the child reads
 *                     a pipe whose write end only the parent holds: a deadlock
 *                     across two processes
 *   hang rwlock       a thread holds a rwlock for writing and waits for a mutex
 *                     the main thread holds while it waits to read the rwlock
 *
 * Each prints one line, "READY {json}", once the hang is set up (the threads
 * may still be on their way into their last wait: tests wait for that), then
 * never prints again.  The main thread waits in pause() unless the mode uses
 * it.  A child dies with its parent (PR_SET_PDEATHSIG).
 *
 * READY keys: pid, tids (the threads that hang, in mode order), and
 *   mutex:    mutexes [A, B]  (thread 1 holds A, wants B; thread 2 the reverse)
 *   waitpipe: child
 *   rwlock:   rwlock, mutex
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static pthread_mutex_t mutex_a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t mutex_b = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t mutex_c = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t rwlock = PTHREAD_RWLOCK_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t barrier;
static volatile int tids[1024];
static volatile int started;

static int gettid_(void) { return (int)syscall(SYS_gettid); }

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void ready(const char *extra)
{
    printf("READY {\"pid\": %d, \"tids\": [", getpid());
    for (int i = 0; i < started; i++)
        printf("%s%d", i ? ", " : "", tids[i]);
    printf("]%s}\n", extra);
    fflush(stdout);
}

static void start(void *(*fn)(void *), long arg)
{
    pthread_t t;
    if (pthread_create(&t, NULL, fn, (void *)arg))
        die("pthread_create");
    while (tids[arg] == 0)
        usleep(100);
    started++;
}

/* -- mutex ---------------------------------------------------------------- */
static void *lock_ab(void *arg)
{
    tids[(long)arg] = gettid_();
    pthread_mutex_lock(&mutex_a);
    pthread_barrier_wait(&barrier);
    pthread_mutex_lock(&mutex_b);
    return NULL;
}

static void *lock_ba(void *arg)
{
    tids[(long)arg] = gettid_();
    pthread_mutex_lock(&mutex_b);
    pthread_barrier_wait(&barrier);
    pthread_mutex_lock(&mutex_a);
    return NULL;
}

/* -- workers -------------------------------------------------------------- */
static pthread_mutex_t work_mu = PTHREAD_MUTEX_INITIALIZER;

static void *worker_wait(void *arg)
{
    pthread_mutex_lock(&work_mu);
    tids[(long)arg] = gettid_();
    for (;;)
        pthread_cond_wait(&never, &work_mu);
    return NULL;
}

/* -- rwlock --------------------------------------------------------------- */
static void *writer_then_mutex(void *arg)
{
    tids[(long)arg] = gettid_();
    pthread_rwlock_wrlock(&rwlock);
    pthread_barrier_wait(&barrier);
    pthread_mutex_lock(&mutex_c);
    return NULL;
}

static volatile unsigned long spins;

static void spin_forever(void)
{
    for (;;)
        spins++;
}

int main(int argc, char **argv)
{
    char extra[256] = "";
    if (argc < 2) {
        fprintf(stderr, "usage: hang mutex|workers N|spin|accept|waitpipe|rwlock\n");
        return 2;
    }
    const char *mode = argv[1];
    if (!strcmp(mode, "mutex")) {
        pthread_barrier_init(&barrier, NULL, 2);
        start(lock_ab, 0);
        start(lock_ba, 1);
        snprintf(extra, sizeof extra, ", \"mutexes\": [%lu, %lu]", (unsigned long)&mutex_a,
                 (unsigned long)&mutex_b);
    } else if (!strcmp(mode, "workers")) {
        int n = argc > 2 ? atoi(argv[2]) : 4;
        if (n < 1 || n > 1000)
            die("workers");
        for (long i = 0; i < n; i++)
            start(worker_wait, i);
    } else if (!strcmp(mode, "spin")) {
        tids[0] = gettid_();
        started = 1;
        ready("");
        spin_forever();
    } else if (!strcmp(mode, "accept")) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof a;
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 8) ||
            getsockname(s, (struct sockaddr *)&a, &len))
            die("listen");
        tids[0] = gettid_();
        started = 1;
        snprintf(extra, sizeof extra, ", \"port\": %d, \"fd\": %d", ntohs(a.sin_port), s);
        ready(extra);
        for (;;)
            close(accept(s, NULL, NULL));
    } else if (!strcmp(mode, "waitpipe")) {
        int fds[2];
        if (pipe(fds))
            die("pipe");
        pid_t parent = getpid();
        pid_t child = fork();
        if (child < 0)
            die("fork");
        if (child == 0) {
            char c;
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(1);
            close(fds[1]);
            for (;;)
                if (read(fds[0], &c, 1) <= 0)
                    _exit(0);
        }
        close(fds[0]);
        tids[0] = gettid_();
        started = 1;
        snprintf(extra, sizeof extra, ", \"child\": %d, \"write_fd\": %d", child, fds[1]);
        ready(extra);
        for (;;)
            if (waitpid(child, NULL, 0) == child)
                return 0;
    } else if (!strcmp(mode, "rwlock")) {
        pthread_barrier_init(&barrier, NULL, 2);
        tids[0] = gettid_();
        started = 1;
        pthread_mutex_lock(&mutex_c);
        start(writer_then_mutex, 1);
        snprintf(extra, sizeof extra, ", \"rwlock\": %lu, \"mutex\": %lu", (unsigned long)&rwlock,
                 (unsigned long)&mutex_c);
        ready(extra);
        pthread_barrier_wait(&barrier);
        pthread_rwlock_rdlock(&rwlock);
        return 0;
    } else {
        fprintf(stderr, "hang: unknown mode %s\n", mode);
        return 2;
    }
    ready(extra);
    for (;;)
        pause();
}
