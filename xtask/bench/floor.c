/* The floor of sampling: open, read to the end and close the files of LIST (one path a line: the
 * opens of TRACE_PASSES daemon sampling passes, in their order and multiplicity), one pass's share
 * of the list every INTERVAL_MS, cycling through it, for SECONDS. So it reads the same files at
 * the same rate as the daemon, also those the daemon reads only every few passes.
 * Prints its own CPU time (getrusage) every 10 s ("slice" lines, cumulative) and at the end.
 * usage: floor LIST INTERVAL_MS SECONDS TRACE_PASSES */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: floor LIST INTERVAL_MS SECONDS TRACE_PASSES\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    size_t cap = 1024, n = 0;
    char **paths = malloc(cap * sizeof *paths);
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0])
            continue;
        if (n == cap)
            paths = realloc(paths, (cap *= 2) * sizeof *paths);
        paths[n++] = strdup(line);
    }
    fclose(f);
    long interval_ns = atol(argv[2]) * 1000000L;
    long passes = atol(argv[3]) * 1000L / atol(argv[2]);
    static char buf[1 << 16];
    long failed = 0, bytes = 0;
    long slice = 10000L / atol(argv[2]);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long trace_passes = atol(argv[4]);
    if (trace_passes < 1)
        trace_passes = 1;
    size_t files = 0;
    for (long p = 0; p < passes; p++) {
        /* This pass's share of the traced passes. */
        long k = p % trace_passes;
        size_t from = (size_t)((unsigned long long)n * k / trace_passes);
        size_t to = (size_t)((unsigned long long)n * (k + 1) / trace_passes);
        files += to - from;
        for (size_t i = from; i < to; i++) {
            int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                failed++;
                continue;
            }
            ssize_t r;
            while ((r = read(fd, buf, sizeof buf)) > 0)
                bytes += r;
            close(fd);
        }
        next.tv_nsec += interval_ns;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        if (slice > 0 && (p + 1) % slice == 0) {
            printf("slice %.6f\n", cpu_seconds());
            fflush(stdout);
        }
    }
    double cpu = cpu_seconds();
    printf("cpu_seconds %.6f passes %ld files %zu failed %ld bytes %ld\n", cpu, passes, files,
           failed, bytes);
    return 0;
}
