/* Gearman load client for bench/vs-gearman.sh, the counterpart of
 * `taskmaster bench`.
 *
 *   gm-load [-h HOST] [-p PORT] [-f FUNCTION] [-n JOBS] [-s BYTES]
 *           [-c CLIENTS] [-w PIPELINE] [-t TIMEOUT_MS]
 *
 * Starts CLIENTS threads, each with its own gearman_client_st (one TCP
 * connection), and sends JOBS jobs in all (split evenly) of BYTES
 * pseudo-random bytes each, to FUNCTION (an echo). Every thread keeps up to
 * PIPELINE jobs in flight as a sliding window: libgearman's non-blocking
 * client API (GEARMAN_CLIENT_NON_BLOCKING + gearman_client_run_tasks +
 * gearman_client_wait); whenever run_tasks hands control back, the window is
 * topped up with new tasks. PIPELINE = 1 is closed loop: submit, wait, submit.
 *
 * Each job gets its own unique ID ("PID-CLIENT-JOB"). Left to itself,
 * libgearman 1.1 makes a time-based UUID (libuuid uuid_generate_time_safe)
 * per job, and with no uuidd or clock state file two threads of one process
 * can draw the same clock sequence and then make identical UUIDs in the same
 * microsecond; gearmand coalesces jobs with equal unique IDs, so one client
 * gets the other client's answer (seen here: a few wrong answers in one run
 * in 10 to 60 with 32 clients, always between the same two threads).
 *
 * Every answer must equal its input byte for byte; anything else (wrong
 * bytes, WORK_FAIL, WORK_EXCEPTION, a lost connection, a timeout) counts in
 * "failed". Latency is per job: from just before gearman_client_add_task to
 * the WORK_COMPLETE callback. Prints one JSON line on stdout:
 *
 *   {"jobs":N,"seconds":S,"jobs_per_sec":R,"p50_us":..,"p99_us":..,"failed":F}
 *
 * Exit status: 0 if no job failed, 1 otherwise, 2 on a usage error.
 */
#include <libgearman/gearman.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct thr;

struct slot { /* one in-flight job; its buffer must outlive the task */
    struct thr *t;
    uint64_t t0_ns;
    char unique[48];
    unsigned char *buf;
    struct slot *next_free;
};

struct thr {
    pthread_t id;
    int index;
    long jobs;          /* jobs this thread must send */
    long sent, done, failed;
    long mismatched, work_failed; /* parts of failed, for the stderr report */
    uint32_t *lat_us;   /* one entry per completed job */
    long nlat;
    struct slot *slots, *free_list;
    unsigned char *bufs;
    uint64_t rng;
};

static const char *host = "127.0.0.1";
static in_port_t port = 4730;
static const char *func = "echo";
static long njobs = 10000;
static size_t size = 64;
static int nclients = 1;
static int window = 1;
static int timeout_ms = 30000;
static pthread_barrier_t barrier;

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

static void finish(struct slot *s, int ok)
{
    struct thr *t = s->t;
    if (ok) {
        uint64_t us = (now_ns() - s->t0_ns) / 1000;
        t->lat_us[t->nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    } else {
        t->failed++;
    }
    t->done++;
    s->next_free = t->free_list;
    t->free_list = s;
}

static gearman_return_t on_complete(gearman_task_st *task)
{
    struct slot *s = gearman_task_context(task);
    size_t n = gearman_task_data_size(task);
    const void *d = gearman_task_data(task);
    int ok = n == size && (n == 0 || (d != NULL && memcmp(d, s->buf, n) == 0));
    if (!ok && s->t->mismatched++ < 5) {
        uint32_t want[2] = {0, 0}, got[2] = {0, 0};
        if (size >= 8)
            memcpy(want, s->buf, sizeof want);
        if (n >= 8 && d != NULL)
            memcpy(got, d, sizeof got);
        fprintf(stderr,
                "gm-load: wrong answer: job %u of client %u (handle %s) got %zu bytes"
                " tagged as job %u of client %u\n",
                want[1], want[0], gearman_task_job_handle(task), n, got[1], got[0]);
    }
    finish(s, ok);
    return GEARMAN_SUCCESS;
}

static gearman_return_t on_fail(gearman_task_st *task)
{
    struct slot *s = gearman_task_context(task);
    if (s->t->work_failed++ == 0)
        fprintf(stderr, "gm-load: client %d: job failed: %s\n", s->t->index,
                gearman_strerror(gearman_task_return(task)));
    finish(s, 0);
    return GEARMAN_SUCCESS;
}

static void *run(void *arg)
{
    struct thr *t = arg;
    gearman_client_st *c = gearman_client_create(NULL);
    int setup_ok = c != NULL;
    if (setup_ok && gearman_client_add_server(c, host, port) != GEARMAN_SUCCESS) {
        fprintf(stderr, "gm-load: add_server: %s\n", gearman_client_error(c));
        setup_ok = 0;
    }
    if (setup_ok) {
        /* FREE_TASKS: the library frees each task once it has finished. */
        gearman_client_add_options(c, GEARMAN_CLIENT_NON_BLOCKING | GEARMAN_CLIENT_FREE_TASKS);
        gearman_client_set_timeout(c, timeout_ms);
        gearman_client_set_complete_fn(c, on_complete);
        gearman_client_set_fail_fn(c, on_fail);
        gearman_client_set_exception_fn(c, on_fail);
    }
    pthread_barrier_wait(&barrier);

    while (setup_ok && t->done < t->jobs) {
        while (t->sent < t->jobs && t->free_list != NULL) {
            struct slot *s = t->free_list;
            t->free_list = s->next_free;
            for (size_t i = 0; i < size; i += 8) {
                uint64_t r = xorshift(&t->rng);
                memcpy(s->buf + i, &r, size - i < 8 ? size - i : 8);
            }
            /* Tag the payload with (client, job number) when it has room, so
             * that a wrong answer can be traced to the job it belongs to. */
            if (size >= 8) {
                uint32_t tag[2] = {(uint32_t)t->index, (uint32_t)t->sent};
                memcpy(s->buf, tag, sizeof tag);
            }
            snprintf(s->unique, sizeof s->unique, "%ld-%d-%ld", (long)getpid(), t->index,
                     t->sent);
            gearman_return_t rc;
            s->t0_ns = now_ns();
            if (gearman_client_add_task(c, NULL, s, func, s->unique, s->buf, size, &rc) == NULL) {
                fprintf(stderr, "gm-load: add_task: %s\n", gearman_client_error(c));
                setup_ok = 0;
                break;
            }
            t->sent++;
        }
        if (!setup_ok)
            break;
        gearman_return_t rc = gearman_client_run_tasks(c);
        if (rc == GEARMAN_IO_WAIT) {
            rc = gearman_client_wait(c);
            if (rc != GEARMAN_SUCCESS && rc != GEARMAN_IO_WAIT) {
                fprintf(stderr, "gm-load: wait: %s\n", gearman_client_error(c));
                break;
            }
        } else if (rc != GEARMAN_SUCCESS) {
            fprintf(stderr, "gm-load: run_tasks: %s\n", gearman_client_error(c));
            break;
        }
    }
    /* Whatever did not complete (connection lost, timeout) has failed. */
    t->failed += t->jobs - t->done;
    if (c != NULL)
        gearman_client_free(c); /* also frees any task still pending */
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [-h HOST] [-p PORT] [-f FUNCTION] [-n JOBS] [-s BYTES]\n"
            "          [-c CLIENTS] [-w PIPELINE] [-t TIMEOUT_MS]\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "h:p:f:n:s:c:w:t:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = (in_port_t)atoi(optarg); break;
        case 'f': func = optarg; break;
        case 'n': njobs = atol(optarg); break;
        case 's': size = (size_t)atol(optarg); break;
        case 'c': nclients = atoi(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 't': timeout_ms = atoi(optarg); break;
        default: usage(argv[0]);
        }
    }
    if (optind != argc || njobs < 1 || nclients < 1 || window < 1 || port == 0)
        usage(argv[0]);
    if (nclients > njobs)
        nclients = (int)njobs;

    struct thr *ts = calloc((size_t)nclients, sizeof *ts);
    if (ts == NULL) {
        perror("calloc");
        return 1;
    }
    for (int i = 0; i < nclients; i++) {
        struct thr *t = &ts[i];
        t->index = i;
        t->jobs = njobs / nclients + (i < njobs % nclients);
        t->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
        t->lat_us = malloc((size_t)t->jobs * sizeof *t->lat_us);
        t->slots = calloc((size_t)window, sizeof *t->slots);
        t->bufs = malloc((size_t)window * (size ? size : 1));
        if (t->lat_us == NULL || t->slots == NULL || t->bufs == NULL) {
            perror("malloc");
            return 1;
        }
        for (int k = 0; k < window; k++) {
            t->slots[k].t = t;
            t->slots[k].buf = t->bufs + (size_t)k * size;
            t->slots[k].next_free = k + 1 < window ? &t->slots[k + 1] : NULL;
        }
        t->free_list = &t->slots[0];
    }

    pthread_barrier_init(&barrier, NULL, (unsigned)nclients + 1);
    for (int i = 0; i < nclients; i++) {
        if (pthread_create(&ts[i].id, NULL, run, &ts[i]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    pthread_barrier_wait(&barrier);
    uint64_t t0 = now_ns();
    for (int i = 0; i < nclients; i++)
        pthread_join(ts[i].id, NULL);
    double secs = (double)(now_ns() - t0) / 1e9;

    long failed = 0, nlat = 0;
    for (int i = 0; i < nclients; i++) {
        failed += ts[i].failed;
        nlat += ts[i].nlat;
    }
    uint32_t *all = malloc((size_t)(nlat ? nlat : 1) * sizeof *all);
    if (all == NULL) {
        perror("malloc");
        return 1;
    }
    long k = 0;
    for (int i = 0; i < nclients; i++) {
        memcpy(all + k, ts[i].lat_us, (size_t)ts[i].nlat * sizeof *all);
        k += ts[i].nlat;
    }
    qsort(all, (size_t)nlat, sizeof *all, cmp_u32);

    printf("{\"jobs\":%ld,\"seconds\":%.6f,\"jobs_per_sec\":%.1f,", njobs, secs,
           (double)(njobs - failed) / secs);
    if (nlat > 0)
        printf("\"p50_us\":%u,\"p99_us\":%u,", all[(nlat - 1) * 50 / 100],
               all[(nlat - 1) * 99 / 100]);
    else
        printf("\"p50_us\":null,\"p99_us\":null,");
    printf("\"failed\":%ld,\"clients\":%d,\"pipeline\":%d,\"size\":%zu}\n", failed,
           nclients, window, size);

    for (int i = 0; i < nclients; i++) {
        free(ts[i].lat_us);
        free(ts[i].slots);
        free(ts[i].bufs);
    }
    free(ts);
    free(all);
    pthread_barrier_destroy(&barrier);
    return failed ? 1 : 0;
}
