/* Opens each PATH in a thread of its own, all at once, and prints
 * "PATH: CONTENT" in argument order. With --raw the opens are raw
 * openat syscalls, as a Go program or a static binary might make them.
 * Used by tests/run.rs, built dynamically and with -static. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_PATHS 64

static int raw;
static pthread_barrier_t start;

struct job {
    const char *path;
    char content[256];
    int err;
};

static void *open_one(void *arg) {
    struct job *job = arg;
    pthread_barrier_wait(&start);
    int fd = raw ? (int)syscall(SYS_openat, AT_FDCWD, job->path, O_RDONLY)
                 : open(job->path, O_RDONLY);
    if (fd < 0) {
        job->err = 1;
        snprintf(job->content, sizeof job->content, "error %s", strerror(errno));
        return NULL;
    }
    ssize_t n = read(fd, job->content, sizeof job->content - 1);
    job->content[n > 0 ? n : 0] = 0;
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "--raw") == 0) {
        raw = 1;
        first = 2;
    }
    int count = argc - first;
    if (count <= 0 || count > MAX_PATHS) return 2;
    static struct job jobs[MAX_PATHS];
    pthread_t threads[MAX_PATHS];
    pthread_barrier_init(&start, NULL, count);
    for (int i = 0; i < count; i++) {
        jobs[i].path = argv[first + i];
        pthread_create(&threads[i], NULL, open_one, &jobs[i]);
    }
    int failed = 0;
    for (int i = 0; i < count; i++) {
        pthread_join(threads[i], NULL);
        printf("%s: %s\n", jobs[i].path, jobs[i].content);
        failed |= jobs[i].err;
    }
    return failed;
}
