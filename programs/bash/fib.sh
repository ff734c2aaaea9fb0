# Naive recursion; the result comes back in $r (a subshell per call would
# measure fork, not recursion).
fib() {
    if (( $1 < 2 )); then
        r=$1
    else
        fib $(( $1 - 1 ))
        local a=$r
        fib $(( $1 - 2 ))
        r=$(( a + r ))
    fi
}
fib "$1"
echo "$r"
