/*
 * nsenter ROOT CMD [ARGS...]: run CMD with ROOT as its root directory, for a
 * process already in new pid and mount namespaces (unshare --pid --mount --fork).
 * Statically linked: it runs before and after the switch.
 *
 *   default            pivot_root: ROOT becomes the namespace's root mount, the
 *                      old root is detached (a container's layout)
 *   NSENTER_CHROOT=1   chroot(ROOT): the old root stays mounted, out of reach
 *
 * It stays as the namespace's pid 1 and runs CMD as pid 2: a namespace's init
 * ignores signals it has no handler for, and the tests send CMD SIGABRT.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what) {
    perror(what);
    exit(111);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: nsenter ROOT CMD [ARGS...]\n");
        return 2;
    }
    if (getenv("NSENTER_CHROOT")) {
        if (chroot(argv[1])) die("chroot");
    } else {
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) die("mount --make-rprivate /");
        if (mount(argv[1], argv[1], NULL, MS_BIND | MS_REC, NULL)) die("mount --bind");
        if (chdir(argv[1])) die("chdir");
        if (syscall(SYS_pivot_root, ".", ".")) die("pivot_root");
        if (umount2(".", MNT_DETACH)) die("umount the old root");
    }
    if (chdir("/")) die("chdir /");
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        execv(argv[2], argv + 2);
        die("exec");
    }
    int status;
    if (waitpid(child, &status, 0) < 0) die("waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
