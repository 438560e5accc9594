/* rewinder DIR: reads DIR's entries with readdir, notes telldir at the
 * third, reads to the end, seekdir back there, rewinddir and reads again;
 * prints what each pass saw. Under `fdopen-client run` a placeholder
 * stands for DIR, and lseek must rewind and resume as the kernel does. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int names(DIR *d, int print) {
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (print) printf(" %s", e->d_name);
        n++;
    }
    return n;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    DIR *d = opendir(argv[1]);
    if (d == NULL) { perror(argv[1]); return 1; }
    char *seen[64];
    int count = 0;
    long third = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && count < 64) {
        seen[count++] = strdup(e->d_name);
        if (count == 3) third = telldir(d);
    }
    qsort(seen, count, sizeof *seen, by_name);
    printf("first:");
    for (int i = 0; i < count; i++) printf(" %s", seen[i]);
    seekdir(d, third);
    printf("\nafter the third: %d\n", names(d, 0));
    rewinddir(d);
    printf("after a rewind: %d\n", names(d, 0));
    closedir(d);
    return 0;
}
