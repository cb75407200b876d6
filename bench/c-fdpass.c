/* c-fdpass.c: the floor of the descriptor-passing design, for bench/vs-nginx.sh.
 *
 * One master accepts every connection and passes it round robin to N forked workers
 * over SOCK_SEQPACKET pairs (SCM_RIGHTS), then closes its copy; each worker reads the
 * request, writes a fixed answer and closes. No supervision, no load reports, no
 * error handling beyond staying alive: it is what handoff's master would cost if it
 * did nothing but pass descriptors, so the two can be compared in one run.
 *
 *   c-fdpass blocking PORT WORKERS   master blocks in accept4(): nothing else to wait on
 *   c-fdpass epoll PORT WORKERS      master is an epoll loop (non-blocking listener,
 *                                    accept until EAGAIN), the shape handoff's takes
 *   ... PORT WORKERS deferred        the same with TCP_DEFER_ACCEPT on the listener
 *                                    (as nginx `deferred`, handoff `,deferred`)
 *
 * Connection per request only (the worker answers one request and closes).
 * Workers die with the master (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

static const char ANSWER[] = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n";

static void serve(int chan) {
    char buf[4096];
    for (;;) {
        union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl;
        char byte;
        struct iovec iov = { &byte, 1 };
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b };
        if (recvmsg(chan, &m, MSG_CMSG_CLOEXEC) <= 0)
            _exit(0);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        if (!c || c->cmsg_type != SCM_RIGHTS)
            continue;
        int fd;
        memcpy(&fd, CMSG_DATA(c), sizeof fd);
        if (read(fd, buf, sizeof buf) > 0 && write(fd, ANSWER, sizeof ANSWER - 1) < 0)
            perror("write");
        close(fd);
    }
}

static void pass(int chan, int fd) {
    union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl;
    char byte = 0;
    struct iovec iov = { &byte, 1 };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b };
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(chan, &m, 0) < 0)
        perror("sendmsg");
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5 || (strcmp(argv[1], "blocking") && strcmp(argv[1], "epoll"))
        || (argc == 5 && strcmp(argv[4], "deferred"))) {
        fprintf(stderr, "usage: %s blocking|epoll PORT WORKERS [deferred]\n", argv[0]);
        return 2;
    }
    int epoll = !strcmp(argv[1], "epoll"), n = atoi(argv[3]);
    if (n < 1 || n > 64) {
        fprintf(stderr, "WORKERS must be 1..64\n");
        return 2;
    }
    int chans[64];
    for (int i = 0; i < n; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
            return perror("socketpair"), 1;
        pid_t pid = fork();
        if (pid < 0)
            return perror("fork"), 1;
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            close(sv[0]);
            serve(sv[1]);
        }
        close(sv[1]);
        chans[i] = sv[0];
    }
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (epoll ? SOCK_NONBLOCK : 0), 0), one = 1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (argc == 5)
        setsockopt(l, IPPROTO_TCP, TCP_DEFER_ACCEPT, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 4096) < 0)
        return perror("bind/listen"), 1;
    unsigned next = 0;
    if (!epoll) {
        for (;;) {
            int fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0)
                continue;
            pass(chans[next++ % n], fd);
            close(fd);
        }
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.fd = l };
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    for (;;) {
        struct epoll_event got[16];
        if (epoll_wait(ep, got, 16, -1) < 0 && errno != EINTR)
            return perror("epoll_wait"), 1;
        for (;;) {
            int fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EAGAIN)
                    break;
                continue;
            }
            pass(chans[next++ % n], fd);
            close(fd);
        }
    }
}
