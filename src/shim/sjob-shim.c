/* sjob-shim: the first process of every sjob job.
 *
 *   sjob-shim [--journal-socket PATH] [--check=CHECK,...] [--output-max=BYTES:stop|drop] JOB_ID -- COMMAND [ARG...]
 *   sjob-shim [--journal-socket PATH] --report JOB_ID [RESULT EXIT_CODE EXIT_STATUS]
 *
 * sjobd starts each job as ExecStart=sjob-shim ... in sjob-<id>.service. The shim
 *  1. makes one pipe for stdout and one for stderr,
 *  2. double-forks a forwarder that reads both pipes and sends every read() as one journald entry over the native
 *     protocol (systemd.journal-fields(7)), so the bytes arrive unaltered and the entry is attributed to the unit.
 *     The double fork makes the forwarder a child of the service manager, not of the job: a job that waits for
 *     "all its children" never waits for it;
 *  3. with --check, verifies from inside the unit that the sandbox its profile asks for is in force (systemd may
 *     start a unit without a feature it is not permitted to set up, logging only "...proceeding without"); if
 *     not, it says what is missing on the job's stderr and exits EXIT_UNCONFINED without running anything;
 *  4. points its own stdout/stderr at the pipes and exec()s COMMAND, so the job itself is the unit's main process
 *     and systemd sees its real exit status and signals.
 *
 * In the second form it is the unit's privileged ExecStopPost=: it reads $SERVICE_RESULT, $EXIT_CODE and
 * $EXIT_STATUS, which systemd sets for it, and records them as the job's exit entry. From the environment, not as
 * "${SERVICE_RESULT}" arguments: systemd writes those into the transient unit file as "$${SERVICE_RESULT}", so after
 * a daemon-reload the report got the literal text (found by tests/integration/test_unit_file.py). sjobd refuses
 * requests that set these names (jobspec.py), so only systemd sets them. The three-argument form is what units
 * started by an older sjobd still run. Running as root, its entry has _UID=0, which
 * a job cannot forge; written to the journal, it outlives the unit and does not depend on sjobd running.
 *
 * The entry layout is defined in src/supervisor/logformat.py, which reads it back; the unit tests run this program
 * against a fake journald socket and parse its entries with that module, so the two cannot drift apart.
 *
 * Why C: this runs for every job, on the critical path of its start, and the forwarder lives in the job's cgroup
 * for the job's whole life, charged to its MemoryMax and TasksMax. A Python shim cost ~1.7 s per job in the test
 * VM and ~9 MB of the job's memory; this one costs a few milliseconds and ~100 KB.
 *
 * With --output-max the forwarder enforces the job's output quota (policy [output], issue E: one job must not rotate
 * everyone else's output and the audit trail out of journald): the record that crosses it is cut at the quota, a
 * line on the job's stderr says so, a `quota` entry records it for sjobd, and then either the job is stopped
 * (SIGTERM to its main process through a pidfd taken before the command ran, so never a reused pid, and SIGKILL
 * 10 s later if it is still there; systemd's KillMode=control-group takes the rest) or everything after it is read
 * and dropped. Each record counts as at least MIN_RECORD_COST bytes. Either way the pipes are
 * drained, so the job never blocks on a full pipe, and the eof entry counts the dropped bytes.
 *
 * The forwarder ignores SIGTERM and every other signal it can: when the job ends, systemd sends SIGTERM to what is
 * left in the cgroup and the forwarder must still drain what the job wrote; and signals for the job (systemctl kill)
 * must not end it. It exits at end-of-file on both pipes, once journald has
 * taken every datagram and one more sent after them (SIOCOUTQ reaches 0, journal_drain): journald reads a sender's
 * cgroup from /proc as it handles a datagram, and an entry from a process that is already gone would lose its
 * _SYSTEMD_UNIT.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <endian.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define JOURNAL_SOCKET_DEFAULT "/run/systemd/journal/socket"
#define READ_SIZE (64 * 1024)  /* one record at most; fits comfortably in one datagram */
#define PIPE_SIZE (1024 * 1024) /* buffer bursts so a fast writer blocks less often */
#define MAX_FIELDS 14
#define EXIT_CANNOT_EXECUTE 126
#define EXIT_NOT_FOUND 127
#define EXIT_UNCONFINED 125 /* the sandbox is not in force: the job was refused (src/supervisor/units.py) */
/* How long the forwarder and the exit report wait for journald to take what they sent (journal_drain). The report's
 * record is the job's result: it waits longer, within systemd's 90 s for an ExecStopPost. */
#define FORWARDER_PATIENCE_MS 10000
#define REPORT_PATIENCE_MS 60000
/* How long a process waits for journald's socket to come back once it was made anew (journal_send); then it exits,
 * and the job gets EPIPE on its output, as before it waited at all. */
#define RECONNECT_PATIENCE_MS 60000

/* One field in journald's binary-safe form: NAME '\n' <le64 length> VALUE '\n'. */
struct field {
    const char *name;
    const void *value;
    size_t size;
    uint64_t size_le;
};

struct entry {
    struct field fields[MAX_FIELDS];
    size_t n;
};

static int journal_fd = -1;
static const char *journal_path = JOURNAL_SOCKET_DEFAULT;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* Milliseconds on the monotonic clock. */
static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void add(struct entry *e, const char *name, const void *value, size_t size) {
    struct field *f = &e->fields[e->n++];
    f->name = name;
    f->value = value;
    f->size = size;
    f->size_le = htole64((uint64_t)size);
}

static void add_str(struct entry *e, const char *name, const char *value) {
    add(e, name, value, strlen(value));
}

/* Connect to journald's socket, waiting for it up to `patience_ms` (for ever if negative), else exit. */
static void journal_connect(long long patience_ms) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    long delay = 10;
    long long deadline = patience_ms < 0 ? -1 : now_ms() + patience_ms;
    if (strlen(journal_path) >= sizeof(sa.sun_path)) {
        _exit(2);
    }
    strcpy(sa.sun_path, journal_path);
    journal_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (journal_fd < 0) {
        _exit(2);
    }
    /* journald may be restarting; its socket unit keeps the socket, so this is short. Waiting, not dropping. */
    while (connect(journal_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        if (errno != ENOENT && errno != ECONNREFUSED && errno != EAGAIN && errno != EINTR) {
            _exit(2);
        }
        if (deadline >= 0 && now_ms() >= deadline) {
            dprintf(2, "sjob-shim: journald's socket %s did not come back within %llds\n", journal_path,
                    patience_ms / 1000);
            _exit(2);
        }
        sleep_ms(delay);
        delay = delay < 1000 ? delay * 2 : 1000;
    }
}

/* Too large for a datagram: journald accepts a sealed memfd passed with SCM_RIGHTS instead. */
static int send_memfd(const struct iovec *iov, size_t n) {
    int fd = memfd_create("sjob-journal", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const char *p = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left > 0) {
            ssize_t w = write(fd, p, left);
            if (w < 0) {
                if (errno == EINTR) {
                    continue;
                }
                close(fd);
                return -1;
            }
            p += w;
            left -= (size_t)w;
        }
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
        close(fd);
        return -1;
    }
    char control[CMSG_SPACE(sizeof(int))];
    memset(control, 0, sizeof(control));
    struct msghdr mh = {.msg_control = control, .msg_controllen = sizeof(control)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    ssize_t r;
    do {
        r = sendmsg(journal_fd, &mh, MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    close(fd);
    return r < 0 ? -1 : 0;
}

static void journal_send(const struct entry *e) {
    struct iovec iov[MAX_FIELDS * 5];
    size_t n = 0;
    for (size_t i = 0; i < e->n; i++) {
        const struct field *f = &e->fields[i];
        iov[n++] = (struct iovec){(void *)f->name, strlen(f->name)};
        iov[n++] = (struct iovec){"\n", 1};
        iov[n++] = (struct iovec){(void *)&f->size_le, sizeof(f->size_le)};
        iov[n++] = (struct iovec){(void *)f->value, f->size};
        iov[n++] = (struct iovec){"\n", 1};
    }
    long delay = 1;
    for (;;) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = n};
        if (sendmsg(journal_fd, &mh, MSG_NOSIGNAL) >= 0) {
            return;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EMSGSIZE && send_memfd(iov, n) == 0) {
            return;
        }
        if (errno == ECONNREFUSED || errno == ENOTCONN) {
            /* journald's socket was made anew (systemd-journald.socket restarted): the old one is gone, and with it
             * what it held. This socket is no longer connected (the first send says ECONNREFUSED, any later one
             * ENOTCONN); connect to the new one rather than lose this entry and every later one. */
            close(journal_fd);
            journal_connect(RECONNECT_PATIENCE_MS);
            continue;
        }
        if (errno == ENOBUFS || errno == EAGAIN || errno == EMSGSIZE) {
            sleep_ms(delay);
            delay = delay < 500 ? delay * 2 : 500;
            continue;
        }
        _exit(3);
    }
}

/* Wait until journald has received every datagram we sent, and attributed it (see the header comment). journald
 * takes datagrams one at a time and reads the sender's /proc entry as it handles each, so once a datagram sent after
 * the others has been taken (SIOCOUTQ reaches 0), they have all been attributed, however long journald took: on a
 * starved VM, an exit report that waited only for its own datagram was gone before journald read /proc, and its
 * record lost _SYSTEMD_UNIT, without which sjobd does not take it (seen on trixie). The last datagram is a comment
 * line, of which journald stores nothing (journald-native.c skips lines starting with '#', and an entry without
 * fields). It waits at most `patience_ms`: journald may be far behind (a job can queue slow work for it just before
 * it ends), and the process must end some time. */
static void journal_drain(long long patience_ms) {
    static const char last[] = "# sjob-shim: the end of what it sends\n";
    long delay = 1;
    while (send(journal_fd, last, sizeof(last) - 1, MSG_NOSIGNAL) < 0) {
        if (errno == EINTR) {
            continue;
        }
        if (errno != ENOBUFS && errno != EAGAIN) {
            break; /* journald has gone: nothing to wait for */
        }
        sleep_ms(delay);
        delay = delay < 500 ? delay * 2 : 500;
    }
    long long deadline = now_ms() + patience_ms;
    for (;;) {
        int queued = 0;
        if (ioctl(journal_fd, SIOCOUTQ, &queued) < 0 || queued == 0) {
            return;
        }
        if (now_ms() >= deadline) {
            dprintf(2, "sjob-shim: journald has not taken what this process sent within %llds; leaving\n",
                    patience_ms / 1000);
            return;
        }
        sleep_ms(2);
    }
}

/* The first entry, sent before the command runs: sjobd takes its _PID (the kernel's word, SCM_CREDENTIALS) as the
 * forwarder's and accepts as output only entries from that pid, so no process of the job, which shares the unit,
 * can add output or move the sequence on (issue E: a forged SJOB_SEQ=999999 hid all later output). */
static void event_entry(struct entry *e, const char *event, const char *message, const char *priority,
                        const char *job_id, const char *ident) {
    add_str(e, "MESSAGE", message);
    add_str(e, "PRIORITY", priority);
    add_str(e, "SYSLOG_IDENTIFIER", ident);
    add_str(e, "SJOB_JOB_ID", job_id);
    add_str(e, "SJOB_EVENT", event);
}

static void announce(const char *job_id, const char *ident) {
    char message[96];
    snprintf(message, sizeof(message), "sjob: job %s starts; its output follows", job_id);
    struct entry e = {.n = 0};
    event_entry(&e, "start", message, "7", job_id, ident);
    /* No drain: the forwarder lives on, so journald attributes this one. Datagrams queue on journald's socket in
     * the order they were sent, so anything the command sends once it runs comes after this. */
    journal_send(&e);
}

/* What one record costs journald at least, whatever its size: an entry object, its SJOB_SEQ and MESSAGE data
 * objects, their hash-table and entry-array items. Charged against the quota instead of smaller sizes, so a job
 * writing one byte at a time cannot put a billion entries into the journal under a 1 GiB quota (review of E.4). */
#define MIN_RECORD_COST 256
#define QUOTA_STOP_GRACE_MS 10000 /* from the SIGTERM of a quota "stop" to the SIGKILL */

struct quota {
    unsigned long long max; /* 0: none */
    int stop;               /* stop the job when it is exceeded; else drop the rest */
    int main_pidfd;         /* the job's main process (the shim before it became the command) */
};

static void send_output(const char *job_id, const char *ident, int stream, const char *data, size_t size,
                        unsigned long long seq) {
    static const char *names[2] = {"stdout", "stderr"};
    static const char *priorities[2] = {"6", "3"}; /* info and err, as journalctl -p knows them */
    char seq_text[32];
    snprintf(seq_text, sizeof(seq_text), "%llu", seq);
    /* The final newline is not part of MESSAGE, so journalctl shows ordinary lines; SJOB_PARTIAL=1 marks a
     * record that did not end in one. */
    int newline = size > 0 && data[size - 1] == '\n';
    struct entry e = {.n = 0};
    add(&e, "MESSAGE", data, size - (newline ? 1 : 0));
    add_str(&e, "PRIORITY", priorities[stream]);
    add_str(&e, "SYSLOG_IDENTIFIER", ident);
    add_str(&e, "SJOB_JOB_ID", job_id);
    add_str(&e, "SJOB_STREAM", names[stream]);
    add_str(&e, "SJOB_SEQ", seq_text);
    if (!newline) {
        add_str(&e, "SJOB_PARTIAL", "1");
    }
    journal_send(&e);
}

static void quota_exceeded(const char *job_id, const char *ident, const struct quota *q, unsigned long long seq) {
    char notice[200], max[32];
    snprintf(notice, sizeof(notice), "\nsjob: the job's output reached its quota of %llu bytes; %s\n", q->max,
             q->stop ? "the job is stopped" : "the rest of its output is dropped");
    send_output(job_id, ident, 1, notice, strlen(notice), seq);
    snprintf(max, sizeof(max), "%llu", q->max);
    struct entry e = {.n = 0};
    event_entry(&e, "quota", notice + 1, "4", job_id, ident);
    add_str(&e, "SJOB_QUOTA", max);
    add_str(&e, "SJOB_ON_EXCEED", q->stop ? "stop" : "drop");
    journal_send(&e);
    if (q->stop && q->main_pidfd >= 0) {
        syscall(SYS_pidfd_send_signal, q->main_pidfd, SIGTERM, NULL, 0);
    }
}

/* A quota "stop" is a SIGTERM the job may ignore (review of E.4): if its main process is still there once the grace
 * period is over, SIGKILL it; its exit makes systemd stop the unit and KillMode=control-group take the rest. Waits
 * on the pidfd, which polls readable once the process has exited. */
static void kill_after_grace(const struct quota *q, long long deadline_ms) {
    struct pollfd main_exited = {.fd = q->main_pidfd, .events = POLLIN};
    for (;;) {
        long long left = deadline_ms - now_ms();
        int r = poll(&main_exited, 1, left > 0 ? (int)left : 0);
        if (r > 0 || (r < 0 && errno != EINTR)) {
            return;
        }
        if (r == 0) {
            syscall(SYS_pidfd_send_signal, q->main_pidfd, SIGKILL, NULL, 0);
            return;
        }
    }
}

/* Where the forwarding of one job's output stands: what each stream brought, what went into the journal. */
struct forwarding {
    const char *job_id, *ident;
    const struct quota *q;
    unsigned long long sizes[2], seq, sent, dropped;
    int over;
    long long kill_at; /* when a job stopped for its quota gets SIGKILL if it is still there; -1: never */
    int relaying;      /* --relay-input: the job's stdin passes through us, counted */
    unsigned long long bytes_in;
};

/* One read of `r` bytes from `stream`: as one record, cut at the quota, with what crossing it entails. */
static void forward_read(struct forwarding *f, int stream, const char *buf, size_t r) {
    const struct quota *q = f->q;
    f->sizes[stream] += r;
    if (f->over) {
        f->dropped += r;
        return;
    }
    size_t send = r;
    unsigned long long cost = send < MIN_RECORD_COST ? MIN_RECORD_COST : send;
    if (q->max && f->sent + cost > q->max) {
        unsigned long long room = q->max - f->sent;
        send = send > room ? (size_t)room : send;
        f->dropped += r - send;
        cost = room;
        f->over = 1;
    }
    f->sent += cost;
    if (send > 0) {
        send_output(f->job_id, f->ident, stream, buf, send, ++f->seq);
    }
    if (f->over) {
        quota_exceeded(f->job_id, f->ident, q, ++f->seq);
        if (q->stop && q->main_pidfd >= 0) {
            f->kill_at = now_ms() + QUOTA_STOP_GRACE_MS;
        }
    }
}

/* How long poll() may wait before a pending SIGKILL is due; -1: no limit. */
static int poll_timeout(const struct forwarding *f) {
    if (f->kill_at < 0) {
        return -1;
    }
    long long left = f->kill_at - now_ms();
    return left > 0 ? (int)left : 0;
}

/* poll() the forwarder's descriptors, or until a pending SIGKILL is due (then send it): 1 if some are ready. */
static int wait_for(struct forwarding *f, struct pollfd *fds, nfds_t n) {
    int ready = poll(fds, n, poll_timeout(f));
    if (ready < 0 && errno != EINTR) {
        _exit(4);
    }
    if (ready == 0) {
        kill_after_grace(f->q, f->kill_at);
        f->kill_at = -1;
    }
    return ready > 0;
}

/* The last entry: how much each stream brought, how many records, what was dropped. */
static void end_of_output(struct forwarding *f) {
    if (f->kill_at >= 0) {
        kill_after_grace(f->q, f->kill_at); /* the job closed its output but may still run */
    }
    char message[200], records[32], dropped_text[32], bytes[32];
    snprintf(message, sizeof(message), "sjob: end of output (stdout %llu bytes, stderr %llu bytes, %llu dropped)",
             f->sizes[0], f->sizes[1], f->dropped);
    snprintf(records, sizeof(records), "%llu", f->seq);
    snprintf(dropped_text, sizeof(dropped_text), "%llu", f->dropped);
    snprintf(bytes, sizeof(bytes), "%llu", f->sizes[0] + f->sizes[1]);
    char bytes_in[32];
    snprintf(bytes_in, sizeof(bytes_in), "%llu", f->bytes_in);
    struct entry e = {.n = 0};
    event_entry(&e, "eof", message, "7", f->job_id, f->ident);
    add_str(&e, "SJOB_RECORDS", records);
    add_str(&e, "SJOB_DROPPED", dropped_text);
    add_str(&e, "SJOB_BYTES", bytes);
    if (f->relaying) {
        add_str(&e, "SJOB_BYTES_IN", bytes_in);
    }
    journal_send(&e);
    journal_drain(FORWARDER_PATIENCE_MS);
}

/* With --relay-input (a function's call, whose code runs as another user than its caller): the job's stdin is
 * not the caller's pipe but one of ours, and the caller's bytes pass through here, counted, with splice(2) (no
 * copy through this process's memory). Never O_NONBLOCK on the caller's pipe: its read end may be shared with the
 * caller's other processes; SPLICE_F_NONBLOCK keeps a full or empty pipe from blocking us all the same. Ends at
 * the caller's EOF (the job then sees its own) or when the job closes its stdin. */
struct relay {
    int from, to; /* the caller's pipe, and the write end of the job's stdin; -1 once done */
    int to_full;  /* wait until the job has read some before moving more */
};

static void relay_stop(struct relay *r) {
    if (r->from >= 0) {
        close(r->from);
        close(r->to);
        r->from = r->to = -1;
    }
}

static void relay_move(struct forwarding *f, struct relay *r) {
    ssize_t n = splice(r->from, NULL, r->to, NULL, 1 << 16, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
        f->bytes_in += (unsigned long long)n;
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        r->to_full = 1; /* or nothing to read after all: poll() tells which */
    } else {
        relay_stop(r); /* EOF from the caller, or the job closed its stdin (EPIPE) */
    }
}

static void forward(struct forwarding *f, int out_fd, int err_fd, struct relay *in) {
    static char buf[READ_SIZE];
    struct pollfd fds[4] = {{.fd = out_fd, .events = POLLIN}, {.fd = err_fd, .events = POLLIN}};
    int open_fds = 2;

    while (open_fds > 0) {
        fds[2] = (struct pollfd){.fd = in->from >= 0 ? in->from : -1, .events = POLLIN};
        fds[3] = (struct pollfd){.fd = in->from >= 0 && in->to_full ? in->to : -1, .events = POLLOUT};
        if (!wait_for(f, fds, 4)) {
            continue;
        }
        if (fds[3].revents & (POLLOUT | POLLERR | POLLHUP)) {
            in->to_full = 0;
        }
        if (fds[2].revents & (POLLIN | POLLHUP | POLLERR) && in->from >= 0 && !in->to_full) {
            relay_move(f, in);
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                continue;
            }
            ssize_t r = read(fds[i].fd, buf, sizeof(buf));
            if (r < 0) {
                if (errno == EINTR || errno == EAGAIN) {
                    continue;
                }
                r = 0;
            }
            if (r == 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            forward_read(f, i, buf, (size_t)r);
        }
    }
    relay_stop(in);
    end_of_output(f);
}

/* Write all of `data` to `fd` (blocking); 0 once its reader is gone. */
static int write_all(int fd, const char *data, size_t size) {
    while (size > 0) {
        ssize_t w = write(fd, data, size);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return 0;
        }
        data += w;
        size -= (size_t)w;
    }
    return 1;
}

/* The job's terminal input: frames of a 5-byte header (kind, little-endian u32 length) and the bytes
 * (src/supervisor/protocol.py, TTY_FRAME). "d": what the caller typed, for the terminal as it is; "w": a new
 * window size (u16 rows, u16 cols), which the kernel announces to the job with SIGWINCH. */
#define TTY_HEADER 5
#define TTY_MAX_DATA (64 * 1024)

struct tty_input {
    char frame[TTY_HEADER + TTY_MAX_DATA];
    size_t have;
    char pending[4 * TTY_MAX_DATA]; /* typed, not yet taken by the terminal */
    size_t pending_size;
};

/* Take the complete frames out of `in`; 0 on a malformed one (the input then ends). */
static int take_frames(struct tty_input *in, int master) {
    for (;;) {
        if (in->have < TTY_HEADER) {
            return 1;
        }
        uint32_t length;
        memcpy(&length, in->frame + 1, sizeof(length));
        length = le32toh(length);
        if (length > TTY_MAX_DATA) {
            return 0;
        }
        if (in->have < TTY_HEADER + length) {
            return 1;
        }
        const char *payload = in->frame + TTY_HEADER;
        if (in->frame[0] == 'd') {
            if (in->pending_size + length > sizeof(in->pending)) {
                return 1; /* the terminal is not taking input: read no more frames until it does */
            }
            memcpy(in->pending + in->pending_size, payload, length);
            in->pending_size += length;
        } else if (in->frame[0] == 'w' && length == 4) {
            uint16_t size[2];
            memcpy(size, payload, sizeof(size));
            struct winsize ws = {.ws_row = le16toh(size[0]), .ws_col = le16toh(size[1])};
            (void)ioctl(master, TIOCSWINSZ, &ws);
        } else {
            return 0;
        }
        memmove(in->frame, in->frame + TTY_HEADER + length, in->have - TTY_HEADER - length);
        in->have -= TTY_HEADER + length;
    }
}

/* The forwarder of a job with a terminal: what the caller types (the input pipe) goes to the terminal; what the
 * terminal shows goes into the journal as the job's stdout, and as it is to the caller (its output pipe, this
 * process's stdout). When the caller goes away (its pipe's reader closes), the terminal is hung up, as closing a
 * terminal window does: the job gets SIGHUP. The terminal's end is EIO on the master once no process has the
 * job's side open any more. */
static void forward_tty(struct forwarding *f, int master, int input, int caller) {
    static char buf[READ_SIZE];
    static struct tty_input in;
    int caller_there = 1, master_open = 1;
    (void)fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    while (master_open) {
        int want_input = input >= 0 && in.pending_size <= TTY_MAX_DATA;
        struct pollfd fds[3] = {
            {.fd = master, .events = POLLIN | (in.pending_size ? POLLOUT : 0)},
            {.fd = want_input ? input : -1, .events = POLLIN},
            {.fd = caller_there ? caller : -1, .events = 0}, /* POLLERR: the caller's end is closed */
        };
        if (!wait_for(f, fds, 3)) {
            continue;
        }
        if (fds[2].revents & (POLLERR | POLLHUP)) {
            caller_there = 0;
            break; /* hang up */
        }
        if (fds[0].revents & POLLOUT && in.pending_size) {
            ssize_t w = write(master, in.pending, in.pending_size);
            if (w > 0) {
                memmove(in.pending, in.pending + w, in.pending_size - (size_t)w);
                in.pending_size -= (size_t)w;
            }
        }
        if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(input, in.frame + in.have, sizeof(in.frame) - in.have);
            if (r > 0) {
                in.have += (size_t)r;
            }
            if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN) || !take_frames(&in, master)) {
                close(input); /* the caller's input ended: no more typing, the terminal stays */
                input = -1;
            }
        } else if (input >= 0 && in.have && !take_frames(&in, master)) {
            close(input);
            input = -1;
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(master, buf, sizeof(buf));
            if (r > 0) {
                forward_read(f, 0, buf, (size_t)r);
                if (caller_there && !write_all(caller, buf, (size_t)r)) {
                    caller_there = 0;
                    break; /* hang up */
                }
            } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
                master_open = 0; /* EIO: nothing has the job's side of the terminal open any more */
            }
        }
    }
    close(master);
    end_of_output(f);
}

/* The unit's cgroup directory, from our own membership: ExecStopPost= runs in the unit's cgroup. */
static int cgroup_dir(char *out, size_t size) {
    FILE *f = fopen("/proc/self/cgroup", "re");
    char line[4096];
    int found = 0;
    if (!f) {
        return 0;
    }
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "0::", 3) == 0) { /* the cgroup v2 hierarchy */
            line[strcspn(line, "\n")] = 0;
            found = snprintf(out, size, "/sys/fs/cgroup%s", line + 3) < (int)size;
            break;
        }
    }
    fclose(f);
    return found;
}

/* The number after `key` in a cgroup file ("usage_usec 123"), or the whole file's number if key is NULL; with
 * `sum`, add up every `key=` value (io.stat has one line per device). -1 if the file or key is not there. */
static long long cgroup_number(const char *dir, const char *file, const char *key, int sum) {
    char path[4200], text[8192];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0) {
        return -1;
    }
    text[n] = 0;
    if (!key) {
        return strtoll(text, NULL, 10);
    }
    long long total = -1;
    size_t klen = strlen(key);
    for (char *p = text; (p = strstr(p, key)) != NULL; p += klen) {
        if (p != text && p[-1] != ' ' && p[-1] != '\n') {
            continue;
        }
        long long value = strtoll(p + klen, NULL, 10);
        total = (total < 0 ? 0 : total) + value;
        if (!sum) {
            break;
        }
    }
    return total;
}

/* 32 lowercase hex digits: systemd's form of an invocation id. */
static int is_id128(const char *s) {
    size_t n = 0;
    for (; s[n]; n++) {
        if (n == 32 || !((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f'))) {
            return 0;
        }
    }
    return n == 32;
}

static int report(const char *job_id, const char *result, const char *code, const char *status) {
    /* This runs in the job's cgroup, so a signal for the job's processes (sjob stop --signal, systemctl kill) can
     * reach it: none may end it before it has written how the job ended. SIGKILL and SIGSTOP cannot be blocked;
     * sjobd sends those to the job's main process alone once the unit is stopping. */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    char message[256];
    snprintf(message, sizeof(message), "sjob: job %s ended: %s (code=%s, status=%s)", job_id, result, code, status);
    /* What the job used, read from its cgroup before systemd removes it: these are the kernel's counters that
     * systemd's CPUUsageNSec=, MemoryPeak=, IO*Bytes= report, kept here so they outlive the unit. */
    static char numbers[5][32];
    static const char *names[5] = {"SJOB_CPU_USEC", "SJOB_MEMORY_PEAK", "SJOB_IO_READ_BYTES", "SJOB_IO_WRITE_BYTES",
                                   "SJOB_TASKS_PEAK"};
    long long values[5] = {-1, -1, -1, -1, -1};
    char dir[4096];
    if (cgroup_dir(dir, sizeof(dir))) {
        values[0] = cgroup_number(dir, "cpu.stat", "usage_usec ", 0);
        values[1] = cgroup_number(dir, "memory.peak", NULL, 0);
        values[2] = cgroup_number(dir, "io.stat", "rbytes=", 1);
        values[3] = cgroup_number(dir, "io.stat", "wbytes=", 1);
        values[4] = cgroup_number(dir, "pids.peak", NULL, 0);
    }
    struct entry e = {.n = 0};
    event_entry(&e, "exit", message, "6", job_id, "sjob");
    add_str(&e, "SJOB_RESULT", result);
    add_str(&e, "SJOB_EXIT_CODE", code);
    add_str(&e, "SJOB_EXIT_STATUS", status);
    /* Which run of the unit ended, as systemd told this ExecStopPost ($INVOCATION_ID; a request cannot set it,
     * jobspec refuses the name). journald's _SYSTEMD_INVOCATION_ID is only the run it finds the unit in when it
     * reads the entry, or missing: seen on bookworm under load, where a retried job's first attempt then passed for
     * the job's end. sjobd takes this one (logformat.run_of). */
    const char *run = getenv("INVOCATION_ID");
    if (run && is_id128(run)) {
        add_str(&e, "SJOB_INVOCATION", run);
    }
    for (int i = 0; i < 5; i++) {
        if (values[i] >= 0) {
            snprintf(numbers[i], sizeof(numbers[i]), "%lld", values[i]);
            add_str(&e, names[i], numbers[i]);
        }
    }
    journal_connect(-1);
    journal_send(&e);
    journal_drain(REPORT_PATIENCE_MS);
    return 0;
}

static void make_pipe(int p[2]) {
    if (pipe2(p, O_CLOEXEC) < 0) {
        dprintf(2, "sjob-shim: pipe: %s\n", strerror(errno));
        _exit(EXIT_CANNOT_EXECUTE);
    }
    (void)fcntl(p[1], F_SETPIPE_SZ, PIPE_SIZE); /* over the user's pipe quota the default size still works */
}


/* The value of a "Name:\tvalue" line of /proc/self/status, or NULL. */
static const char *status_field(const char *name, char *buf, size_t size) {
    FILE *f = fopen("/proc/self/status", "re");
    if (!f) {
        return NULL;
    }
    size_t len = strlen(name);
    const char *found = NULL;
    while (fgets(buf, (int)size, f)) {
        if (strncmp(buf, name, len) == 0 && buf[len] == ':') {
            char *value = buf + len + 1;
            value += strspn(value, " \t");
            value[strcspn(value, "\n")] = '\0';
            found = value;
            break;
        }
    }
    fclose(f);
    return found;
}

/* Only the loopback device in our network namespace (/proc/self/net/dev lists the namespace's devices). */
static int only_loopback(void) {
    FILE *f = fopen("/proc/self/net/dev", "re");
    if (!f) {
        return 0;
    }
    char line[512];
    int ok = 1, n = 0;
    while (fgets(line, sizeof line, f)) {
        if (++n <= 2) {
            continue; /* two header lines */
        }
        char *name = line + strspn(line, " ");
        char *colon = strchr(name, ':');
        if (!colon) {
            continue;
        }
        *colon = '\0';
        if (strcmp(name, "lo") != 0) {
            ok = 0;
        }
    }
    fclose(f);
    return ok;
}

/* Whether the CPUs this process may run on are exactly LIST: CPU numbers and ranges joined by '+' ("0-3+6"), as
 * AllowedCPUs= asks. A cpuset the kernel cannot apply would otherwise leave the job on every CPU. */
static int cpus_are(const char *list) {
    enum { MAX_CPUS = 8192 };
    size_t size = CPU_ALLOC_SIZE(MAX_CPUS);
    cpu_set_t *want = CPU_ALLOC(MAX_CPUS), *have = CPU_ALLOC(MAX_CPUS);
    int ok = want && have && sched_getaffinity(0, size, have) == 0;
    if (ok) {
        CPU_ZERO_S(size, want);
    }
    for (const char *p = list; ok && *p;) {
        char *end;
        unsigned long first = strtoul(p, &end, 10), last = first;
        ok = end != p;
        if (ok && *end == '-') {
            p = end + 1;
            last = strtoul(p, &end, 10);
            ok = end != p;
        }
        ok = ok && first <= last && last < MAX_CPUS && (*end == '+' || *end == '\0');
        for (unsigned long cpu = first; ok && cpu <= last; cpu++) {
            CPU_SET_S(cpu, size, want);
        }
        p = *end == '+' ? end + 1 : end;
    }
    ok = ok && CPU_EQUAL_S(size, want, have);
    CPU_FREE(want);
    CPU_FREE(have);
    return ok;
}

/* Landlock (Linux 5.13+), declared here because the build host's <linux/landlock.h> may predate the fields used. */
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#define LL_CREATE_RULESET_VERSION (1U << 0)
#define LL_ACCESS_FS_MAKE_BLOCK (1ULL << 11)
#define LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0) /* ABI 6, Linux 6.12 */
#define LL_SCOPE_SIGNAL (1ULL << 1)               /* ABI 6, Linux 6.12 */
struct ll_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net; /* ABI 4 */
    uint64_t scoped;             /* ABI 6 */
};

/* Put this process, and so the job, into a Landlock domain of its own (issue E.3, the review's HIGH finding).
 * A job runs as its owner, so without this it may open /proc/PID/root, cwd, fd/N, environ and mem of any of its
 * owner's processes outside the unit (ProtectProc= hides only other users' processes): /proc/PID/root is that
 * process's whole file system, writable home and /run/user (the session bus, the user's systemd) included, past
 * every ProtectHome=, InaccessiblePaths= and PrivateTmp= of the job. Landlock allows ptrace access, which is what
 * the kernel asks for each of those, only into the caller's own domain or a nested one: to the job, everything
 * outside the unit's job (the forwarder included, forked before this) is out of reach. From ABI 6 (Linux 6.12) the
 * domain also keeps the job from signalling processes outside it and from connecting to abstract Unix sockets
 * made outside it. The ruleset handles one file system right no rule grants, making block devices, which no job
 * may do anyway (no CAP_MKNOD): creating a ruleset needs at least one handled right before ABI 6. Fails closed. */
static const char *isolate_processes(void) {
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    if (abi < 1) {
        switch (errno) {
        case EOPNOTSUPP:
            return "Landlock (disabled: add landlock to the kernel's lsm= list)";
        case ENOSYS:
            return "Landlock (the kernel has none; Linux 5.13 or later has it)";
        default: /* EPERM: a SystemCallFilter= without landlock_create_ruleset and landlock_restrict_self */
            return "Landlock (its system calls are forbidden: allow landlock_create_ruleset and "
                   "landlock_restrict_self in SystemCallFilter=)";
        }
    }
    struct ll_ruleset_attr attr = {.handled_access_fs = LL_ACCESS_FS_MAKE_BLOCK};
    if (abi >= 6) {
        attr.scoped = LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL;
    }
    /* The whole struct: older kernels accept a larger one as long as the fields they do not know are zero. */
    int ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0);
    if (ruleset < 0) {
        return "Landlock (creating a ruleset failed)";
    }
    int failed = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || syscall(SYS_landlock_restrict_self, ruleset, 0) < 0;
    close(ruleset);
    return failed ? "Landlock (restricting the job failed)" : NULL;
}

/* Each check in the comma-separated list; 0 if all hold, else the name of the profile setting not in force. */
static const char *failed_check(const char *list) {
    char buf[512];
    char *copy = strdup(list);
    const char *failed = NULL;
    for (char *save = NULL, *check = strtok_r(copy, ",", &save); check && !failed;
         check = strtok_r(NULL, ",", &save)) {
        if (strcmp(check, "no_network") == 0) {
            failed = only_loopback() ? NULL : "PrivateNetwork= (network devices other than lo are visible)";
        } else if (strcmp(check, "no_new_privileges") == 0) {
            failed = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 ? NULL : "NoNewPrivileges=";
        } else if (strcmp(check, "seccomp") == 0) {
            const char *mode = status_field("Seccomp", buf, sizeof buf);
            failed = mode && strcmp(mode, "2") == 0 ? NULL : "SystemCallFilter= (no seccomp filter)";
        } else if (strcmp(check, "no_capabilities") == 0) {
            const char *bounding = status_field("CapBnd", buf, sizeof buf);
            failed = bounding && strspn(bounding, "0") == strlen(bounding) ? NULL : "CapabilityBoundingSet=";
        } else if (strcmp(check, "read_only_system") == 0) {
            struct statvfs usr;
            failed = statvfs("/usr", &usr) == 0 && (usr.f_flag & ST_RDONLY) ? NULL : "ProtectSystem= (/usr writable)";
        } else if (strcmp(check, "isolate_processes") == 0) {
            failed = isolate_processes();
        } else if (strncmp(check, "cpus=", 5) == 0) {
            failed = cpus_are(check + 5) ? NULL : "AllowedCPUs= (the job could run on other CPUs)";
        } else {
            failed = "an unknown check (sjob-shim is older than sjobd?)";
        }
    }
    free(copy);
    return failed;
}

/* A pseudo-terminal of `size` for the job: its master, and the name of its other side in `name`. */
static int open_terminal(const struct winsize *size, char *name, size_t name_size) {
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 || ptsname_r(master, name, name_size) != 0) {
        dprintf(2, "sjob: cannot make a terminal for the job: %s\n", strerror(errno));
        _exit(EXIT_CANNOT_EXECUTE);
    }
    (void)ioctl(master, TIOCSWINSZ, size);
    return master;
}

/* Make the terminal `name` ours, as a login does: our controlling terminal (systemd made this process a session
 * leader), and stdin, stdout and stderr. Its foreground process group is then ours, so Ctrl-C, Ctrl-Z and Ctrl-\
 * typed by the caller reach the job as on a local terminal. */
static int attach_terminal(const char *name) {
    int slave = open(name, O_RDWR);
    if (slave < 0) {
        dprintf(2, "sjob: cannot open the job's terminal %s: %s\n", name, strerror(errno));
        return -1;
    }
    (void)setsid(); /* EPERM if we lead a session already, as services do */
    if (ioctl(slave, TIOCSCTTY, 0) < 0 || dup2(slave, 0) < 0 || dup2(slave, 1) < 0 || dup2(slave, 2) < 0) {
        dprintf(slave, "sjob: cannot attach the job to its terminal: %s\n", strerror(errno));
        return -1;
    }
    if (slave > 2) {
        close(slave);
    }
    return 0;
}

int main(int argc, char **argv) {
    /* --journal-socket is for the unit tests' fake journald; only sjobd writes this command line. */
    if (argc > 2 && strcmp(argv[1], "--journal-socket") == 0) {
        journal_path = argv[2];
        argc -= 2;
        argv += 2;
    }
    if (argc == 6 && strcmp(argv[1], "--report") == 0) {
        return report(argv[2], argv[3], argv[4], argv[5]);
    }
    if (argc == 3 && strcmp(argv[1], "--report") == 0) {
        const char *result = getenv("SERVICE_RESULT"), *code = getenv("EXIT_CODE"), *status = getenv("EXIT_STATUS");
        return report(argv[2], result ? result : "", code ? code : "", status ? status : "");
    }
    const char *checks = NULL;
    struct quota quota = {.max = 0, .stop = 0, .main_pidfd = -1};
    struct winsize terminal = {.ws_row = 0, .ws_col = 0};
    int relay_input = 0;
    for (; argc > 1 && strncmp(argv[1], "--", 2) == 0 && strcmp(argv[1], "--") != 0; argc--, argv++) {
        if (strncmp(argv[1], "--check=", 8) == 0) {
            checks = argv[1] + 8;
        } else if (strncmp(argv[1], "--output-max=", 13) == 0) {
            char *end;
            quota.max = strtoull(argv[1] + 13, &end, 10);
            if (quota.max == 0 || (strcmp(end, ":stop") != 0 && strcmp(end, ":drop") != 0)) {
                fprintf(stderr, "sjob-shim: bad %s\n", argv[1]);
                return 2;
            }
            quota.stop = strcmp(end, ":stop") == 0;
        } else if (strcmp(argv[1], "--relay-input") == 0) {
            relay_input = 1;
        } else if (strncmp(argv[1], "--pty=", 6) == 0) {
            unsigned rows = 0, cols = 0;
            char extra;
            if (sscanf(argv[1] + 6, "%ux%u%c", &rows, &cols, &extra) != 2 || !rows || !cols || rows > 0xFFFF ||
                cols > 0xFFFF) {
                fprintf(stderr, "sjob-shim: bad %s\n", argv[1]);
                return 2;
            }
            terminal.ws_row = (unsigned short)rows;
            terminal.ws_col = (unsigned short)cols;
        } else {
            break;
        }
    }
    if (argc < 4 || strcmp(argv[2], "--") != 0) {
        fprintf(stderr, "usage: sjob-shim [--journal-socket PATH] [--check=CHECK,...] [--output-max=BYTES:stop|drop] "
                        "[--pty=ROWSxCOLS] [--relay-input] JOB_ID -- COMMAND [ARG...]\n"
                        "       sjob-shim [--journal-socket PATH] --report JOB_ID [RESULT EXIT_CODE EXIT_STATUS]\n");
        return 2;
    }
    const char *job_id = argv[1];
    char **command = argv + 3;
    const char *slash = strrchr(command[0], '/');
    const char *ident = slash && slash[1] ? slash + 1 : command[0];

    if (quota.max && quota.stop) {
        /* Taken now, while this process is what becomes the job's main process: a pidfd never names another. */
        quota.main_pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    }
    int out[2] = {-1, -1}, err[2] = {-1, -1}, input[2] = {-1, -1}, ready[2], master = -1;
    char slave_name[128];
    if (terminal.ws_row) {
        master = open_terminal(&terminal, slave_name, sizeof(slave_name));
    } else {
        make_pipe(out);
        make_pipe(err);
        if (relay_input) {
            make_pipe(input);
        }
    }
    make_pipe(ready);

    pid_t child = fork();
    if (child < 0) {
        dprintf(2, "sjob-shim: fork: %s\n", strerror(errno));
        return EXIT_CANNOT_EXECUTE;
    }
    if (child == 0) {
        pid_t forwarder = fork();
        if (forwarder == 0) {
            /* Signals sent to the whole unit (systemctl kill, sjob stop --signal) are for the job, not for us:
             * ignore every signal that would end or stop the forwarder, except SIGKILL, which nothing can. */
            for (int sig = 1; sig < NSIG; sig++) {
                if (sig != SIGKILL && sig != SIGSTOP && sig != SIGSEGV && sig != SIGBUS && sig != SIGFPE &&
                    sig != SIGILL && sig != SIGABRT && sig != SIGTRAP && sig != SIGSYS && sig != SIGCHLD) {
                    signal(sig, SIG_IGN);
                }
            }
            close(ready[0]);
            journal_connect(-1);
            announce(job_id, ident);
            if (write(ready[1], "", 1) != 1) {
                _exit(5);
            }
            close(ready[1]);
            struct forwarding f = {.job_id = job_id, .ident = ident, .q = &quota, .kill_at = -1};
            if (master >= 0) {
                forward_tty(&f, master, 0, 1);
            } else {
                close(out[1]);
                close(err[1]);
                struct relay in = {.from = -1, .to = -1, .to_full = 0};
                if (relay_input) {
                    close(input[0]);
                    in.from = dup(0); /* the caller's pipe, which only we read */
                    in.to = input[1];
                    f.relaying = 1;
                }
                /* Otherwise the job's stdin is the job's: holding it here would keep a pipe's writer from seeing
                 * the job go (EPIPE) for as long as we drain. */
                int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (null >= 0) {
                    dup2(null, 0);
                    close(null);
                }
                forward(&f, out[0], err[0], &in);
            }
            _exit(0);
        }
        _exit(forwarder < 0 ? 1 : 0);
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    close(ready[1]);
    char byte;
    ssize_t got;
    while ((got = read(ready[0], &byte, 1)) < 0 && errno == EINTR) {
    }
    close(ready[0]);
    if (quota.main_pidfd >= 0) {
        close(quota.main_pidfd);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got != 1) {
        dprintf(2, "sjob-shim: could not start the output forwarder\n");
        return EXIT_CANNOT_EXECUTE;
    }

    if (master >= 0) {
        close(master);
        if (attach_terminal(slave_name) < 0) {
            return EXIT_CANNOT_EXECUTE;
        }
    } else {
        if (dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0) {
            return EXIT_CANNOT_EXECUTE;
        }
        close(out[0]);
        close(out[1]);
        close(err[0]);
        close(err[1]);
        if (relay_input) {
            if (dup2(input[0], 0) < 0) {
                return EXIT_CANNOT_EXECUTE;
            }
            close(input[0]);
            close(input[1]);
        }
    }
    const char *failed = checks ? failed_check(checks) : NULL;
    if (failed) {
        dprintf(2, "sjob: refusing to run the job: its sandbox is not in force: %s is not in effect\n", failed);
        return EXIT_UNCONFINED;
    }
    execvp(command[0], command);
    int e = errno;
    dprintf(2, "sjob: cannot execute '%s': %s\n", command[0], strerror(e));
    return e == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE;
}
