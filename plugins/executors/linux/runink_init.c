/*
 * runink-init: PID 1 of a slice's sandbox (see launcher.py).
 *
 * Why a C program: the launcher starts one per warm sandbox with posix_spawn (vfork + exec,
 * ~0.5 ms), where a fork of the preloaded Python launcher costs ~6 ms of page-table copies.
 * It does only what a pid namespace's init must: exist (the namespace lives as long as it
 * does) and reap the orphans the slice leaves behind. The slice's own process (the payload)
 * is the launcher's child, not this one's: the launcher reaps it and then kills this init,
 * which ends whatever is left in the namespace.
 *
 * Protocol: stdin (fd 0) is a pipe from the launcher. One byte means "the payload exists",
 * as PID 2 of this namespace (the launcher forks it right after spawning this init);
 * end of file before that means there is none. From then on this init exits as soon as
 * the payload has exited, so that a sandbox whose launcher died does not outlive its slice.
 *
 * With "--die-with-launcher" (slices end with their executor, the default), fd 3 is the read
 * end of a pipe whose write end only the launcher holds: this init dies with the launcher
 * (PR_SET_PDEATHSIG; the launcher is single-threaded, so its thread is the process), and also
 * exits when that pipe hangs up. The pipe covers a launcher that died before the prctl (a
 * pid namespace's init cannot check getppid(): its parent is outside, so it reads 0).
 * Either way the init's end kills every process of the namespace.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* the same number on every architecture */
#endif

#define PAYLOAD_PID 2
#define LIFELINE_FD 3

static void reap_all(void) {
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

static int launcher_gone(void) {
    struct pollfd lifeline = {.fd = LIFELINE_FD, .events = POLLIN};
    return poll(&lifeline, 1, 0) != 0; /* hang-up (or an error): the launcher is gone */
}

int main(int argc, char **argv) {
    int lifeline = argc > 1 && strcmp(argv[1], "--die-with-launcher") == 0;
    if (lifeline) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || launcher_gone())
            return 1;
    }
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, NULL) != 0)
        return 1;
    int sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigfd < 0)
        return 1;

    char byte;
    ssize_t n;
    do
        n = read(0, &byte, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1)
        return 0; /* the launcher could not start the payload */
    close(0);

    int payload = (int)syscall(SYS_pidfd_open, PAYLOAD_PID, 0);
    if (payload < 0)
        return 0; /* gone already */

    struct pollfd watched[3] = {
        {.fd = payload, .events = POLLIN},
        {.fd = sigfd, .events = POLLIN},
        {.fd = lifeline ? LIFELINE_FD : -1, .events = POLLIN}, /* a negative fd is skipped */
    };
    for (;;) {
        reap_all();
        if (poll(watched, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (watched[0].revents)
            return 0; /* the payload exited: returning ends the namespace */
        if (watched[2].revents)
            return 1; /* the launcher died: so does the slice */
        if (watched[1].revents) {
            struct signalfd_siginfo info;
            while (read(sigfd, &info, sizeof info) == (ssize_t)sizeof info) {
            }
        }
    }
}
