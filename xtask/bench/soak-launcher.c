/* The soak's launcher (`cargo xtask soak`, apptheus/tests/soak.rs): the bench's light launcher
 * (launcher.c) with a short command of a given kind instead of a sleeping child. It joins the
 * job cgroup directories it is given (a batch job's, memory-limited), forks the command (held
 * on a pipe), connects to the daemon's socket and waits until it is admitted (its own cgroup
 * line names its container, `..._<pid>`), so that every launcher the soak starts is a
 * container with its work inside it. Then the command runs HOLD_MS and ends as KIND says:
 *   ok     exit 0          fail    exit 3          signal  killed by SIGTERM (143)
 *   oom    touches 64 MiB (over the job's 32 MiB limit: OOM-killed, 137; exits 4 if not)
 *   forks  forks 8 children that exit at once, then exit 0
 * It exits with the command's status (128+N for signal N), as apptheus-exec does; 120 when
 * not admitted within 60 s, 121 when the daemon closed the connection (refused), 122 when it
 * could not connect. The daemon trusts this binary by its path (--trust.path).
 * usage: soak-launcher SOCKET KIND HOLD_MS [JOB_CGROUP_DIR...] */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void work(const char *kind, long hold_ms) {
    struct timespec ts = {.tv_sec = hold_ms / 1000, .tv_nsec = (hold_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
    if (!strcmp(kind, "ok"))
        _exit(0);
    if (!strcmp(kind, "fail"))
        _exit(3);
    if (!strcmp(kind, "signal")) {
        raise(SIGTERM);
        _exit(5);
    }
    if (!strcmp(kind, "oom")) {
        size_t len = 64u << 20;
        char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            _exit(6);
        for (size_t i = 0; i < len; i += 4096)
            p[i] = 1;
        _exit(4);
    }
    if (!strcmp(kind, "forks")) {
        for (int i = 0; i < 8; i++)
            if (fork() == 0)
                _exit(0);
        while (wait(NULL) > 0 || errno == EINTR)
            ;
        _exit(0);
    }
    _exit(2);
}

/* Whether /proc/self/cgroup shows this process in its container: a line ending `_<pid>`. */
static int admitted(void) {
    char want[32], buf[8192];
    snprintf(want, sizeof want, "_%d\n", (int)getpid());
    int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len <= 0)
        return 0;
    buf[len] = 0;
    return strstr(buf, want) != NULL;
}

/* Best effort: without CAP_SYS_RESOURCE (root in a user namespace) the launcher is not
 * protected, and a launcher the OOM killer took shows as such in the soak's exit codes. */
static void oom_score_adj(const char *v) {
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, v, strlen(v)) < 0) {
        }
        close(fd);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: soak-launcher SOCKET KIND HOLD_MS [JOB_CGROUP_DIR...]\n");
        return 2;
    }
    long hold_ms = atol(argv[3]);
    for (int i = 4; i < argc; i++) {
        char path[4096], pid[32];
        snprintf(path, sizeof path, "%s/cgroup.procs", argv[i]);
        int n = snprintf(pid, sizeof pid, "%d", (int)getpid());
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, pid, n) != n) {
            perror(path);
            return 2;
        }
        close(fd);
    }
    /* As slurmstepd protects itself: in a job at its memory limit, the OOM killer takes the
     * command, never the launcher (which would end the container without the command's
     * status). The command gets the default back. */
    oom_score_adj("-1000");
    int go[2];
    if (pipe2(go, O_CLOEXEC) < 0) {
        perror("pipe");
        return 2;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 2;
    }
    if (child == 0) {
        char c;
        oom_score_adj("0");
        close(go[1]);
        while (read(go[0], &c, 1) < 0 && errno == EINTR)
            ;
        work(argv[2], hold_ms);
    }
    close(go[0]);
    int code = 0;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        code = 122;
    } else {
        /* Polled every 1 ms at first, backing off to 50 ms: 200 launchers polling fast while
         * a loaded daemon admits them would take the CPU it needs. The socket's hangup (a
         * refusal) ends the wait too. */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        for (int waited = 0, every = 1;; waited += every, every = every < 25 ? 2 * every : 50) {
            if (admitted())
                break;
            if (waited >= 60000) {
                code = 120;
                break;
            }
            if (poll(&p, 1, every) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
                code = admitted() ? 0 : 121;
                break;
            }
        }
    }
    /* The command runs either way: a launcher never keeps its job from running. */
    if (write(go[1], "g", 1) < 0)
        perror("launcher: go");
    close(go[1]);
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    if (fd >= 0)
        close(fd);
    if (code)
        return code;
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
