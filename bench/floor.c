/*
 * floor: the least a server can do for an `open` request, as the yardstick
 * fdopen-server is measured against (bench/bench.py).
 *
 * One thread per connection reads request lines, takes the "path" string
 * out of each (no JSON parser, no policy, no audit), opens it read-only,
 * fstat()s it and answers with the descriptor attached, as SPEC §2 and §4
 * say a server answers. `hello` is answered too, so idle clients can check
 * they are served, and `stat` with one fstatat() (the floor of SPEC §3.6's
 * tree ops). Anything fdopen-server does beyond this is its cost.
 *
 *   cc -O2 -pthread -o floor bench/floor.c && ./floor SOCKET
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* One response line, with `fd` attached when it is not -1. */
static int answer(int conn, const char *line, size_t len, int fd) {
    struct iovec iov = {.iov_base = (void *)line, .iov_len = len};
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd != -1) {
        msg.msg_control = control.space;
        msg.msg_controllen = sizeof control.space;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    return sendmsg(conn, &msg, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

/* Copies the value of "key":"..." in `line` into `out`; 0 if absent. */
static int string_field(const char *line, const char *key, char *out, size_t room) {
    char pattern[32];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *start = strstr(line, pattern);
    if (!start)
        return 0;
    start += strlen(pattern);
    const char *end = strchr(start, '"');
    if (!end || (size_t)(end - start) >= room)
        return 0;
    memcpy(out, start, end - start);
    out[end - start] = 0;
    return 1;
}

static int serve_line(int conn, char *line) {
    char reply[4608], path[4096], op[16] = "open";
    string_field(line, "op", op, sizeof op);
    if (strcmp(op, "hello") == 0) {
        int n = snprintf(reply, sizeof reply,
                         "{\"ok\":true,\"server\":\"floor\",\"version\":\"0\",\"protocol\":2}\n");
        return answer(conn, reply, n, -1);
    }
    if (!string_field(line, "path", path, sizeof path)) {
        int n = snprintf(reply, sizeof reply,
                         "{\"ok\":false,\"error\":{\"code\":\"bad_request\",\"message\":\"no path\"}}\n");
        return answer(conn, reply, n, -1);
    }
    struct stat st;
    if (strcmp(op, "stat") == 0) {
        /* A tree op's floor: one fstatat, no descriptor. */
        int n = fstatat(AT_FDCWD, path, &st, 0) != 0
                    ? snprintf(reply, sizeof reply,
                               "{\"ok\":false,\"error\":{\"code\":\"not_found\",\"message\":\"%s\"}}\n",
                               strerror(errno))
                    : snprintf(reply, sizeof reply,
                               "{\"ok\":true,\"path\":\"%s\",\"rule\":\"floor\",\"stat\":{\"size\":%lld,"
                               "\"mtime\":%lld,\"mode\":%u,\"ino\":%llu}}\n",
                               path, (long long)st.st_size, (long long)st.st_mtime, st.st_mode,
                               (unsigned long long)st.st_ino);
        return answer(conn, reply, n, -1);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd == -1 || fstat(fd, &st) != 0) {
        int n = snprintf(reply, sizeof reply,
                         "{\"ok\":false,\"error\":{\"code\":\"not_found\",\"message\":\"%s\"}}\n",
                         strerror(errno));
        if (fd != -1)
            close(fd);
        return answer(conn, reply, n, -1);
    }
    int n = snprintf(reply, sizeof reply,
                     "{\"ok\":true,\"fd\":true,\"path\":\"%s\",\"size\":%lld,\"mtime\":%lld,\"rule\":\"floor\"}\n",
                     path, (long long)st.st_size, (long long)st.st_mtime);
    int sent = answer(conn, reply, n, fd);
    close(fd);
    return sent;
}

static void *serve_connection(void *arg) {
    int conn = (int)(long)arg;
    char buf[65536];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(conn, buf + have, sizeof buf - 1 - have);
        if (n <= 0)
            break;
        have += n;
        buf[have] = 0;
        char *line = buf, *newline;
        while ((newline = memchr(line, '\n', buf + have - line))) {
            *newline = 0;
            if (serve_line(conn, line) != 0)
                goto done;
            line = newline + 1;
        }
        have = buf + have - line;
        memmove(buf, line, have);
        if (have == sizeof buf - 1)
            break; /* a line longer than we take: give up on it */
    }
done:
    close(conn);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: floor SOCKET\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", argv[1]);
    unlink(argv[1]);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 4096) != 0) {
        perror("floor: bind");
        return 1;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 128 * 1024);
    for (;;) {
        int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (conn == -1) {
            if (errno == EMFILE || errno == ENFILE)
                usleep(1000);
            continue;
        }
        pthread_t thread;
        if (pthread_create(&thread, &attr, serve_connection, (void *)(long)conn) != 0)
            close(conn);
    }
}
