// Command pause is the stand-in for the Kubernetes pause container (registry.k8s.io/pause, build/pause/linux/
// pause.c), which holds a pod's namespaces open: it sleeps until SIGINT or SIGTERM, then exits 0, and as the
// pod's PID 1 (a shared process namespace) reaps the zombies that are re-parented to it. Static (CGO off), so
// the image holds this one file.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is what `pause -v` prints, as the real one prints its own.
const version = "3.10-standin"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Printf("pause.go %s\n", version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", sig)
		os.Exit(0)
	}
}

// reap collects every child that has exited. Signals coalesce, so one SIGCHLD may stand for several.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
