package main

import (
	"os"
	"syscall"
)

// childAttr makes the kernel send SIGTERM to a child when this process dies without stopping
// it (kill -9, a crash), so no cacheside is left serving on a forgotten port.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}

// dieWithParent has the kernel send this process SIGTERM when its parent exits: a SIGTERM sent
// to `go run` (or to make, which passes it to `go run`) ends `go run` and nothing else.
func dieWithParent() {
	parent := os.Getppid()
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0); errno != 0 {
		return
	}
	if os.Getppid() != parent { // it exited before the request was made
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}
}
