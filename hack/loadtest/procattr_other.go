//go:build !linux

package main

import "syscall"

// childAttr: only Linux can tie a child's life to its parent's; elsewhere an interrupted run
// still stops its children, a killed one does not.
func childAttr() *syscall.SysProcAttr { return nil }

// dieWithParent: only Linux can; elsewhere a SIGTERM to `go run` leaves the load test running.
func dieWithParent() {}
