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
#   SJOB_MODE        "test" (install + pytest + bench) or "shell" (install only)
#
# Exit code: pytest's (install failure: install.sh's, at least 1).
set -uo pipefail

: "${SJOB_SRC:=/srv/sjob}" "${SJOB_RESULTS:=/srv/results}"
: "${SJOB_WHEELHOUSE:=/var/cache/sjob/wheels}" "${SJOB_MODE:=test}"
export SJOB_SRC SJOB_RESULTS SJOB_WHEELHOUSE SJOB_MODE PYTHONUNBUFFERED=1
mkdir -p "$SJOB_RESULTS"
cd "$SJOB_SRC" || exit 2

step() { printf '==> %s\n' "$*"; }

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

# vmtest.py --pytest ARG puts extra pytest arguments here, one per line (to run a subset: no benchmarks then).
extra=()
if [[ -f $SJOB_SRC/tests/vm/pytest-args ]]; then
    mapfile -t extra <"$SJOB_SRC/tests/vm/pytest-args"
fi
[[ ${#extra[@]} -gt 0 ]] || extra=(tests/integration)

step "pytest ${extra[*]}"
# A hung test fails after 5 minutes (with its stack) instead of eating the whole VM time limit.
(cd "$SJOB_SRC" && /opt/sjob-test/bin/pytest -p no:cacheprovider -v -rfE --timeout 300 \
    --junitxml="$SJOB_RESULTS/junit.xml" "${extra[@]}")
rc=$?
step "pytest exited with rc=$rc"

# The benchmarks print ratios measured in one VM run, on the newest suite only (trixie): they take minutes.
# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if ((rc == 0)) && [[ ! -f $SJOB_SRC/tests/vm/pytest-args ]] && [[ -e $SJOB_SRC/tests/bench/bench.py ]] && [[ $codename == trixie ]]; then
    step "benchmark tests/bench/bench.py"
    /opt/sjob/bin/python "$SJOB_SRC/tests/bench/bench.py" 2>&1 | tee "$SJOB_RESULTS/bench.log"
    bench_rc=${PIPESTATUS[0]}
    # A broken benchmark must be visible but must not fail the test run.
    ((bench_rc == 0)) || step "WARNING: benchmark FAILED (rc=$bench_rc); not failing the run"
fi

systemd-analyze >"$SJOB_RESULTS/systemd-analyze.txt" 2>&1
systemctl list-units --failed --no-pager >"$SJOB_RESULTS/failed-units.txt" 2>&1
exit "$rc"
