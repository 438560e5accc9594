/* One bind(2) of a fresh TCP socket to loopback, with the address length
 * and options named on the command line, and what the socket is after:
 *   binder 4|6 PORT ADDRLEN [device] [filter] [minttl]
 * "device" sets SO_BINDTODEVICE=lo, "filter" attaches and locks a classic
 * BPF filter, "minttl" sets IP_MINTTL=255. Prints the errno's name, or
 * "bound port=P device=NAME filter=N locked=L minttl=T" as getsockname
 * and getsockopt see the socket.
 * Used by tests/run_hardening.rs: a brokered socket is never more
 * exposed than the program's. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    int six = !strcmp(argv[1], "6");
    int port = atoi(argv[2]);
    int len = atoi(argv[3]);
    int fd = socket(six ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 3;
    for (int i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "device")) {
            if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3) != 0) return 4;
        } else if (!strcmp(argv[i], "filter")) {
            /* Accept every packet, whole: "ret #0xffffffff". */
            struct sock_filter code[] = {{BPF_RET | BPF_K, 0, 0, 0xffffffff}};
            struct sock_fprog prog = {1, code};
            int one = 1;
            if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) != 0) return 5;
            if (setsockopt(fd, SOL_SOCKET, SO_LOCK_FILTER, &one, sizeof one) != 0) return 5;
        } else if (!strcmp(argv[i], "minttl")) {
            int ttl = 255;
            if (setsockopt(fd, IPPROTO_IP, IP_MINTTL, &ttl, sizeof ttl) != 0) return 6;
        } else {
            return 2;
        }
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (six) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        a->sin6_addr = in6addr_loopback;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    if (bind(fd, (struct sockaddr *)&ss, (socklen_t)len) != 0) {
        int err = errno;
        printf("%s\n", strerrorname_np(err) ? strerrorname_np(err) : "?");
        return 1;
    }
    struct sockaddr_storage got;
    socklen_t got_len = sizeof got;
    getsockname(fd, (struct sockaddr *)&got, &got_len);
    char device[IFNAMSIZ + 1] = "";
    socklen_t device_len = sizeof device;
    getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, device, &device_len);
    socklen_t blocks = 0;
    getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, NULL, &blocks);
    int locked = 0;
    socklen_t locked_len = sizeof locked;
    getsockopt(fd, SOL_SOCKET, SO_LOCK_FILTER, &locked, &locked_len);
    int minttl = 0;
    socklen_t minttl_len = sizeof minttl;
    getsockopt(fd, IPPROTO_IP, IP_MINTTL, &minttl, &minttl_len);
    printf("bound port=%d device=%s filter=%u locked=%d minttl=%d\n",
           ntohs(((struct sockaddr_in *)&got)->sin_port), device, (unsigned)blocks, locked, minttl);
    return 0;
}
