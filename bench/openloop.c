/* openloop PATH COUNT [open|stat|fstat]: opens and closes PATH COUNT
 * times (or stats it, or fstats one fd of it), timing each call; prints
 * {"median_ns":..,"p99_ns":..}. bench/run_bench.py runs it bare and under
 * `fdopen-client run`. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int cmp(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) return 2;
    int count = atoi(argv[2]);
    const char *op = argc == 4 ? argv[3] : "open";
    int held = strcmp(op, "fstat") == 0 ? open(argv[1], O_RDONLY) : -1;
    struct stat st;
    long *ns = malloc(sizeof *ns * count);
    for (int i = 0; i < count; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (strcmp(op, "stat") == 0) {
            if (stat(argv[1], &st) != 0) { perror(argv[1]); return 1; }
        } else if (held >= 0) {
            if (fstat(held, &st) != 0) { perror(argv[1]); return 1; }
        } else {
            int fd = open(argv[1], O_RDONLY);
            if (fd < 0) { perror(argv[1]); return 1; }
            close(fd);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns[i] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    }
    qsort(ns, count, sizeof *ns, cmp);
    printf("{\"median_ns\":%ld,\"p99_ns\":%ld}\n", ns[count / 2], ns[count * 99 / 100]);
    return 0;
}
