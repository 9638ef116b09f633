/* The floor of sampling. PROBES (one path a line: every container's CPU probe file) are opened
 * once and re-read with one pread at offset 0 every INTERVAL_MS (the least any reader of these
 * files can do); REST (one path a line, may be empty: the other files the daemon opened over
 * REST_PASSES passes, in their order and multiplicity) are opened, read to the end and closed,
 * one pass's share of the list per interval, cycling through it: the same files at the same
 * rate as the daemon, also those it reads only every few passes. For SECONDS.
 * Prints its own CPU time (getrusage) every 10 s ("slice" lines, cumulative) and at the end.
 * usage: floor PROBES REST INTERVAL_MS SECONDS REST_PASSES */
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

static char **read_list(const char *path, size_t *count) {
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(1);
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
    *count = n;
    return paths;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: floor PROBES REST INTERVAL_MS SECONDS REST_PASSES\n");
        return 2;
    }
    size_t nprobes, nrest;
    char **probes = read_list(argv[1], &nprobes);
    char **rest = read_list(argv[2], &nrest);
    int *fds = malloc((nprobes + 1) * sizeof *fds);
    long failed = 0, bytes = 0;
    for (size_t i = 0; i < nprobes; i++) {
        fds[i] = open(probes[i], O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0)
            failed++;
    }
    long interval_ms = atol(argv[3]);
    long interval_ns = interval_ms * 1000000L;
    long passes = atol(argv[4]) * 1000L / interval_ms;
    long rest_passes = atol(argv[5]);
    if (rest_passes < 1)
        rest_passes = 1;
    static char buf[1 << 16];
    long slice = 10000L / interval_ms;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    size_t files = 0;
    for (long p = 0; p < passes; p++) {
        for (size_t i = 0; i < nprobes; i++) {
            if (fds[i] < 0)
                continue;
            ssize_t r = pread(fds[i], buf, sizeof buf, 0);
            if (r > 0)
                bytes += r;
            else
                failed++;
            files++;
        }
        /* This pass's share of the traced passes. */
        long k = p % rest_passes;
        size_t from = (size_t)((unsigned long long)nrest * k / rest_passes);
        size_t to = (size_t)((unsigned long long)nrest * (k + 1) / rest_passes);
        files += to - from;
        for (size_t i = from; i < to; i++) {
            int fd = open(rest[i], O_RDONLY | O_CLOEXEC);
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
