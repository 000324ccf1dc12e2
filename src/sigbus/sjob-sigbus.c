/* SIGBUS from a journal file that journald truncated under sjobd's reader: a zero page instead of death.
 *
 * sd-journal reads journal files through mmap. systemd 250 to 254 truncate a journal file when they archive it
 * (systemd PR 21372; issue 24320), so a reader that touches a page of a mapping beyond the new end of the file gets
 * SIGBUS, and a process without a handler dies: sjobd did, on bookworm (systemd 252), while a job's output rotated
 * the journal. journalctl and systemctl survive because they install systemd's sigbus handler (src/basic/sigbus.c),
 * which libsystemd does not export. This is the same handler, narrower: only a page of a mapping of a journal file
 * (a path under a "journal" directory ending in ".journal" or ".journal~", as /proc/self/maps names it) is
 * replaced by an anonymous zero page, and the read goes on; sd-journal then finds no valid object there and skips
 * it or fails, and sjobd's reader reads again (a gap, as when rotation hides a file). Any other SIGBUS (another
 * mapping, not a bad address in a mapping, or sent with kill) is handled as it was before this was installed, so a
 * real bug elsewhere in sjobd still kills it rather than reading zeros.
 *
 * Loaded by sjobd with ctypes (supervisor/journal.py); built into the wheel by hatch_build.py. Only system calls
 * in the handler (open, read, close, mmap, sigaction, raise): nothing that allocates or takes a lock.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static struct sigaction previous;
static bool installed;
static uintptr_t page_mask;
static volatile sig_atomic_t replaced; /* pages replaced so far (saturates; only read for a log line) */

static bool ends_with(const char *s, size_t n, const char *suffix) {
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* The hexadecimal number at line[*i], up to `stop` or the end; *i is left on the `stop`. */
static uintptr_t hex_until(const char *line, size_t n, size_t *i, char stop) {
    uintptr_t value = 0;
    for (; *i < n && line[*i] != stop; (*i)++) {
        char c = line[*i];
        value = value * 16 + (uintptr_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return value;
}

/* Whether one line of /proc/self/maps ("start-end perms offset dev inode   path") maps `addr` from a journal file. */
static bool journal_line(const char *line, size_t n, uintptr_t addr) {
    size_t i = 0;
    uintptr_t start = hex_until(line, n, &i, '-');
    i++;
    uintptr_t end = hex_until(line, n, &i, ' ');
    if (addr < start || addr >= end)
        return false;
    const char *path = memchr(line, '/', n);
    if (path == NULL)
        return false;
    size_t length = n - (size_t)(path - line);
    if (ends_with(path, length, " (deleted)"))
        length -= strlen(" (deleted)");
    if (!ends_with(path, length, ".journal") && !ends_with(path, length, ".journal~"))
        return false;
    return memmem(path, length, "/journal/", strlen("/journal/")) != NULL;
}

static bool in_journal_file(uintptr_t addr) {
    static char buffer[8192]; /* one fault at a time: SIGBUS is synchronous, and sd-journal runs on one thread */
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool found = false;
    size_t held = 0;
    for (;;) {
        ssize_t got = read(fd, buffer + held, sizeof(buffer) - held);
        if (got <= 0)
            break;
        held += (size_t)got;
        size_t at = 0;
        char *newline;
        while ((newline = memchr(buffer + at, '\n', held - at)) != NULL) {
            size_t n = (size_t)(newline - (buffer + at));
            if (journal_line(buffer + at, n, addr)) {
                found = true;
                break;
            }
            at += n + 1;
        }
        if (found || at == 0) /* found, or a line longer than the buffer: give up rather than misread it */
            break;
        memmove(buffer, buffer + at, held - at);
        held -= at;
    }
    close(fd);
    return found;
}

static void on_sigbus(int signo, siginfo_t *info, void *context) {
    (void)context;
    if (info->si_code == BUS_ADRERR && info->si_addr != NULL && in_journal_file((uintptr_t)info->si_addr)) {
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

/* Install the handler (once: a second call changes nothing). 0, or -1 with errno set. */
int sjob_sigbus_install(void) {
    if (installed)
        return 0;
    struct sigaction action;
    long size = sysconf(_SC_PAGESIZE);
    if (size <= 0)
        return -1;
    page_mask = ~((uintptr_t)size - 1);
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &previous) != 0)
        return -1;
    installed = true;
    return 0;
}

int sjob_sigbus_replaced(void) {
    return replaced;
}
