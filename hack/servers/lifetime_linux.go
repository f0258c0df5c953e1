package servers

import (
	"os"
	"syscall"
)

// DiesWithParent makes the kernel send sig to a child when this process dies without stopping
// it (SIGKILL, a crash, a test binary's timeout panic), so no server or service outlives the run
// that started it. The kernel ties this to the thread that started the child; Go keeps its
// threads for the life of the process unless a goroutine locked to one exits, which nothing
// here does.
func DiesWithParent(attr *syscall.SysProcAttr, sig syscall.Signal) *syscall.SysProcAttr {
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	attr.Pdeathsig = sig
	return attr
}

// DieWithParent has the kernel send this process SIGTERM when its parent exits. make and `go
// run` pass a SIGTERM on to their own child only, and `go run` exits without waiting: a program
// run that way hears of it too, and stops what it started.
func DieWithParent() {
	parent := os.Getppid()
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0); errno != 0 {
		return
	}
	if os.Getppid() != parent { // it exited before the request was made
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}
}
