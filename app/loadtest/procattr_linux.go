package main

import "syscall"

// childAttr makes the kernel send SIGTERM to a child when this process dies without stopping
// it (kill -9, a crash), so no cacheside is left serving on a forgotten port.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
