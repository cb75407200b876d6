/* handoff reference worker in C: plain recvmsg + CMSG_FIRSTHDR (see docs/PROTOCOL.md).
 *
 * Protocol: the full protocol minus HEARTBEAT. READY with ACK|DONE, ACK on receipt,
 * DONE before each close (so least-conn is exact), DRAIN or end of file: exit 0.
 * It serves one connection at a time (HTTP/1.1 keep-alive), so it cannot promise a
 * HEARTBEAT while a client holds it; the master then only watches its process.
 *
 * Build: cc -O2 -o worker examples/c/worker.c    Run: handoff run -- ./worker */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int chan;

static void put(uint8_t *p, uint64_t v, int n) { /* little-endian, whatever the host */
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void frame(uint8_t type, uint64_t a, uint64_t b, int len) { /* READY, or ACK/DONE of one id */
    uint8_t f[12] = {type, 1, 1, 0};
    if (type == 0x01) { put(f + 4, a, 4); put(f + 8, b, 4); } else put(f + 4, a, 8);
    if (send(chan, f, 4 + (size_t)len, MSG_NOSIGNAL) < 0) exit(0); /* the master is gone */
}

static void serve(int fd, const char *me) {
    char req[8192], resp[512], body[128];
    size_t have = 0;
    for (;;) {
        char *end;
        while (!(end = memmem(req, have, "\r\n\r\n", 4))) {
            ssize_t r = have < sizeof req ? read(fd, req + have, sizeof req - have) : -1;
            if (r <= 0) return; /* client closed, error, or a header too large */
            have += (size_t)r;
        }
        *end = 0;
        int close_it = strcasestr(req, "connection: close") != NULL;
        int blen = snprintf(body, sizeof body, "hello from C worker %s (pid %d)\n", me, (int)getpid());
        int rlen = snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nX-Handoff-Worker: %s\r\nContent-Length: %d\r\n"
                            "Connection: %s\r\n\r\n%s", me, blen, close_it ? "close" : "keep-alive", body);
        if (send(fd, resp, (size_t)rlen, MSG_NOSIGNAL) != rlen || close_it) return;
        size_t used = (size_t)(end + 4 - req);
        memmove(req, req + used, have - used);
        have -= used;
    }
}

int main(void) {
    const char *env = getenv("HANDOFF_FD"), *me = getenv("HANDOFF_WORKER_ID");
    if (!env) { fprintf(stderr, "HANDOFF_FD is not set: run me with handoff run -- ./worker\n"); return 2; }
    chan = atoi(env);
    frame(0x01, 0x3 /* ACK | DONE */, (uint64_t)getpid(), 8);
    for (;;) {
        uint8_t msg[4096];
        union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } ctl; /* room for one fd */
        struct iovec iov = {msg, sizeof msg};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
        ssize_t n = recvmsg(chan, &mh, MSG_CMSG_CLOEXEC);
        if (n <= 0) return 0;             /* end of file: the master is gone */
        if (msg[0] == 0x82) return 0;     /* DRAIN: nothing held between messages, so done */
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        if (msg[0] != 0x81 || n != 20 || (mh.msg_flags & MSG_CTRUNC) || !c || c->cmsg_type != SCM_RIGHTS) {
            fprintf(stderr, "worker %s: unexpected frame type 0x%02x\n", me ? me : "?", msg[0]);
            return 1;
        }
        int fd;
        memcpy(&fd, CMSG_DATA(c), sizeof fd);
        uint64_t id = 0;
        for (int i = 7; i >= 0; i--) id = id << 8 | msg[4 + i];
        frame(0x02, id, 0, 8); /* ACK */
        serve(fd, me ? me : "0");
        frame(0x03, id, 0, 8); /* DONE, before the close */
        close(fd);
    }
}
