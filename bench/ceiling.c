/* ceiling.c: the two ends of bench/master-ceiling.sh, which measures how many connections
 * per second one handoff master can accept and hand out (issue 16 item 3).
 *
 *   ceiling worker            a handoff worker that only receives connections and closes
 *                             them: READY with ACK|DONE|BATCH (the built-in worker's
 *                             frames), one ACK and one DONE frame per CONN frame, then
 *                             close. MODE=minimal in the environment: no READY (one
 *                             connection per message, nothing sent back).
 *   ceiling client HOST PORT INFLIGHT SECONDS
 *                             one process keeping INFLIGHT connections in flight for
 *                             SECONDS: non-blocking connect, a few request bytes (so a
 *                             deferred listener hands it over too), wait until the server
 *                             side ends it (EOF or reset: the worker closed it, so the
 *                             master handed it out), close, connect again. Prints the
 *                             number of connections completed.
 *
 * Build: cc -O2 -o ceiling bench/ceiling.c.  Loopback use only; every loop is bounded. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 253

static void put(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static int worker(void) {
    const char *env = getenv("HANDOFF_FD"), *mode = getenv("MODE");
    if (!env) { fprintf(stderr, "ceiling worker: HANDOFF_FD is not set: handoff run starts me\n"); return 2; }
    int chan = atoi(env), minimal = mode && !strcmp(mode, "minimal");
    if (!minimal) {
        uint8_t f[12] = {0x01, 1, 1, 0};
        put(f + 4, 0x1 | 0x2 | 0x8 /* ACK | DONE | BATCH */, 4);
        put(f + 8, (uint64_t)getpid(), 4);
        if (send(chan, f, sizeof f, MSG_NOSIGNAL) < 0) return 0;
    }
    static uint8_t msg[4 + 16 * MAX_BATCH], out[4 + 8 * MAX_BATCH];
    union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int) * MAX_BATCH)]; } ctl;
    for (;;) {
        struct iovec iov = {msg, sizeof msg};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
        ssize_t n = recvmsg(chan, &mh, MSG_CMSG_CLOEXEC);
        if (n <= 0) return 0;                         /* the master is gone */
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        if (!c || c->cmsg_type != SCM_RIGHTS) return 0; /* DRAIN (or the minimal worker's stop) */
        int nfd = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int fds[MAX_BATCH];
        memcpy(fds, CMSG_DATA(c), sizeof(int) * (size_t)nfd);
        if (!minimal) {
            uint16_t items = (uint16_t)(msg[2] | msg[3] << 8);
            if (msg[0] != 0x81 || items != nfd || n != 4 + 16 * (ssize_t)items) {
                fprintf(stderr, "ceiling worker: unexpected frame 0x%02x (%d items, %d descriptors)\n", msg[0], items, nfd);
                return 1;
            }
            for (int type = 0x02; type <= 0x03; type++) { /* ACK, then DONE before the close */
                out[0] = (uint8_t)type; out[1] = 1; put(out + 2, items, 2);
                for (int i = 0; i < items; i++) memcpy(out + 4 + 8 * i, msg + 4 + 16 * i, 8);
                if (send(chan, out, 4 + 8 * (size_t)items, MSG_NOSIGNAL) < 0) return 0;
            }
        }
        for (int i = 0; i < nfd; i++) close(fds[i]);
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static const char REQ[] = "GET / HTTP/1.1\r\nHost: ceiling\r\n\r\n";

static int open_one(int ep, const struct sockaddr_in *to) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)to, sizeof *to) < 0 && errno != EINPROGRESS) { close(fd); return -1; }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { close(fd); return -1; }
    return fd;
}

static int client(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: ceiling client HOST PORT INFLIGHT SECONDS\n"); return 2; }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3]))};
    if (inet_pton(AF_INET, argv[2], &to.sin_addr) != 1) { fprintf(stderr, "ceiling client: bad address %s\n", argv[2]); return 2; }
    int inflight = atoi(argv[4]);
    double secs = atof(argv[5]);
    if (inflight < 1 || inflight > 10000 || !(secs > 0 && secs <= 600)) {
        fprintf(stderr, "ceiling client: INFLIGHT 1..10000, SECONDS 0..600\n");
        return 2;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    char *sent = calloc(1 << 20, 1); /* by descriptor: the request was written */
    if (ep < 0 || !sent) return 1;
    unsigned long done = 0, failed = 0;
    int missing = inflight; /* connections to (re)open: a failed connect is retried */
    double end = now() + secs;
    struct epoll_event evs[256];
    while (now() < end) {
        for (; missing > 0; missing--)
            if (open_one(ep, &to) < 0) { failed++; break; }
        int n = epoll_wait(ep, evs, 256, missing > 0 ? 10 : 100);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            uint32_t e = evs[i].events;
            if (fd >= (1 << 20)) { close(fd); continue; }
            if (!sent[fd] && (e & EPOLLOUT) && !(e & (EPOLLERR | EPOLLHUP))) {
                /* Connected: say something, then wait for the server side to end it. */
                if (write(fd, REQ, sizeof REQ - 1) < 0) { /* the end comes as an event */ }
                sent[fd] = 1;
                struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
                continue;
            }
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                if (sent[fd]) done++; else failed++; /* refused before it was connected */
                sent[fd] = 0;
                close(fd);
                missing++;
            }
        }
    }
    printf("%lu %lu\n", done, failed);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "worker")) return worker();
    if (argc >= 2 && !strcmp(argv[1], "client")) return client(argc, argv);
    fprintf(stderr, "usage: ceiling worker | ceiling client HOST PORT INFLIGHT SECONDS\n");
    return 2;
}
