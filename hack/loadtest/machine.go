package main

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/cacheside/cacheside/hack/loadtest/internal/results"
)

// machineFacts is the report's header: enough to tell whether another run is comparable.
func machineFacts(o options, began time.Time) []results.Fact {
	var kinds []string
	for _, c := range o.clients {
		if c.acceptEncoding == "" {
			kinds = append(kinds, "identity clients (no `Accept-Encoding`)")
		} else {
			kinds = append(kinds, c.name+" clients (`Accept-Encoding: "+c.acceptEncoding+"`)")
		}
	}
	enc := strings.Join(kinds, " and ")
	services := results.Fact{Name: "Services", Value: "one cacheside per cache tier (`CACHE_LOCAL_ENABLED=false` for redis, `true` for redis+local), each with its own `CACHE_KEY_PREFIX`, `LOG_LEVEL=warn`, `REPLICATION_ENABLED=false` (the replication section measures the consumer), on loopback; the table reseeded with `cacheside seed -replace -n ROWS` before each table size"}
	if o.replOnly {
		services.Value = "the replication section's only: see there"
	}
	return []results.Fact{
		{Name: "Date", Value: began.UTC().Format("2006-01-02 15:04 MST")},
		{Name: "Machine", Value: fmt.Sprintf("%d CPUs (nproc), %s, %s/%s, Linux %s, %s RAM",
			cpuCount(), cpuModel(), runtime.GOOS, runtime.GOARCH, kernel(), memory())},
		{Name: "Load average before the run", Value: loadAverage() + " (1, 5, 15 min)"},
		{Name: "Go", Value: fmt.Sprintf("load generator %s; cacheside %s", runtime.Version(), binaryVersion(o.bin, o.root))},
		{Name: "Command", Value: "`" + o.command + "`"},
		{Name: "Load", Value: fmt.Sprintf("closed loop over keep-alive connections (vegeta), %s per measurement after %s of warm-up, %d round(s) per cell, %s, per-request timeout %s",
			o.duration, o.warmup, o.repeat, enc, o.timeout)},
		services,
	}
}

// loadAverage is the 1, 5 and 15-minute load averages. Other work on the machine during a run
// shows here (a load above the CPU count before the run starts means the numbers are shared).
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// cpuCount is what nproc prints: the CPUs this process may run on.
func cpuCount() int { return runtime.NumCPU() }

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "CPU model unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "CPU model unknown"
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "(unknown kernel)"
	}
	return strings.TrimSpace(string(b))
}

func memory() string {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb int64
		if _, err := fmt.Sscanf(sc.Text(), "MemTotal: %d kB", &kb); err == nil {
			return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	return "unknown"
}

// binaryVersion is the Go version and commit the cacheside binary was built from; "modified"
// marks a build from a work tree with uncommitted changes, which a reader should know.
func binaryVersion(bin, root string) string {
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		return "(build info unreadable)"
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = ", uncommitted changes"
			}
		}
	}
	if rev == "" {
		// Built with -buildvcs=false (GOFLAGS here does): the work tree it was built from
		// is the one this runs in.
		rev, modified = gitRevision(root)
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return "built with " + info.GoVersion
	}
	return fmt.Sprintf("built with %s from commit %s%s", info.GoVersion, rev, modified)
}

func gitRevision(root string) (rev, modified string) {
	git := func(args ...string) ([]byte, error) {
		cmd := exec.Command("git", args...)
		cmd.Dir = root
		return cmd.Output()
	}
	out, err := git("rev-parse", "HEAD")
	if err != nil {
		return "", ""
	}
	if st, err := git("status", "--porcelain", "--untracked-files=no"); err == nil && len(bytes.TrimSpace(st)) > 0 {
		modified = ", uncommitted changes"
	}
	return strings.TrimSpace(string(out)), modified
}
