/* The floor of sampling: open, read to the end and close each file of LIST (one path a line, in
 * the order and multiplicity of one daemon sampling pass) every INTERVAL_MS, for SECONDS.
 * Prints its own CPU time (getrusage) every 10 s ("slice" lines, cumulative) and at the end.
 * usage: floor LIST INTERVAL_MS SECONDS */
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
    if (argc != 4) {
        fprintf(stderr, "usage: floor LIST INTERVAL_MS SECONDS\n");
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
    for (long p = 0; p < passes; p++) {
        for (size_t i = 0; i < n; i++) {
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
    printf("cpu_seconds %.6f passes %ld files %zu failed %ld bytes %ld\n", cpu, passes, n, failed,
           bytes);
    return 0;
}
