#include <stdio.h>
#include <stdlib.h>

static unsigned long fib(unsigned long n) {
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: fib N\n");
        return 2;
    }
    printf("%lu\n", fib(strtoul(argv[1], NULL, 10)));
    return 0;
}
