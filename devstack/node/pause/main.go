// Command pause is the rig's pod sandbox process, and its probe: with no arguments it sleeps as
// PID 1 until SIGTERM or SIGINT, reaping orphaned children as a pause container must; with
// `-http ADDR` it also answers "ok" on ADDR, which the rig's node health check asks through the
// pod network.
package main

import (
	"flag"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	addr := flag.String("http", "", "also answer HTTP GET with \"ok\" on this address")
	flag.Parse()
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
