/* The path-swap race: one thread keeps rewriting the path buffer between
 * GRANTED and REFUSED (same length) while the main thread opens it ROUNDS
 * times. Prints "granted N" and, for any open that yields content other
 * than EXPECTED, "LEAK: content". Used by tests/run.rs. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[4096];
static const char *granted, *refused;
static volatile int done;

static void *flip(void *unused) {
    (void)unused;
    size_t len = strlen(granted);
    while (!done) {
        memcpy(path, refused, len);
        memcpy(path, granted, len);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5 || strlen(argv[1]) != strlen(argv[2])) return 2;
    granted = argv[1];
    refused = argv[2];
    const char *expected = argv[3];
    int rounds = atoi(argv[4]);
    strcpy(path, granted);
    pthread_t t;
    pthread_create(&t, NULL, flip, NULL);
    int got = 0;
    for (int i = 0; i < rounds; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        char buf[256];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        buf[n > 0 ? n : 0] = 0;
        close(fd);
        if (strcmp(buf, expected) != 0) printf("LEAK: %s\n", buf);
        got++;
    }
    done = 1;
    pthread_join(t, NULL);
    printf("granted %d\n", got);
    return 0;
}
