/* openloop PATH COUNT: opens and closes PATH COUNT times, timing each
 * open+close; prints {"median_ns":..,"p99_ns":..}. bench/run_bench.py runs
 * it bare and under `fdopen-client run`. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int cmp(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int count = atoi(argv[2]);
    long *ns = malloc(sizeof *ns * count);
    for (int i = 0; i < count; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) { perror(argv[1]); return 1; }
        close(fd);
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns[i] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    }
    qsort(ns, count, sizeof *ns, cmp);
    printf("{\"median_ns\":%ld,\"p99_ns\":%ld}\n", ns[count / 2], ns[count * 99 / 100]);
    return 0;
}
