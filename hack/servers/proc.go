package servers

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a server process: a child of this process, reaped as soon as it exits, or one found
// running (started by an earlier run).
type proc struct {
	pid    int
	exited chan struct{} // closed when a child has exited; nil for a process found running
	err    error         // a child's exit status, once exited is closed
}

func startProc(cmd *exec.Cmd) (*proc, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func foundProc(pid int) *proc { return &proc{pid: pid} }

func (p *proc) alive() bool {
	if p.exited == nil {
		return processAlive(p.pid)
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *proc) signal(sig syscall.Signal) { _ = syscall.Kill(p.pid, sig) }

// stop sends sig and waits; after a minute it sends escalate, then SIGKILL.
func (p *proc) stop(sig, escalate syscall.Signal) error {
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{sig, time.Minute}, {escalate, 10 * time.Second}, {syscall.SIGKILL, 5 * time.Second}} {
		p.signal(syscall.SIGCONT) // a frozen process cannot act on the signal
		p.signal(step.sig)
		for deadline := time.Now().Add(step.wait); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if !p.alive() {
				return nil
			}
		}
	}
	return fmt.Errorf("process %d did not exit", p.pid)
}

// pause freezes the process and, after it, its children (a postmaster forks no new backend
// once frozen); resume thaws them in the opposite order.
func (p *proc) pause() {
	p.signal(syscall.SIGSTOP)
	for _, c := range childrenOf(p.pid) {
		_ = syscall.Kill(c, syscall.SIGSTOP)
	}
}

func (p *proc) resume() {
	for _, c := range childrenOf(p.pid) {
		_ = syscall.Kill(c, syscall.SIGCONT)
	}
	p.signal(syscall.SIGCONT)
}

// processAlive: it exists and is not a zombie (a reparented daemon may wait to be reaped).
func processAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // no procfs: trust kill -0
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(fields) == 0 || fields[0] != "Z"
}

// processIs guards against a recycled pid in a stale pid file.
func processIs(pid int, comm string) bool {
	if !processAlive(pid) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err != nil || strings.TrimSpace(string(b)) == comm
}

// childrenOf lists the processes whose parent is pid, from /proc.
func childrenOf(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var kids []int
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after its last paren.
		fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			kids = append(kids, child)
		}
	}
	return kids
}

// FreePort asks the kernel for a free loopback TCP port.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
