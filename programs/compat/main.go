// Idioms of Go programs from judge and benchmark collections. Each line is
// "idiom: result"; main.go.out is what Debian 13 prints.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

func idiom(name string, run func() (string, error)) {
	value, err := run()
	if err != nil {
		value = "FAILED " + err.Error()
	}
	fmt.Printf("%s: %s\n", name, value)
}

func stdinLines() (string, error) {
	scanner := bufio.NewScanner(os.Stdin)
	lines, sum := 0, int64(0)
	for scanner.Scan() {
		n, err := strconv.ParseInt(scanner.Text(), 10, 64)
		if err != nil {
			return "", err
		}
		lines++
		sum += n
	}
	return fmt.Sprintf("%d lines, sum %d", lines, sum), scanner.Err()
}

func goroutines() (string, error) {
	var wg sync.WaitGroup
	results := make([]int, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j <= 1000; j++ {
				results[i] += j
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, r := range results {
		total += r
	}
	return fmt.Sprintf("%d, NumCPU >= 1: %v", total, runtime.NumCPU() >= 1), nil
}

func localHTTP() (string, error) {
	listener, err := net.Listen("tcp", "localhost:0")
	if err != nil {
		return "", err
	}
	defer listener.Close()
	go http.Serve(listener, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from net/http")
	}))
	client := http.Client{Timeout: 30 * time.Second}
	response, err := client.Get("http://" + listener.Addr().String() + "/")
	if err != nil {
		return "", err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	return string(body), err
}

func hostname() (string, error) {
	name, err := os.Hostname()
	if err != nil {
		return "", err
	}
	file, err := os.ReadFile("/etc/hostname")
	return strconv.FormatBool(name == strings.TrimSpace(string(file))), err
}

func main() {
	idiom("go-bufio.Scanner-lines-of-stdin", stdinLines)
	idiom("go-goroutines", goroutines)
	idiom("go-net/http-on-localhost", localHTTP)
	idiom("go-write-/dev/stderr", func() (string, error) {
		return "ok", os.WriteFile("/dev/stderr", []byte("written to /dev/stderr\n"), 0)
	})
	idiom("go-hostname-is-/etc/hostname", hostname)
	idiom("go-os/exec", func() (string, error) {
		out, err := exec.Command("sh", "-c", "echo $((6*7))").Output()
		return strings.TrimSpace(string(out)), err
	})
	idiom("go-unicode-output", func() (string, error) { return "héllo wörld ☃ 日本語 🎉", nil })
	idiom("go-unicode-arguments", func() (string, error) { return fmt.Sprintf("%q", os.Args[1:]), nil })
	idiom("go-time-zone", func() (string, error) { return time.Now().Format("MST"), nil })
}
