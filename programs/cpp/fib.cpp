#include <iostream>
#include <string>

static unsigned long fib(unsigned long n) {
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        std::cerr << "usage: fib N" << std::endl;
        return 2;
    }
    std::cout << fib(std::stoul(argv[1])) << std::endl;
}
