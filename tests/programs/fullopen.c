/* One open(2) with the flags named on the command line, optionally with
 * the descriptor table full first, and what came of it:
 *   fullopen [--full] PATH FLAG... [--write TEXT]
 * FLAG is wronly, rdwr, trunc, creat, excl, noatime. --full lowers
 * RLIMIT_NOFILE to 32 and fills every free slot below it. --write writes
 * TEXT to the fd at once. Prints "fd" or the errno's name (EMFILE, ...).
 * Used by tests/run_hardening.rs: what a trapped open leaves behind. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static int flag(const char *name) {
    if (!strcmp(name, "wronly")) return O_WRONLY;
    if (!strcmp(name, "rdwr")) return O_RDWR;
    if (!strcmp(name, "trunc")) return O_TRUNC;
    if (!strcmp(name, "creat")) return O_CREAT;
    if (!strcmp(name, "excl")) return O_EXCL;
    if (!strcmp(name, "noatime")) return O_NOATIME;
    return -1;
}

int main(int argc, char **argv) {
    int i = 1, full = 0, flags = 0;
    const char *text = NULL;
    if (i < argc && !strcmp(argv[i], "--full")) {
        full = 1;
        i++;
    }
    if (i >= argc) return 2;
    const char *path = argv[i++];
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--write") && i + 1 < argc) {
            text = argv[++i];
            continue;
        }
        int f = flag(argv[i]);
        if (f < 0) return 2;
        flags |= f;
    }
    if (full) {
        struct rlimit lim = {32, 32};
        if (setrlimit(RLIMIT_NOFILE, &lim) != 0) return 3;
        while (dup(0) >= 0) {}
        if (errno != EMFILE) return 3;
    }
    int fd = open(path, flags, 0644);
    if (fd < 0) {
        int err = errno;
        printf("%s\n", strerrorname_np(err) ? strerrorname_np(err) : "?");
        return 1;
    }
    if (text && write(fd, text, strlen(text)) != (ssize_t)strlen(text)) return 4;
    printf("fd\n");
    return 0;
}
