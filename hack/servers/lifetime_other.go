//go:build !linux

package servers

import "syscall"

// DiesWithParent: only Linux can tie a child's life to its parent's; elsewhere an interrupted
// run still stops its children, a killed one does not.
func DiesWithParent(attr *syscall.SysProcAttr, _ syscall.Signal) *syscall.SysProcAttr { return attr }

// DieWithParent: only Linux can; elsewhere a SIGTERM to `go run` leaves the program running.
func DieWithParent() {}
