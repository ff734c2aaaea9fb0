# Idioms of bash programs from judge and benchmark collections. Each line is
# "idiom: result"; main.sh.out is what Debian 13 prints.
idiom() { printf '%s: %s\n' "$1" "$2"; }

idiom sh-read-all-of-/dev/stdin "$(wc -c < /dev/stdin) bytes"
echo "written to /dev/stderr" > /dev/stderr
idiom sh-write-/dev/stderr "$?"
echo "written to /dev/stdout" > /dev/stdout
idiom sh-write-/dev/stdout "$?"
idiom sh-awk "$(printf '3 c\n1 a\n2 b\n' | awk '{ s += $1 } END { print s }')"
idiom sh-sed "$(echo 'hello world' | sed -e 's/world/there/')"
idiom sh-grep "$(printf 'apple\nbanana\ncherry\n' | grep -c an)"
idiom sh-sort-uniq "$(printf 'b\na\nb\nc\na\nb\n' | sort | uniq -c | sort -rn | head -1 | awk '{ print $2 " x" $1 }')"
idiom sh-tr "$(echo 'Hello' | tr 'a-z' 'A-Z')"
idiom sh-cut "$(echo 'a:b:c' | cut -d: -f2)"
idiom sh-head-tail "$(seq 1 100 | head -20 | tail -1)"
idiom sh-wc "$(printf 'one two\nthree\n' | wc -w)"
idiom sh-xargs "$(printf '1\n2\n3\n' | xargs echo)"
idiom sh-find "$(mkdir -p tree/a/b && touch tree/a/b/x.txt tree/y.txt && find tree -name '*.txt' | sort | tr '\n' ' ')"
idiom sh-bc "$(echo '2^100' | bc) $(echo 'scale=5; 4*a(1)' | bc -l)"
idiom sh-getent-hosts-localhost "$(getent hosts localhost | awk '{ print $1 }' | sort | tr '\n' ' ')"
idiom sh-getent-ahostsv4-localhost "$(getent ahostsv4 localhost | awk 'NR == 1 { print $1 }')"
idiom sh-getent-hosts-own-name "$(getent hosts "$(hostname)" | awk '{ print $1 }')"
idiom sh-hostname-is-/etc/hostname "$([ "$(hostname)" = "$(cat /etc/hostname)" ] && echo same)"
idiom sh-script-gets-a-pty "$(script -qec tty /dev/null | tr -d '\r' | sed 's|^/dev/pts/[0-9]*$|a pseudo-terminal|')"
idiom sh-locale-charmap "$(locale charmap)"
idiom sh-unicode-length "${#1}"
idiom sh-unicode-output "héllo wörld ☃ 日本語 🎉"
idiom sh-unicode-arguments "$(printf '[%s]' "$@")"
idiom sh-time-zone "$(date +%Z)"
idiom sh-/tmp-and-HOME-writable "$(echo t > /tmp/written.txt && echo h > ~/written.txt && cat /tmp/written.txt ~/written.txt | tr -d '\n')"
idiom sh-nproc "$([ "$(nproc)" -ge 1 ] && echo at least one)"
