// Command pause is the rig's pod sandbox process, and its probe: with no arguments it sleeps as
// PID 1 until SIGTERM or SIGINT, reaping orphaned children as a pause container must; with
// `-http ADDR` it also answers "ok" on ADDR, which the rig's node health check asks through the
// pod network. With `-get URL...` it is a client instead: it GETs each URL once, prints
// "URL BODY" per line and exits 0, or exits 1 at the first failure (e2e/tests/node_smoke.rs
// reaches a Service by its name from a pod this way: the cluster DNS and the Service's rules).
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("http", "", "also answer HTTP GET with \"ok\" on this address")
	get := flag.Bool("get", false, "GET each URL argument once, print it and its body, exit")
	flag.Parse()
	if *get {
		os.Exit(fetch(flag.Args()))
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	if *addr != "" {
		go func() {
			err := http.ListenAndServe(*addr, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				_, _ = w.Write([]byte("ok\n"))
			}))
			os.Stderr.WriteString("pause: " + err.Error() + "\n")
			os.Exit(1)
		}()
	}
	for s := range signals {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

func fetch(urls []string) int {
	client := http.Client{Timeout: 10 * time.Second}
	for _, url := range urls {
		resp, err := client.Get(url)
		if err != nil {
			fmt.Fprintf(os.Stderr, "pause: %v\n", err)
			return 1
		}
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			fmt.Fprintf(os.Stderr, "pause: GET %s: %s %v\n", url, resp.Status, err)
			return 1
		}
		fmt.Printf("%s %s\n", url, strings.TrimSpace(string(body)))
	}
	return 0
}
