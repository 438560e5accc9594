/*
 * loadgen: keeps a server that speaks the fdopen protocol busy and
 * measures it (bench/bench.py runs it against fdopen-server and floor).
 *
 * CONNS connections, shared out over THREADS epoll loops, each keep DEPTH
 * `open` requests in flight for SECONDS, cycling through a file of paths.
 * Every answer is checked against SPEC §2: answers come one line per
 * request, in order, and a line with "fd":true comes with exactly one
 * descriptor; anything else is counted as a violation. With -i, IDLE more
 * connections say `hello` once and then sit there for the whole run; with
 * -P, the server's RSS and threads are read while they do. With -F N, each
 * active connection first says `hello` with "fds_per_message":N (SPEC §2,
 * v3) and then receives with room for N descriptors, so the server may
 * answer several requests per message; a server that does not know the
 * field refuses the hello, and loadgen stops. -o stat sends `stat` requests
 * (SPEC §3.6) instead of `open`.
 *
 *   cc -O2 -pthread -o loadgen bench/loadgen.c
 *   loadgen -s SOCK -p PATHS [-c CONNS] [-d DEPTH] [-t THREADS] [-n SECONDS]
 *           [-i IDLE] [-P SERVER_PID] [-F FDS_PER_MESSAGE] [-o open|stat]
 *
 * Prints one JSON line: requests, ok, errors, fds, violations, rps, and
 * p50/p99/p999 latency in microseconds (plus the idle and server figures).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_DEPTH 256
#define BUCKETS 100000 /* 1 µs each; slower answers land in the last */

static const char *socket_path;
static char **paths;
static size_t path_count;
static int conns = 1, depth = 1, threads = 1, seconds = 5, idle = 0, server_pid = 0;
static int fds_per_message = 0; /* 0: never asked; one fd per message */
static const char *op = "open";
static volatile int stopping;

struct connection {
    int fd;
    uint64_t sent_at[MAX_DEPTH]; /* ring of in-flight send times */
    int oldest, in_flight;
    size_t next_path;
    char buf[65536];
    size_t have;
    int fds[512]; /* descriptors received, not yet claimed by a line */
    int fd_count;
};

struct worker {
    struct connection *conns;
    int count;
    uint64_t requests, ok, errors, fds, violations;
    uint32_t *latency; /* histogram, BUCKETS entries */
};

static uint64_t now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static int connect_to_server(void) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_path);
    if (fd == -1 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("loadgen: connect");
        exit(1);
    }
    return fd;
}

static void send_request(struct worker *w, struct connection *c) {
    char line[4200];
    const char *path = paths[c->next_path++ % path_count];
    int n = snprintf(line, sizeof line, "{\"op\":\"%s\",\"path\":\"%s\"}\n", op, path);
    if (write(c->fd, line, n) != n) {
        w->violations++; /* a short write to a Unix socket this small: broken */
        return;
    }
    c->sent_at[(c->oldest + c->in_flight) % MAX_DEPTH] = now_us();
    c->in_flight++;
    w->requests++;
}

/* Reads what is there: bytes, and descriptors into the FIFO. */
static int receive(struct worker *w, struct connection *c) {
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(253 * sizeof(int))]; /* room for -F 253 */
    } control;
    struct iovec iov = {.iov_base = c->buf + c->have, .iov_len = sizeof c->buf - c->have};
    /* Room for one descriptor, or as many as -F asked for, and not one
     * more (CMSG_LEN: CMSG_SPACE's padding would hold another): a server
     * that sends more is caught by MSG_CTRUNC. */
    int room = fds_per_message ? fds_per_message : 1;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = CMSG_LEN(room * sizeof(int))};
    ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n <= 0)
        return n == 0 || (errno != EAGAIN && errno != EINTR) ? -1 : 0;
    if (msg.msg_flags & MSG_CTRUNC)
        w->violations++;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        int count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (int i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
            if (c->fd_count < (int)(sizeof c->fds / sizeof c->fds[0]))
                c->fds[c->fd_count++] = fd;
            else {
                close(fd);
                w->violations++;
            }
        }
    }
    c->have += n;
    return 1;
}

/* Takes every whole line: each answers the oldest request in flight. */
static void take_lines(struct worker *w, struct connection *c) {
    char *start = c->buf, *end;
    while ((end = memchr(start, '\n', c->buf + c->have - start))) {
        *end = 0;
        if (c->in_flight == 0) {
            w->violations++; /* an answer nobody asked for */
        } else {
            uint64_t took = now_us() - c->sent_at[c->oldest];
            w->latency[took < BUCKETS ? took : BUCKETS - 1]++;
            c->oldest = (c->oldest + 1) % MAX_DEPTH;
            c->in_flight--;
        }
        int ok = strstr(start, "\"ok\":true") != NULL;
        int has_fd = strstr(start, "\"fd\":true") != NULL;
        if (ok)
            w->ok++;
        else
            w->errors++;
        if (has_fd) {
            if (c->fd_count == 0) {
                w->violations++;
            } else {
                close(c->fds[0]);
                memmove(c->fds, c->fds + 1, --c->fd_count * sizeof(int));
                w->fds++;
            }
        }
        start = end + 1;
    }
    c->have = c->buf + c->have - start;
    memmove(c->buf, start, c->have);
    /* Descriptors with no line claiming them, once every line is in. */
    if (c->have == 0 && c->in_flight == 0 && c->fd_count > 0) {
        w->violations += c->fd_count;
        while (c->fd_count)
            close(c->fds[--c->fd_count]);
    }
}

/* Says hello with "fds_per_message" (-F) and waits for the answer. */
static void ask_coalescing(int fd) {
    char line[80], answer[512];
    int n = snprintf(line, sizeof line, "{\"op\":\"hello\",\"fds_per_message\":%d}\n",
                     fds_per_message);
    size_t have = 0;
    if (write(fd, line, n) != n) {
        perror("loadgen: hello");
        exit(1);
    }
    while (!memchr(answer, '\n', have)) {
        ssize_t got = read(fd, answer + have, sizeof answer - 1 - have);
        if (got <= 0 || (have += got) == sizeof answer - 1) {
            fprintf(stderr, "loadgen: no answer to hello\n");
            exit(1);
        }
    }
    answer[have] = 0;
    if (!strstr(answer, "\"ok\":true")) {
        fprintf(stderr, "loadgen: the server refused fds_per_message: %s", answer);
        exit(1);
    }
}

static void *run_worker(void *arg) {
    struct worker *w = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < w->count; i++) {
        struct connection *c = &w->conns[i];
        c->fd = connect_to_server();
        if (fds_per_message)
            ask_coalescing(c->fd);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        while (c->in_flight < depth)
            send_request(w, c);
    }
    struct epoll_event events[256];
    while (!stopping) {
        int n = epoll_wait(ep, events, 256, 100);
        for (int i = 0; i < n; i++) {
            struct connection *c = events[i].data.ptr;
            if (receive(w, c) < 0) {
                fprintf(stderr, "loadgen: the server closed a connection\n");
                w->violations++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            take_lines(w, c);
            while (!stopping && c->in_flight < depth)
                send_request(w, c);
        }
    }
    close(ep);
    return NULL;
}

/* Opens the idle connections; returns how many answered `hello`. */
static int open_idle(int *fds) {
    int answered = 0;
    for (int i = 0; i < idle; i++) {
        fds[i] = connect_to_server();
        static const char hello[] = "{\"op\":\"hello\"}\n";
        if (write(fds[i], hello, sizeof hello - 1) != (ssize_t)sizeof hello - 1)
            continue;
    }
    for (int i = 0; i < idle; i++) {
        char buf[512];
        ssize_t n = read(fds[i], buf, sizeof buf);
        if (n > 0 && memmem(buf, n, "\"ok\":true", 9))
            answered++;
    }
    return answered;
}

/* Idle connections the server still keeps open (no EOF, no error). */
static int still_open(const int *fds) {
    int alive = 0;
    for (int i = 0; i < idle; i++) {
        char b;
        ssize_t n = recv(fds[i], &b, 1, MSG_DONTWAIT | MSG_PEEK);
        if (n == -1 && errno == EAGAIN)
            alive++;
    }
    return alive;
}

static void server_status(long *rss_kb, long *threads_now) {
    char name[64], line[256];
    snprintf(name, sizeof name, "/proc/%d/status", server_pid);
    FILE *f = fopen(name, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "VmRSS: %ld", rss_kb);
        sscanf(line, "Threads: %ld", threads_now);
    }
    fclose(f);
}

static void read_paths(const char *file) {
    FILE *f = fopen(file, "r");
    if (!f) {
        perror("loadgen: paths");
        exit(2);
    }
    char line[4200];
    size_t room = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!*line)
            continue;
        if (path_count == room)
            paths = realloc(paths, (room = room ? room * 2 : 1024) * sizeof *paths);
        paths[path_count++] = strdup(line);
    }
    fclose(f);
}

static uint64_t percentile(const uint64_t *hist, uint64_t total, double q) {
    uint64_t want = (uint64_t)(total * q), seen = 0;
    for (int i = 0; i < BUCKETS; i++)
        if ((seen += hist[i]) > want)
            return i;
    return BUCKETS;
}

int main(int argc, char **argv) {
    const char *paths_file = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "s:p:c:d:t:n:i:P:F:o:")) != -1) {
        switch (opt) {
        case 's': socket_path = optarg; break;
        case 'p': paths_file = optarg; break;
        case 'c': conns = atoi(optarg); break;
        case 'd': depth = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'n': seconds = atoi(optarg); break;
        case 'i': idle = atoi(optarg); break;
        case 'P': server_pid = atoi(optarg); break;
        case 'F': fds_per_message = atoi(optarg); break;
        case 'o': op = optarg; break;
        default:
            fprintf(stderr, "usage: loadgen -s SOCK -p PATHS [-c CONNS] [-d DEPTH] [-t THREADS] "
                            "[-n SECONDS] [-i IDLE] [-P SERVER_PID] [-F FDS_PER_MESSAGE] [-o open|stat]\n");
            return 2;
        }
    }
    if (!socket_path || !paths_file || depth < 1 || depth > MAX_DEPTH || conns < 1 || threads < 1 ||
        (fds_per_message && (fds_per_message < 2 || fds_per_message > 253)) ||
        (strcmp(op, "open") != 0 && strcmp(op, "stat") != 0)) {
        fprintf(stderr, "loadgen: -s and -p are needed; 1 <= DEPTH <= %d; 2 <= -F <= 253; -o open|stat\n",
                MAX_DEPTH);
        return 2;
    }
    read_paths(paths_file);
    if (!path_count) {
        fprintf(stderr, "loadgen: %s holds no paths\n", paths_file);
        return 2;
    }
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);

    int *idle_fds = calloc(idle ? idle : 1, sizeof(int));
    int idle_ok = open_idle(idle_fds);
    if (threads > conns)
        threads = conns;
    struct worker *workers = calloc(threads, sizeof *workers);
    struct connection *all = calloc(conns, sizeof *all);
    pthread_t *ids = calloc(threads, sizeof *ids);
    uint64_t started = now_us();
    for (int t = 0, first = 0; t < threads; t++) {
        int count = conns / threads + (t < conns % threads);
        workers[t].conns = all + first;
        workers[t].count = count;
        workers[t].latency = calloc(BUCKETS, sizeof(uint32_t));
        first += count;
        pthread_create(&ids[t], NULL, run_worker, &workers[t]);
    }
    sleep(seconds);
    long rss_kb = 0, server_threads = 0;
    if (server_pid)
        server_status(&rss_kb, &server_threads);
    int idle_alive = still_open(idle_fds);
    stopping = 1;
    for (int t = 0; t < threads; t++)
        pthread_join(ids[t], NULL);
    double elapsed = (now_us() - started) / 1e6;

    uint64_t requests = 0, ok = 0, errors = 0, fds = 0, violations = 0, answered = 0;
    uint64_t *hist = calloc(BUCKETS, sizeof(uint64_t));
    for (int t = 0; t < threads; t++) {
        struct worker *w = &workers[t];
        requests += w->requests, ok += w->ok, errors += w->errors;
        fds += w->fds, violations += w->violations;
        for (int i = 0; i < BUCKETS; i++)
            hist[i] += w->latency[i];
    }
    for (int i = 0; i < BUCKETS; i++)
        answered += hist[i];
    printf("{\"conns\":%d,\"depth\":%d,\"threads\":%d,\"seconds\":%.2f,\"requests\":%llu,\"ok\":%llu,"
           "\"errors\":%llu,\"fds\":%llu,\"violations\":%llu,\"rps\":%.0f,\"p50_us\":%llu,"
           "\"p99_us\":%llu,\"p999_us\":%llu,\"idle\":%d,\"idle_ok\":%d,\"idle_alive\":%d,"
           "\"server_rss_kb\":%ld,\"server_threads\":%ld}\n",
           conns, depth, threads, elapsed, (unsigned long long)requests, (unsigned long long)ok,
           (unsigned long long)errors, (unsigned long long)fds, (unsigned long long)violations,
           answered / elapsed, (unsigned long long)percentile(hist, answered, 0.50),
           (unsigned long long)percentile(hist, answered, 0.99),
           (unsigned long long)percentile(hist, answered, 0.999), idle, idle_ok, idle_alive,
           rss_kb, server_threads);
    return 0;
}
