# Idioms of Python programs from judge and benchmark collections. Each line
# is "idiom: result"; compat.py.out is what Debian 13 prints.
import http.server
import locale
import multiprocessing
import os
import pathlib
import pty
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def idiom(name, run):
    try:
        value = run()
    except Exception as e:  # the line says what failed, the others still run
        value = f"FAILED {type(e).__name__}: {e}"
    print(f"{name}: {value}", flush=True)


def read_dev_stdin():
    data = open("/dev/stdin", "rb").read()
    numbers = data.split()
    return f"{len(data)} bytes, {len(numbers)} lines, sum {sum(map(int, numbers))}"


def write_dev_stdout():
    with open("/dev/stdout", "w") as out:
        out.write("written to /dev/stdout\n")
    return "ok"


def write_dev_stderr():
    with open("/dev/stderr", "w") as err:
        err.write("written to /dev/stderr\n")
    return "ok"


def dev_fd():
    return sorted(set(os.listdir("/dev/fd")) & {"0", "1", "2"})


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from http.server"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def local_http():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    with urllib.request.urlopen(f"http://localhost:{port}/", timeout=30) as response:
        body = response.read().decode()
    server.shutdown()
    return body


def resolve_localhost():
    infos = socket.getaddrinfo("localhost", 80, proto=socket.IPPROTO_TCP)
    return sorted({info[4][0] for info in infos})


def square(n):
    return n * n


def pool():
    with multiprocessing.Pool(2) as workers:
        return sum(workers.map(square, range(100)))


def pseudo_terminal():
    master, slave = pty.openpty()
    named = os.ttyname(slave).startswith("/dev/pts/")
    os.write(slave, b"ping\n")
    echoed = b""
    while not echoed.endswith(b"\n"):  # the line may come in pieces
        echoed += os.read(master, 100)
    return f"{named} {echoed!r}"


def writable_places():
    with tempfile.NamedTemporaryFile("w+", dir="/tmp") as tmp:
        tmp.write("t")
        tmp.seek(0)
        in_tmp = tmp.read()
    home = pathlib.Path.home() / "written.txt"
    home.write_text("h")
    return in_tmp + home.read_text()


idiom("py-read-all-of-/dev/stdin", read_dev_stdin)
idiom("py-write-/dev/stdout", write_dev_stdout)
idiom("py-write-/dev/stderr", write_dev_stderr)
idiom("py-/dev/fd", dev_fd)
idiom("py-http.server-and-urllib-on-localhost", local_http)
idiom("py-getaddrinfo-localhost", resolve_localhost)
idiom("py-hostname-is-/etc/hostname", lambda: socket.gethostname() == open("/etc/hostname").read().strip())
idiom("py-multiprocessing.Pool", pool)
idiom("py-subprocess", lambda: subprocess.run(["sh", "-c", "echo $((6*7))"], capture_output=True, text=True).stdout.strip())
idiom("py-os.cpu_count", lambda: os.cpu_count() == len(os.sched_getaffinity(0)) >= 1)
idiom("py-pty.openpty", pseudo_terminal)
idiom("py-encodings", lambda: f"{locale.getpreferredencoding()} {sys.getfilesystemencoding()} {sys.stdout.encoding}")
idiom("py-unicode-output", lambda: "héllo wörld ☃ 日本語 🎉")
idiom("py-unicode-arguments", lambda: sys.argv[1:])
idiom("py-time-zone", lambda: f"{time.strftime('%Z')} {time.tzname}")
idiom("py-/tmp-and-$HOME-writable", writable_places)
