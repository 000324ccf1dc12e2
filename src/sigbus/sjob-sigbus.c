/* SIGBUS from a journal file that journald truncated under sjobd's reader: a zero page instead of death.
 *
 * sd-journal reads journal files through mmap. systemd 250 to 254 truncate a journal file when they archive it
 * (systemd PR 21372; issue 24320), so a reader that touches a page of a mapping beyond the new end of the file gets
 * SIGBUS, and a process without a handler dies: sjobd did, on bookworm (systemd 252), while a job's output rotated
 * the journal. journalctl and systemctl survive because they install systemd's sigbus handler (src/basic/sigbus.c),
 * which libsystemd does not export. This is the same handler: the faulting page is replaced by an anonymous zero
 * page, the read goes on, and sd-journal sees an invalid object there (an error the reader recovers from by
 * opening the journal again). Any other SIGBUS (not a bad address in a mapping, or sent with kill) is handled as it
 * was before this was installed.
 *
 * Loaded by sjobd with ctypes (supervisor/journal.py); built into the wheel by hatch_build.py.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static struct sigaction previous;
static uintptr_t page_mask;
static volatile sig_atomic_t replaced; /* pages replaced so far (saturates; only read for a log line) */

static void on_sigbus(int signo, siginfo_t *info, void *context) {
    (void)context;
    if (info->si_code == BUS_ADRERR && info->si_addr != NULL) {
        void *page = (void *)((uintptr_t)info->si_addr & page_mask);
        if (mmap(page, ~page_mask + 1, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == page) {
            if (replaced < 0x7fffffff)
                replaced++;
            return; /* the faulting read runs again, on zeros */
        }
    }
    /* Not ours to mend: the old action again. A fault repeats as the access runs again; a SIGBUS sent by someone
     * (si_code <= 0: kill, sigqueue, tgkill) is raised once more, since it does not repeat by itself. */
    sigaction(signo, &previous, NULL);
    if (info->si_code <= 0)
        raise(signo);
}

int sjob_sigbus_install(void) {
    struct sigaction action;
    long size = sysconf(_SC_PAGESIZE);
    if (size <= 0)
        return -1;
    page_mask = ~((uintptr_t)size - 1);
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    return sigaction(SIGBUS, &action, &previous);
}

int sjob_sigbus_replaced(void) {
    return replaced;
}
