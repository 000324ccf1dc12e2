#!/bin/bash
# Runs INSIDE the test VM, as root, started by the image's sjob-ci bootstrap
# (tests/vm/image/rootfs/usr/local/libexec/sjob-ci).  It comes with the
# payload, so editing it never rebuilds the image.  stdout+stderr stream live
# to the host (tests/vm/vmtest.py prints them prefixed with the suite name).
#
# Environment (set by the bootstrap):
#   SJOB_SRC         the payload: the repo's working tree (/srv/sjob)
#   SJOB_RESULTS     files put here are copied back to the host (/srv/results)
#   SJOB_WHEELHOUSE  offline wheels for tests/vm/requirements.txt (/var/cache/sjob/wheels)
#   SJOB_MODE        "test" (install + pytest [+ bench]) or "shell" (install only)
# Kernel command line (set by vmtest.py):
#   sjob.workers=N   tests run N at a time in the parallel phase (default 3)
#   sjob.bench=1     run tests/bench/bench.py after the tests pass
#   sjob.timing=last run the timing tests last, once vmtest.py opens the gate (another VM runs beside this one)
#   sjob.timing=gated run the timing tests after the parallel phase, once vmtest.py opens the gate (the host's own
#                    checks run beside this VM while it boots, installs and runs its parallel phase)
#   sjob.start=gated wait at the gate after install.sh, until vmtest.py opens it (the previous suite's VM is in its
#                    tail: this one boots and installs beside that one's parallel phase)
#   sjob.phases=LIST the pytest phases to run, of timing,parallel,serial,aside,last (default: all); vmtest.py gives
#                    the last suite's `aside` and `last` phases a VM of their own, which boots beside that suite's
#                    serial phase
#
# Exit code: pytest's (install failure: install.sh's, at least 1).
set -uo pipefail

: "${SJOB_SRC:=/srv/sjob}" "${SJOB_RESULTS:=/srv/results}"
: "${SJOB_WHEELHOUSE:=/var/cache/sjob/wheels}" "${SJOB_MODE:=test}"
export SJOB_SRC SJOB_RESULTS SJOB_WHEELHOUSE SJOB_MODE PYTHONUNBUFFERED=1
mkdir -p "$SJOB_RESULTS"
cd "$SJOB_SRC" || exit 2

# Each step with the seconds since this script started, also in phases.txt (where a run's time goes).
step() {
    local what="$*"
    printf '==> [%4ds] %s\n' "$SECONDS" "$what"
    printf '%5d %s\n' "$SECONDS" "$what" >>"$SJOB_RESULTS/phases.txt"
    cpu_snapshot "${what:0:32}"
}

cmdline_value() {  # cmdline_value NAME -> value of NAME=value on /proc/cmdline
    local arg
    for arg in $(</proc/cmdline); do
        [[ $arg == "$1="* ]] && { printf '%s\n' "${arg#*=}"; return 0; }
    done
    return 1
}

# Where the VM's CPU time goes, at each step: /proc/stat's busy and idle seconds (both CPUs), and the CPU time of
# the tests with the sjob commands they run (sjob-ci.service), sjobd, journald, the jobs (sjob.slice), PID 1 and
# the test users' sessions.
cpu_snapshot() {  # cpu_snapshot LABEL
    local unit usage
    {
        printf '%5d %-32s' "$SECONDS" "$1"
        awk '/^cpu /{printf " busy=%.0fs idle=%.0fs", ($2 + $3 + $4 + $7 + $8) / 100, ($5 + $6) / 100}' /proc/stat
        for unit in sjob-ci.service sjobd.service systemd-journald.service sjob.slice init.scope user.slice; do
            usage=$(systemctl show -P CPUUsageNSec "$unit" 2>/dev/null)
            [[ $usage =~ ^[0-9]+$ ]] || usage=0
            printf ' %s=%ds' "${unit%.*}" "$((usage / 1000000000))"
        done
        echo
    } >>"$SJOB_RESULTS/cpu.txt"
}

merge_junit() {  # junit.xml: the testsuites of all pytest phases in one file
    /opt/sjob-test/bin/python - "$SJOB_RESULTS" <<'PY'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

results = Path(sys.argv[1])
merged = ET.Element("testsuites")
for name in ("junit-parallel.xml", "junit-timing.xml", "junit-serial.xml", "junit-aside.xml", "junit-last.xml"):
    if (results / name).exists():
        merged.extend(ET.parse(results / name).getroot().iter("testsuite"))
ET.ElementTree(merged).write(results / "junit.xml", encoding="utf-8", xml_declaration=True)
PY
}

# The whole journal is over 1 GB of text after the output tests, nearly all of it the jobs' own output, and
# sjob-ci would export all of it (minutes, and more than the results disk holds). What helps debugging: sjobd
# (its log and the audit), PID 1, the kernel, journald and this run; after a failure also every other unit and
# each job's start and exit records, but still not the jobs' output (the failing assertion shows what matters).
# shellcheck disable=SC2317  # called from the EXIT trap
export_journal() {  # export_journal RC
    local matches=(_SYSTEMD_UNIT=sjobd.service _SYSTEMD_UNIT=systemd-journald.service _SYSTEMD_UNIT=sjob-ci.service
        + _PID=1 + _TRANSPORT=kernel)
    if (($1 != 0)); then
        local unit
        while read -r unit; do
            [[ $unit =~ ^sjob-[0-9a-f]{8}\.service$ ]] || matches=("_SYSTEMD_UNIT=$unit" "${matches[@]}")
        done < <(journalctl -b -F _SYSTEMD_UNIT 2>/dev/null)
        matches+=(+ SJOB_EVENT=start SJOB_EVENT=exit SJOB_EVENT=quota)
    fi
    # Written under another name first: sjob-ci exports the whole journal only if journal.txt is missing.
    journalctl -b --no-pager -o short-monotonic "${matches[@]}" >"$SJOB_RESULTS/journal.txt.part" 2>&1
    mv "$SJOB_RESULTS/journal.txt.part" "$SJOB_RESULTS/journal.txt"
}

# shellcheck disable=SC2317  # the EXIT trap
finish() {
    local rc=$?
    if [[ $SJOB_MODE == test ]]; then
        step "journal export (rc=$rc)"
        export_journal "$rc"
        systemd-analyze >"$SJOB_RESULTS/systemd-analyze.txt" 2>&1
        systemctl list-units --failed --no-pager >"$SJOB_RESULTS/failed-units.txt" 2>&1
        step "done (rc=$rc)"
    fi
    exit "$rc"
}
trap finish EXIT
# sjob-ci's timeout sends SIGTERM: still ship what there is.
trap 'exit 124' TERM

# shellcheck source=/dev/null
step "guest: $(. /etc/os-release && echo "$PRETTY_NAME"), $(systemctl --version | head -n1)," \
    "$(python3 --version), kernel $(uname -r), mode $SJOB_MODE"

if [[ -e $SJOB_SRC/install.sh ]]; then
    step "install.sh --wheelhouse $SJOB_WHEELHOUSE"
    installer=("$SJOB_SRC/install.sh")
    [[ -x $SJOB_SRC/install.sh ]] || installer=(bash "$SJOB_SRC/install.sh")
    "${installer[@]}" --wheelhouse "$SJOB_WHEELHOUSE" 2>&1 | tee "$SJOB_RESULTS/install.log"
    rc=${PIPESTATUS[0]}
    if ((rc != 0)); then
        step "install.sh FAILED (rc=$rc)"
        exit "$rc"
    fi
else
    step "no install.sh in the payload: skipping install"
fi

if [[ $SJOB_MODE == shell ]]; then
    exit 0
fi

# vmtest.py --pytest ARG puts extra pytest arguments here, one per line (to run a subset).
extra=()
if [[ -f $SJOB_SRC/tests/vm/pytest-args ]]; then
    mapfile -t extra <"$SJOB_SRC/tests/vm/pytest-args"
fi
[[ ${#extra[@]} -gt 0 ]] || extra=(tests/integration)

# Five phases (tests/integration/conftest.py says which tests are `timing`, `serial`, `aside` or `last`, and why):
# the timing ones alone; every other test $workers at a time (pytest-xdist); then the tail line, which tells
# vmtest.py that the next suite's VM may run its tests beside this one; the serial ones alone, then those also
# marked `aside`, then the last ones alone. (Two parallel phases side by side took twice as long each and made a
# Ctrl-C test time out; the serial phase leaves half of the CPU idle.) Where the timing phase goes, by sjob.timing:
#   (unset)  first;
#   gated    after the parallel phase, before the tail line: the host's own checks (lint, unit tests) run beside
#            this VM's boot, install and parallel phase, which tolerate a busy host;
#   last     last (a suite that runs beside another);
#   none     not at all (a VM whose sjob.phases leave out timing).
# gated and last: the guest prints the gate line and waits for a byte on its gate (ttyS2), which vmtest.py sends
# once no other VM does more than wait at its own gate (gated) or every other VM has ended (last). A phase that
# selects nothing (a subset) is not a failure.
workers=$(cmdline_value sjob.workers) || workers=3
pytest_phase() {  # pytest_phase NAME PYTEST-ARGS...
    local name=$1 rc
    shift
    step "pytest, $name: ${extra[*]}"
    # A hung test fails after 5 minutes (with its stack) instead of eating the whole VM time limit. The slowest
    # tests are listed: a serial one adds its whole time to every suite's run.
    /opt/sjob-test/bin/pytest -p no:cacheprovider -v -rfE --timeout 300 --durations 10 \
        --junitxml="$SJOB_RESULTS/junit-$name.xml" "$@" "${extra[@]}"
    rc=$?
    step "pytest, $name: rc=$rc"
    return "$rc"
}
wait_gate() {  # wait_gate WHAT: until vmtest.py opens the gate (WHAT says why it did, in phases.txt)
    local gate=/dev/ttyS2 started=$SECONDS
    exec 4<"$gate"
    stty -F "$gate" raw -echo
    echo "SJOB-VM-WAIT-GATE"
    head -c 1 <&4 >/dev/null
    exec 4<&-
    step "$1 after $((SECONDS - started))s"
}
if [[ $(cmdline_value sjob.start) == gated ]]; then
    wait_gate "the previous VM is in its tail"
fi
rcs=()
phases=$(cmdline_value sjob.phases) || phases=timing,parallel,serial,aside,last
has_phase() { [[ ,$phases, == *,$1,* ]]; }
phase() {  # phase NAME PYTEST-ARGS...: run it if sjob.phases lists it
    has_phase "$1" || return 0
    pytest_phase "$@"
    rcs+=($?)
}
timing_phase() {
    phase timing -p no:xdist -m "timing and not last"
}
timing=$(cmdline_value sjob.timing) || timing=first
has_phase timing || timing=none
if [[ $timing == first ]]; then
    timing_phase
fi
phase parallel -n "$workers" --dist worksteal -m "not serial and not timing and not last"
if [[ $timing == gated ]]; then
    wait_gate "alone on the host"
    timing_phase
fi
echo "SJOB-VM-TAIL"
phase serial -p no:xdist -m "serial and not aside and not timing and not last"
# The serial tests also marked `aside`: with the `last` ones when those have a VM of their own, where they even out
# the time of the suite's two VMs.
phase aside -p no:xdist -m "serial and aside and not timing and not last"
phase last -p no:xdist -m last
if [[ $timing == last ]]; then
    wait_gate "alone on the host"
    timing_phase
fi
rc=5  # no test selected at all, unless a phase says otherwise
for phase_rc in "${rcs[@]}"; do
    if ((phase_rc != 0 && phase_rc != 5)); then
        rc=$phase_rc
        break
    fi
    ((phase_rc == 0)) && rc=0
done
merge_junit
step "pytest exited with rc=$rc"

# The benchmarks (vmtest.py --bench, tests/run --bench) print ratios measured in one VM run; they take minutes.
if [[ $(cmdline_value sjob.bench) == 1 ]] && [[ -e $SJOB_SRC/tests/bench/bench.py ]]; then
    if ((rc == 0)); then
        step "benchmark tests/bench/bench.py"
        /opt/sjob/bin/python "$SJOB_SRC/tests/bench/bench.py" 2>&1 | tee "$SJOB_RESULTS/bench.log"
        bench_rc=${PIPESTATUS[0]}
        # A broken benchmark must be visible but must not fail the test run.
        ((bench_rc == 0)) || step "WARNING: benchmark FAILED (rc=$bench_rc); not failing the run"
    else
        step "benchmarks skipped: the tests failed"
    fi
fi
exit "$rc"
