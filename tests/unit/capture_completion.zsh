# zsh -f capture_completion.zsh FPATH_DIR 'COMMAND LINE': print what zsh's completion offers at the end of the line.
# zsh completes only inside its line editor, so this drives one in a pty and has compadd print each match as
# <M>match</M> (after github.com/Valodim/zsh-capture-completion).
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PROMPT=''; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z 'compadd () {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
    typeset -a hits; builtin compadd -A hits "$@"
    local h; for h in $hits; do print -r -- "<M>$h</M>"; done
}'
zpty -w z 'bindkey "^I" complete-word; null-line () { echo -E - $'"'"'\0'"'"' }'
zpty -w z 'compprefuncs=( null-line ); comppostfuncs=( null-line exit )'
zpty -n -w z "$2"$'\t'
integer seen=0
while zpty -r z; do :; done | while IFS= read -r line; do
    if [[ $line == *$'\0\r' ]]; then (( seen++ )) && return 0 || continue; fi
    (( seen )) && print -r -- "$line"
done
