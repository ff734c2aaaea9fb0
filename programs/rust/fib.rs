fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

fn main() {
    let n: u64 = std::env::args().nth(1).expect("N").parse().expect("a number");
    println!("{}", fib(n));
}
