/* The raw 4-hop relay floor for bench/vs-gearman.sh: what one job costs on
 * loopback when a broker does nothing but pass bytes along.
 *
 *   relay-floor [-n JOBS] [-s BYTES]
 *
 * Three processes, like a client, a broker and one worker:
 *
 *   client --TCP--> relay --TCP--> worker
 *   client <--TCP-- relay <--TCP-- worker
 *
 * - the relay (a forked child) listens on a free 127.0.0.1 port, accepts the
 *   worker's and the client's connection (each says which it is with one
 *   byte), tells the client it is ready, then in one thread poll()s both
 *   sockets and passes every whole frame from the client to the worker and
 *   from the worker to the client;
 * - the worker (a forked child) connects to the relay and writes every frame
 *   it reads back unchanged;
 * - the client (this process) sends JOBS jobs of BYTES pseudo-random bytes
 *   (tagged with the job number), one at a time: write the frame, read the
 *   answer, check it equals the input, next job.
 *
 * Frames are a 4-byte big-endian length and the payload, as taskmaster's.
 * Every socket has TCP_NODELAY and is blocking; a frame goes out in one
 * write() and, when it all arrived, comes in with one read(). So per job:
 * client write; relay poll, read, write; worker read, write; relay poll,
 * read, write; client read. No work, no queue, no bookkeeping.
 *
 * Latency is per job, from just before the client's write to the end of the
 * read that completed the answer (CLOCK_MONOTONIC), truncated to whole
 * microseconds; percentiles by nearest rank, as `taskmaster bench`. Prints
 * one JSON line on stdout:
 *
 *   {"jobs":N,"seconds":S,"jobs_per_sec":R,"p50_us":..,"p99_us":..,"failed":F}
 *
 * A wrong answer counts as failed; a lost connection fails every job not
 * answered yet. Exit status: 0 if no job failed, 1 otherwise, 2 on a usage
 * error. The client reaps its children before it exits, also on SIGTERM,
 * SIGINT or SIGHUP; should it die otherwise, they die with it
 * (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HELLO_WORKER 'W'
#define HELLO_CLIENT 'C'
#define READY 'R'
#define MAX_FRAME (64u << 20)

static pid_t children[2];
static int nchildren;
static int in_child; /* a forked role: leave on errors with _exit, no atexit */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void die(const char *what)
{
    fprintf(stderr, "relay-floor[%ld]: %s: %s\n", (long)getpid(), what, strerror(errno));
    if (in_child)
        _exit(1);
    exit(1);
}

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void set_nodelay(int fd)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        die("setsockopt TCP_NODELAY");
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A growable receive buffer: bytes [off, len) are read and not yet used. */
struct rbuf {
    unsigned char *data;
    size_t cap, off, len;
};

static void rbuf_init(struct rbuf *b, size_t cap)
{
    b->data = malloc(cap);
    if (b->data == NULL)
        die("malloc");
    b->cap = cap;
    b->off = b->len = 0;
}

/* Make room for at least `want` more bytes after len. */
static void rbuf_reserve(struct rbuf *b, size_t want)
{
    if (b->off > 0 && b->off == b->len)
        b->off = b->len = 0;
    if (b->cap - b->len >= want)
        return;
    if (b->off > 0) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->cap - b->len < want) {
        size_t cap = b->cap;
        while (cap - b->len < want)
            cap *= 2;
        unsigned char *d = realloc(b->data, cap);
        if (d == NULL)
            die("realloc");
        b->data = d;
        b->cap = cap;
    }
}

/* One read() into b. Returns bytes read, 0 on EOF, -1 on error. */
static ssize_t rbuf_fill(int fd, struct rbuf *b)
{
    rbuf_reserve(b, 65536);
    for (;;) {
        ssize_t r = read(fd, b->data + b->len, b->cap - b->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r > 0)
            b->len += (size_t)r;
        return r;
    }
}

/* Length of the run of whole frames at the start of b's unread bytes; -1 if
 * a frame is larger than MAX_FRAME. */
static long whole_frames(const struct rbuf *b)
{
    size_t p = b->off;
    while (b->len - p >= 4) {
        uint32_t n = be32(b->data + p);
        if (n > MAX_FRAME)
            return -1;
        if (b->len - p - 4 < n)
            break;
        p += 4 + (size_t)n;
    }
    return (long)(p - b->off);
}

static int connect_to(in_port_t port, char hello)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        die("connect");
    set_nodelay(fd);
    if (write_all(fd, &hello, 1) != 0)
        die("write hello");
    return fd;
}

/* In a forked child: die with the parent, even if it is already gone. */
static void child_setup(pid_t parent)
{
    in_child = 1;
    nchildren = 0;
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    sigaddset(&term, SIGHUP);
    sigprocmask(SIG_UNBLOCK, &term, NULL);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        die("prctl");
    if (getppid() != parent)
        _exit(1);
}

/* ---- worker: echo every frame ------------------------------------------- */
static void worker(in_port_t port)
{
    int fd = connect_to(port, HELLO_WORKER);
    struct rbuf b;
    rbuf_init(&b, 65536 + 8);
    for (;;) {
        ssize_t r = rbuf_fill(fd, &b);
        if (r == 0)
            _exit(0); /* the relay went away: done */
        if (r < 0)
            die("worker read");
        long n = whole_frames(&b);
        if (n < 0) {
            fprintf(stderr, "relay-floor: worker: frame too large\n");
            _exit(1);
        }
        /* echo: the answer frame is the job frame, bytes unchanged */
        if (n > 0 && write_all(fd, b.data + b.off, (size_t)n) != 0)
            die("worker write");
        b.off += (size_t)n;
    }
}

/* ---- relay: pass whole frames between the two --------------------------- */
static void relay(int lfd)
{
    int fds[2] = {-1, -1}; /* [0] client, [1] worker */
    while (fds[0] < 0 || fds[1] < 0) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            die("accept");
        }
        set_nodelay(fd);
        char hello;
        if (read_all(fd, &hello, 1) != 0)
            die("read hello");
        int i = hello == HELLO_CLIENT ? 0 : hello == HELLO_WORKER ? 1 : -1;
        if (i < 0 || fds[i] >= 0) {
            fprintf(stderr, "relay-floor: relay: unexpected hello %d\n", hello);
            _exit(1);
        }
        fds[i] = fd;
    }
    close(lfd);
    char ready = READY;
    if (write_all(fds[0], &ready, 1) != 0)
        die("write ready");

    struct rbuf b[2];
    rbuf_init(&b[0], 65536 + 8);
    rbuf_init(&b[1], 65536 + 8);
    struct pollfd p[2] = {{.fd = fds[0], .events = POLLIN}, {.fd = fds[1], .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        for (int i = 0; i < 2; i++) {
            if (p[i].revents == 0)
                continue;
            ssize_t r = rbuf_fill(fds[i], &b[i]);
            if (r == 0)
                _exit(0); /* either side gone: done (closing drops the other) */
            if (r < 0)
                die("relay read");
            long n = whole_frames(&b[i]);
            if (n < 0) {
                fprintf(stderr, "relay-floor: relay: frame too large\n");
                _exit(1);
            }
            if (n > 0 && write_all(fds[1 - i], b[i].data + b[i].off, (size_t)n) != 0)
                die("relay write");
            b[i].off += (size_t)n;
        }
    }
}

/* ---- client (this process) ------------------------------------------------ */
static void reap_children(void)
{
    for (int i = 0; i < nchildren; i++) {
        int st;
        /* They exit on EOF once our socket is closed; give them 2 s. */
        for (int t = 0; t < 200; t++) {
            pid_t r = waitpid(children[i], &st, WNOHANG);
            if (r == children[i] || (r < 0 && errno == ECHILD))
                goto next;
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        kill(children[i], SIGKILL);
        waitpid(children[i], &st, 0);
    next:;
    }
    nchildren = 0;
}

static void kill_children(void)
{
    for (int i = 0; i < nchildren; i++)
        kill(children[i], SIGTERM);
    reap_children();
}

/* SIGTERM/SIGINT/SIGHUP to the client: take the children down, reap them,
 * then die of the same signal (kill, waitpid and raise are
 * async-signal-safe). */
static void on_signal(int sig)
{
    for (int i = 0; i < nchildren; i++)
        kill(children[i], SIGKILL);
    for (int i = 0; i < nchildren; i++)
        waitpid(children[i], NULL, 0);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* nearest rank, as `taskmaster bench` */
static uint32_t percentile(const uint32_t *sorted, long n, double p)
{
    long rank = (long)((p / 100.0) * (double)n + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-n JOBS] [-s BYTES]\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    long njobs = 20000;
    long size = 64;
    int opt;
    while ((opt = getopt(argc, argv, "n:s:")) != -1) {
        switch (opt) {
        case 'n': njobs = atol(optarg); break;
        case 's': size = atol(optarg); break;
        default: usage(argv[0]);
        }
    }
    if (optind != argc || njobs < 1 || size < 0 || size > (long)MAX_FRAME)
        usage(argv[0]);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0)
        die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 8) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &alen) != 0)
        die("listen on 127.0.0.1:0");
    in_port_t port = ntohs(a.sin_port);

    atexit(kill_children);
    /* blocked until both children are recorded, so the handler sees them */
    sigset_t term, prev;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    sigaddset(&term, SIGHUP);
    sigprocmask(SIG_BLOCK, &term, &prev);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        child_setup(parent);
        relay(lfd);
        _exit(0);
    }
    children[nchildren++] = pid;
    close(lfd);
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        child_setup(parent);
        worker(port);
        _exit(0);
    }
    children[nchildren++] = pid;
    sigprocmask(SIG_SETMASK, &prev, NULL);

    int fd = connect_to(port, HELLO_CLIENT);
    char ready;
    if (read_all(fd, &ready, 1) != 0 || ready != READY) {
        fprintf(stderr, "relay-floor: the relay did not get ready\n");
        return 1;
    }

    size_t fsize = 4 + (size_t)size;
    unsigned char *frame = malloc(fsize);
    uint32_t *lat = malloc((size_t)njobs * sizeof *lat);
    if (frame == NULL || lat == NULL)
        die("malloc");
    frame[0] = (unsigned char)((uint32_t)size >> 24);
    frame[1] = (unsigned char)((uint32_t)size >> 16);
    frame[2] = (unsigned char)((uint32_t)size >> 8);
    frame[3] = (unsigned char)size;
    unsigned char *payload = frame + 4;
    struct rbuf in;
    rbuf_init(&in, 65536 + 8);
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    long done = 0, failed = 0, nlat = 0, mismatched = 0;
    int lost = 0;

    uint64_t t0 = now_ns();
    for (; done < njobs; done++) {
        for (long i = 0; i < size; i += 8) {
            uint64_t r = xorshift(&rng);
            memcpy(payload + i, &r, size - i < 8 ? (size_t)(size - i) : 8);
        }
        if (size >= 8) {
            uint64_t tag = (uint64_t)done;
            memcpy(payload, &tag, sizeof tag); /* each input unique */
        }
        uint64_t j0 = now_ns();
        if (write_all(fd, frame, fsize) != 0) {
            fprintf(stderr, "relay-floor: client write: %s\n", strerror(errno));
            lost = 1;
            break;
        }
        /* read until one whole frame is in */
        while (whole_frames(&in) <= 0) {
            if (whole_frames(&in) < 0) {
                fprintf(stderr, "relay-floor: client: frame too large\n");
                lost = 1;
                break;
            }
            ssize_t r = rbuf_fill(fd, &in);
            if (r <= 0) {
                fprintf(stderr, "relay-floor: client read: %s\n",
                        r == 0 ? "connection closed" : strerror(errno));
                lost = 1;
                break;
            }
        }
        if (lost)
            break;
        uint64_t us = (now_ns() - j0) / 1000;
        const unsigned char *ans = in.data + in.off;
        uint32_t n = be32(ans);
        if (n == (uint32_t)size && memcmp(ans + 4, payload, (size_t)size) == 0) {
            lat[nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
        } else {
            failed++;
            if (mismatched++ < 5)
                fprintf(stderr, "relay-floor: wrong answer to job %ld (%u bytes)\n", done, n);
        }
        in.off += 4 + (size_t)n;
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    failed += njobs - done;

    close(fd);
    reap_children();

    qsort(lat, (size_t)nlat, sizeof *lat, cmp_u32);
    printf("{\"jobs\":%ld,\"seconds\":%.6f,\"jobs_per_sec\":%.1f,", njobs, secs,
           (double)(njobs - failed) / secs);
    if (nlat > 0)
        printf("\"p50_us\":%u,\"p90_us\":%u,\"p99_us\":%u,\"max_us\":%u,",
               percentile(lat, nlat, 50), percentile(lat, nlat, 90), percentile(lat, nlat, 99),
               lat[nlat - 1]);
    else
        printf("\"p50_us\":null,\"p99_us\":null,");
    printf("\"failed\":%ld,\"size\":%ld}\n", failed, size);
    free(frame);
    free(lat);
    free(in.data);
    return failed ? 1 : 0;
}
