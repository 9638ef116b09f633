/* The host's process churn, for the eBPF hook cost: fork+_exit or fork+execve(/bin/true)+exit,
 * waiting for each child, N times. Prints the mean wall time per iteration (CLOCK_MONOTONIC).
 * usage: forkloop exit|exec ITERATIONS */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "exit") && strcmp(argv[1], "exec"))) {
        fprintf(stderr, "usage: forkloop exit|exec ITERATIONS\n");
        return 2;
    }
    int exec = strcmp(argv[1], "exec") == 0;
    long n = atol(argv[2]);
    char *const child_argv[] = {"true", NULL};
    char *const child_envp[] = {NULL};
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            if (exec)
                execve("/bin/true", child_argv, child_envp);
            _exit(0);
        }
        int st;
        if (waitpid(pid, &st, 0) < 0) {
            perror("waitpid");
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("iterations %ld ns_per_iteration %.1f\n", n, ns / (double)n);
    return 0;
}
