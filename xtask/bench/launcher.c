/* The bench's light launcher for the scale curve: what apptheus-exec does, without the Rust
 * runtime, threads or an exec'd command, so that 10,000 of them fit on a small machine. It
 * forks one child that sleeps (pause), then connects to the daemon's socket (the order of
 * Apptainer's starter and apptheus-exec), sends nothing and holds the connection until the
 * child exits; then it exits too. The daemon trusts this binary by its path (--trust.path).
 * usage: launcher SOCKET */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: launcher SOCKET\n");
        return 2;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        for (;;)
            pause();
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        perror("launcher: connect");
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    if (fd >= 0)
        close(fd);
    return 0;
}
