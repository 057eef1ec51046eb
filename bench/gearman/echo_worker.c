/* Gearman echo worker for bench/vs-gearman.sh: registers the function "echo"
 * and answers every job with its workload unchanged.
 *
 *   gm-echo-worker HOST PORT
 *
 * Runs until killed, or exits 1 when the job server goes away.
 */
#include <libgearman/gearman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *echo(gearman_job_st *job, void *context, size_t *result_size,
                  gearman_return_t *ret)
{
    (void)context;
    size_t n = gearman_job_workload_size(job);
    /* libgearman takes ownership of the returned buffer and free()s it. */
    void *out = malloc(n ? n : 1);
    if (out == NULL) {
        *result_size = 0;
        *ret = GEARMAN_WORK_FAIL;
        return NULL;
    }
    if (n)
        memcpy(out, gearman_job_workload(job), n);
    *result_size = n;
    *ret = GEARMAN_SUCCESS;
    return out;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    gearman_worker_st *w = gearman_worker_create(NULL);
    if (w == NULL) {
        fprintf(stderr, "gm-echo-worker: gearman_worker_create failed\n");
        return 1;
    }
    gearman_return_t rc = gearman_worker_add_server(w, argv[1], (in_port_t)atoi(argv[2]));
    if (rc != GEARMAN_SUCCESS) {
        fprintf(stderr, "gm-echo-worker: add_server: %s\n", gearman_worker_error(w));
        gearman_worker_free(w);
        return 1;
    }
    rc = gearman_worker_add_function(w, "echo", 0, echo, NULL);
    if (rc != GEARMAN_SUCCESS) {
        fprintf(stderr, "gm-echo-worker: add_function: %s\n", gearman_worker_error(w));
        gearman_worker_free(w);
        return 1;
    }
    for (;;) {
        rc = gearman_worker_work(w);
        if (rc != GEARMAN_SUCCESS) {
            fprintf(stderr, "gm-echo-worker: work: %s\n", gearman_worker_error(w));
            break;
        }
    }
    gearman_worker_free(w);
    return 1;
}
