// Idioms of Rust programs from judge and benchmark collections. Each line
// is "idiom: result"; main.rs.out is what Debian 13 prints.
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};

fn idiom(name: &str, run: impl FnOnce() -> std::io::Result<String>) {
    let value = run().unwrap_or_else(|e| format!("FAILED {e}"));
    println!("{name}: {value}");
}

fn stdin_lines() -> std::io::Result<String> {
    let (mut lines, mut sum) = (0u64, 0u64);
    for line in std::io::stdin().lock().lines() {
        sum += line?.trim().parse::<u64>().map_err(std::io::Error::other)?;
        lines += 1;
    }
    Ok(format!("{lines} lines, sum {sum}"))
}

fn threads() -> std::io::Result<String> {
    let handles: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| (0..=1000u64).sum::<u64>()))
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let parallel = std::thread::available_parallelism()?.get() >= 1;
    Ok(format!("{total}, available_parallelism >= 1: {parallel}"))
}

fn local_tcp() -> std::io::Result<String> {
    let listener = TcpListener::bind("localhost:0")?;
    let address = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut asked = [0u8; 4];
        stream.read_exact(&mut asked)?;
        stream.write_all(if &asked == b"ping" { b"pong" } else { b"what" })
    });
    let mut client = TcpStream::connect(address)?;
    client.write_all(b"ping")?;
    let mut answer = String::new();
    client.read_to_string(&mut answer)?;
    server.join().unwrap()?;
    Ok(answer)
}

fn main() {
    idiom("rs-lines-of-stdin", stdin_lines);
    idiom("rs-threads", threads);
    idiom("rs-tcp-on-localhost", local_tcp);
    idiom("rs-write-/dev/stderr", || {
        std::fs::write("/dev/stderr", "written to /dev/stderr\n")?;
        Ok("ok".into())
    });
    idiom("rs-process::Command", || {
        let out = std::process::Command::new("sh")
            .args(["-c", "echo $((6*7))"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    idiom("rs-unicode-output", || Ok("héllo wörld ☃ 日本語 🎉".into()));
    idiom("rs-unicode-arguments", || {
        Ok(format!(
            "{:?}",
            std::env::args().skip(1).collect::<Vec<_>>()
        ))
    });
    idiom("rs-temp_dir-and-HOME-writable", || {
        let tmp = std::env::temp_dir().join("written.txt");
        std::fs::write(&tmp, "t")?;
        let home = std::path::PathBuf::from(std::env::var("HOME").map_err(std::io::Error::other)?)
            .join("written.txt");
        std::fs::write(&home, "h")?;
        Ok(std::fs::read_to_string(tmp)? + &std::fs::read_to_string(home)?)
    });
}
