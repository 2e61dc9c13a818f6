/* The limit column of bench/run.py: start N processes with posix_spawn and nothing else.
 *
 *   spawn_limit N OUTFILE|- ARGV...
 *
 * Starts N copies of ARGV (looked up in PATH) as fast as the kernel allows, with stdout and
 * stderr on OUTFILE (opened O_APPEND by each child) or inherited ("-"); then sleeps in
 * sigsuspend until SIGTERM/SIGINT, sends SIGTERM to every child, reaps them all and exits 0.
 * No supervision at all: a child that dies is reaped and not restarted. What supervise does
 * per service beyond this loop (config, state, logs, cgroups, restarts) is its own cost.
 * Compiled by bench/run.py at bench time (gcc -O2) into a temp dir.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
static volatile sig_atomic_t stopping = 0;

static void on_stop(int sig) { (void)sig; stopping = 1; }

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: spawn_limit N OUTFILE|- ARGV...\n");
        return 2;
    }
    long n = strtol(argv[1], NULL, 10);
    if (n < 1 || n > 100000) {
        fprintf(stderr, "spawn_limit: N must be 1..100000\n");
        return 2;
    }
    pid_t *pids = calloc((size_t)n, sizeof(pid_t));
    if (!pids) return 1;

    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGCHLD);
    sigprocmask(SIG_BLOCK, &block, &old);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setsigmask(&attr, &old); /* children start with the caller's mask */
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (strcmp(argv[2], "-") != 0) {
        posix_spawn_file_actions_addopen(&actions, 1, argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
        posix_spawn_file_actions_adddup2(&actions, 1, 2);
    }

    long started = 0;
    for (long i = 0; i < n; i++) {
        int err = posix_spawnp(&pids[i], argv[3], &actions, &attr, &argv[3], environ);
        if (err) {
            fprintf(stderr, "spawn_limit: %s: %s\n", argv[3], strerror(err));
            break;
        }
        started++;
    }

    while (!stopping) sigsuspend(&old); /* SIGCHLD stays blocked: nothing to do on a death */

    for (long i = 0; i < started; i++) kill(pids[i], SIGTERM);
    for (long left = started; left > 0;) {
        pid_t pid = wait(NULL);
        if (pid > 0) left--;
        else if (errno != EINTR) break;
    }
    return 0;
}
