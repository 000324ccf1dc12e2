#!/bin/bash
# Install sjob on a Debian 12/13 or Ubuntu 22.04/24.04 machine running systemd. Run as root.
#
#   sudo ./install.sh                       install or upgrade from this checkout, dependencies from PyPI
#   sudo ./install.sh --wheelhouse DIR      take every Python package from DIR instead of PyPI (offline)
#   sudo ./install.sh --uninstall           remove everything an earlier run added
#
# What it adds: the Debian packages it needs (only those missing), a virtual environment in /opt/sjob and the
# functions' runtime (Python with pandas) in /opt/sjob/runtime, the command /usr/local/bin/sjob, the units
# sjobd.socket, sjobd.service and sjob.slice in
# /usr/local/lib/systemd/system, the default policy in /etc/sjob (never overwriting an edited one), the man pages
# sjob(1) and sjobd(8) and bash, zsh and fish completion under /usr/local/share, and it enables sjobd.socket.
# Running it again upgrades in place and is otherwise harmless; running jobs are not touched.
set -euo pipefail

PREFIX=/opt/sjob
UNIT_DIR=/usr/local/lib/systemd/system
CONF_DIR=/etc/sjob
STATE_DIR=/var/lib/sjob
BIN=/usr/local/bin/sjob
MANIFEST="$PREFIX/install-manifest"
SHARE=/usr/local/share
# Generated from the installed sjob's own declaration of its commands (supervisor.manpages, sjob completion).
MAN_PAGES=("$SHARE/man/man1/sjob.1" "$SHARE/man/man8/sjobd.8")
COMPLETIONS=(
    "bash:$SHARE/bash-completion/completions/sjob"
    "zsh:$SHARE/zsh/site-functions/_sjob"
    "fish:$SHARE/fish/vendor_completions.d/sjob.fish"
)
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD_PACKAGES=(gcc libc6-dev pkg-config libsystemd-dev)
PYTHON=python3

WHEELHOUSE=
UNINSTALL=0
BUILD_DIR=
trap '[ -z "$BUILD_DIR" ] || rm -rf "$BUILD_DIR"' EXIT

say() { printf 'install.sh: %s\n' "$*"; }
die() {
    printf 'install.sh: error: %s\n' "$1" >&2
    [ -n "${2:-}" ] && printf 'hint: %s\n' "$2" >&2
    exit 1
}

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; WHEELHOUSE=$(cd "$2" && pwd); shift 2 ;;
        --wheelhouse=*) WHEELHOUSE=$(cd "${1#*=}" && pwd); shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option: $1" "see ./install.sh --help" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root" "sudo ./install.sh"
[ -d /run/systemd/system ] || die "this machine does not run systemd" "sjob runs jobs as systemd units; it needs systemd as PID 1"

uninstall() {
    say "stopping and disabling sjobd"
    systemctl disable --now sjobd.socket sjobd.service >/dev/null 2>&1 || true
    rm -f "$UNIT_DIR/sjobd.socket" "$UNIT_DIR/sjobd.service" "$UNIT_DIR/sjob.slice" "$BIN" "${MAN_PAGES[@]}"
    local entry
    for entry in "${COMPLETIONS[@]}"; do
        rm -f "${entry#*:}"
    done
    systemctl daemon-reload
    local added=() groups=()
    if [ -f "$MANIFEST" ]; then
        mapfile -t added < <(sed -n 's/^apt: //p' "$MANIFEST")
        mapfile -t groups < <(sed -n 's/^group: //p' "$MANIFEST")
    fi
    rm -rf "$PREFIX" "$CONF_DIR" "$STATE_DIR"
    local group
    for group in "${groups[@]}"; do
        groupdel "$group" 2>/dev/null || true
    done
    if [ ${#added[@]} -gt 0 ]; then
        say "removing the Debian packages install.sh added: ${added[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get remove -y -q "${added[@]}" >/dev/null
    fi
    say "sjob is uninstalled (running sjob-*.service jobs, if any, were left alone)"
}

python_at_least_3_11() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

pick_python() {
    # sjob needs Python 3.11 or later. Debian 12/13 and Ubuntu 24.04 ship it as python3; Ubuntu 22.04's python3 is
    # 3.10, but it packages python3.11 beside it.
    local candidate
    if python_at_least_3_11 python3; then
        PYTHON=python3
        return
    fi
    candidate=$(apt-cache policy python3 2>/dev/null | sed -n 's/^ *Candidate: //p')
    if [ -n "$candidate" ] && [ "$candidate" != "(none)" ] && dpkg --compare-versions "$candidate" ge 3.11; then
        PYTHON=python3
    else
        PYTHON=python3.11
    fi
}

missing_packages() {
    local pkg
    for pkg in "$PYTHON" "$PYTHON-venv" "$PYTHON-dev" "${BUILD_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if [ ${#missing[@]} -eq 0 ]; then
        return
    fi
    say "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    printf 'apt: %s\n' "${missing[@]}" >>"$PREFIX.apt-added"
}

install_python() {
    # A venv made by another Python (e.g. after a distribution upgrade) is rebuilt rather than patched.
    if [ -x "$PREFIX/bin/python3" ] && ! "$PREFIX/bin/python3" -c 'import sys' >/dev/null 2>&1; then
        say "the virtual environment in $PREFIX is broken; recreating it"
        rm -rf "$PREFIX"
    fi
    if [ ! -x "$PREFIX/bin/python3" ]; then
        say "creating the virtual environment $PREFIX"
        "$PYTHON" -m venv "$PREFIX"
    fi
    local pip=("$PREFIX/bin/python3" -m pip --disable-pip-version-check --no-input -q)
    if [ -n "$WHEELHOUSE" ]; then
        pip+=(--no-cache-dir)
        export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE"
    fi
    say "installing sjob from $SRC${WHEELHOUSE:+ with packages from $WHEELHOUSE}"
    # The source is copied first: pip builds in the source tree, which may be read-only or owned by someone else.
    BUILD_DIR=$(mktemp -d)
    mkdir "$BUILD_DIR/src"
    tar -C "$SRC" --exclude=.git --exclude=build --exclude=.venv --exclude='*.egg-info' -cf - . | tar -C "$BUILD_DIR/src" -xf -
    # Build the wheel once (this compiles sjob-shim) and install it with its dependencies. Over an installed sjob,
    # then reinstall sjob itself even when its version did not change, so that an upgrade from a checkout always
    # lands (pip keeps an installed version it is given again). Each pip run costs ~20 s of CPU in the test VM.
    "${pip[@]}" wheel --no-deps --wheel-dir "$BUILD_DIR/dist" "$BUILD_DIR/src"
    local wheel installed=no
    wheel=$(find "$BUILD_DIR/dist" -name 'sjob-*.whl' -print -quit)
    [ -n "$wheel" ] || die "building the sjob wheel produced nothing" "see the pip output above"
    if "$PREFIX/bin/python3" -c 'import importlib.metadata as m; m.version("sjob")' >/dev/null 2>&1; then
        installed=yes
    fi
    "${pip[@]}" install "$wheel"
    if [ "$installed" = yes ]; then
        "${pip[@]}" install --force-reinstall --no-deps "$wheel"
    fi
}

install_runtime() {
    # The shared runtime of functions (issue G): Python with pandas and numpy (runtime/requirements.txt), which
    # every function's code runs with, read-only to it; rebuilt when the requirements change. And the empty
    # directories that functions' code and builds are mounted on inside their units.
    # Its stamp: the requirements, and the pip that a new venv gets (ensurepip's; python3-pip-whl on Debian), which
    # also installs the requirements of functions' builds (fnunits.BUILD): running this again after the system's pip
    # was updated gives the builds that pip. tests/vm/image/customize.sh writes the same stamp.
    local runtime="$PREFIX/runtime" want
    want="$(sha256sum "$SRC/runtime/requirements.txt" | cut -d' ' -f1) pip $("$PYTHON" -c 'import ensurepip; print(ensurepip.version())')"
    if [ ! -x "$runtime/bin/python3" ] || [ "$(cat "$runtime/.sjob-requirements" 2>/dev/null)" != "$want" ]; then
        say "setting up the functions runtime in $runtime (Python with pandas)"
        rm -rf "$runtime"
        "$PYTHON" -m venv "$runtime"
        "$runtime/bin/python3" -m pip --disable-pip-version-check --no-input -q install --no-cache-dir --no-compile \
            -r "$SRC/runtime/requirements.txt"
        # Bytecode, as pip would write it, but on every CPU (pip compiles one file after another) and not for the
        # packages' own test suites, which no function imports: 1,400 of pandas' and numpy's 1,900 files. Functions
        # cannot write bytecode into the runtime, so what they import must be compiled here. In the test VM this
        # takes the runtime from 70 to about 35 s.
        "$runtime/bin/python3" -m compileall -q -j 0 -x '/tests/' "$runtime/lib" >/dev/null ||
            say "warning: some of the runtime's files do not compile; functions import them from source"
        echo "$want" >"$runtime/.sjob-requirements"
    fi
    install -d -m 0755 "$PREFIX/function" "$PREFIX/build"
}

install_files() {
    install -d -m 0755 "$UNIT_DIR" "$PREFIX/share/doc/sjob"
    local unit
    for unit in sjobd.socket sjobd.service sjob.slice; do
        sed "s|/opt/sjob|$PREFIX|g" "$SRC/units/$unit" >"$UNIT_DIR/$unit.tmp"
        chmod 0644 "$UNIT_DIR/$unit.tmp"
        mv -f "$UNIT_DIR/$unit.tmp" "$UNIT_DIR/$unit"
    done
    install -m 0644 "$SRC/README.md" "$PREFIX/share/doc/sjob/README.md"
    install -d -m 0755 "$CONF_DIR"
    if [ ! -e "$CONF_DIR/policy.toml" ]; then
        install -m 0644 "$SRC/policy/default.toml" "$CONF_DIR/policy.toml"
    fi
    # Not a link to pip's launcher $PREFIX/bin/sjob: that one imports re (to tidy argv[0] on Windows), which costs
    # every sjob --help a quarter of its start-up in the test VM.
    install -d -m 0755 "$(dirname "$BIN")"
    printf '#!%s/bin/python3\nfrom supervisor.cli import main\n\nmain()\n' "$PREFIX" >"$BIN.tmp"
    chmod 0755 "$BIN.tmp"
    mv -f "$BIN.tmp" "$BIN"
    # Members of sjob-admin may see and stop everyone's jobs and manage tokens (see policy.toml [admins]).
    if ! getent group sjob-admin >/dev/null; then
        groupadd --system sjob-admin
        echo "group: sjob-admin" >>"$PREFIX.apt-added"
    fi
    # Members of sjob-fn may deploy functions (see policy.toml [[rules]]).
    if ! getent group sjob-fn >/dev/null; then
        groupadd --system sjob-fn
        echo "group: sjob-fn" >>"$PREFIX.apt-added"
    fi
    # The key that signs tokens (Ed25519); sjobd would make one at start, but then the first start writes it.
    install -d -m 0700 "$STATE_DIR"
    if ! compgen -G "$STATE_DIR/keys/*.pem" >/dev/null; then
        "$PREFIX/bin/sjobd" --new-key --state-dir "$STATE_DIR" >/dev/null
    fi
    "$PREFIX/bin/sjobd" --check-policy --config-dir "$CONF_DIR" >/dev/null ||
        die "$CONF_DIR/policy.toml is not valid for this sjob (the error is above)" \
            "fix it, or move it away and run install.sh again to get the shipped default ($SRC/policy/default.toml)"
}

install_docs() {
    # Made by the sjob just installed, so that they describe exactly its commands and options.
    local page entry
    for page in "${MAN_PAGES[@]}"; do
        install -d -m 0755 "$(dirname "$page")"
        "$PREFIX/bin/python3" -m supervisor.manpages "$(basename "$page")" >"$page.tmp"
        chmod 0644 "$page.tmp"
        mv -f "$page.tmp" "$page"
    done
    for entry in "${COMPLETIONS[@]}"; do
        install -d -m 0755 "$(dirname "${entry#*:}")"
        "$PREFIX/bin/sjob" completion "${entry%%:*}" >"${entry#*:}.tmp"
        chmod 0644 "${entry#*:}.tmp"
        mv -f "${entry#*:}.tmp" "${entry#*:}"
    done
}

write_manifest() {
    {
        echo "# written by sjob's install.sh; --uninstall reads it"
        echo "source: $SRC"
        echo "installed: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        if [ -f "$PREFIX.apt-added" ]; then cat "$PREFIX.apt-added"; fi
        if [ -f "$MANIFEST" ]; then grep -E '^(apt|group): ' "$MANIFEST" || true; fi
    } | awk '!seen[$0]++' >"$MANIFEST.tmp"
    mv -f "$MANIFEST.tmp" "$MANIFEST"
    rm -f "$PREFIX.apt-added"
}

start_units() {
    systemctl daemon-reload
    systemctl enable --now sjobd.socket >/dev/null 2>&1 || die "could not enable sjobd.socket" "systemctl status sjobd.socket"
    # An upgrade must not keep serving the old code; jobs themselves are separate units and keep running.
    systemctl try-restart sjobd.service
}

if [ "$UNINSTALL" -eq 1 ]; then
    uninstall
    exit 0
fi

pick_python
install_packages
python_at_least_3_11 "$PYTHON" || die "$PYTHON is older than 3.11" "sjob needs Python 3.11 or later"
install_python
install_runtime
install_files
install_docs
write_manifest
start_units
say "done. Try: sjob run -- echo hello"
