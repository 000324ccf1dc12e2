# shellcheck shell=sh
# vmtest.py --shell: a serial line cannot report the host terminal's type and
# size, so the host passes them on the kernel command line.
if [ "$(tty 2>/dev/null)" = /dev/ttyS0 ]; then
    # shellcheck disable=SC2013 # the kernel command line is words, not lines
    for _sjob_arg in $(cat /proc/cmdline); do
        case $_sjob_arg in
            sjob.term=*) tput -T "${_sjob_arg#*=}" longname >/dev/null 2>&1 && export TERM="${_sjob_arg#*=}" ;;
            sjob.rows=*) stty rows "${_sjob_arg#*=}" ;;
            sjob.cols=*) stty cols "${_sjob_arg#*=}" ;;
        esac
    done
    unset _sjob_arg
    cd /srv/sjob 2>/dev/null || true
    echo "sjob test VM: project payload in /srv/sjob. Quit: Ctrl-a x (or 'poweroff')."
fi
