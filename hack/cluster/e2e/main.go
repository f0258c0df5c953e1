// Command e2e is the checks half of `make e2e-cluster` (hack/cluster/run.sh). Against the cluster of
// hack/cluster/up.sh, with the images imported and the observability stack of k8s/observability running, it
// installs the chart and checks, in order, what the chart and the service promise there:
//
//	install         helm install --wait in a namespace enforcing Pod Security "restricted", helm test, the
//	                migration init containers, and every pod's security context, in its spec and in the
//	                running processes (/proc: uid, no_new_privs, capabilities, seccomp, read-only root)
//	traces          app/e2e's trace test in remote mode: miss, hit and bypass waterfalls read back from the
//	                in-cluster Jaeger, exported through the OpenTelemetry Collector
//	fault-redis     the Redis pod deleted under load: BYPASS answers, no failure, then hits again
//	fault-postgres  Postgres scaled to 0: cached reads still answered (HIT or STALE), the pods stay Ready,
//	                503 with Retry-After for uncached reads and writes, recovery without restarts
//	fault-app-pod   a cacheside pod evicted under load: the PDB refuses a second eviction, and no request
//	                fails beyond the one in flight (readiness, preStop, graceful shutdown)
//	upgrade         helm upgrade to another image tag under load: no failed request, the pre-upgrade
//	                migration Job done before the first new pod, old and new pods' near-caches coherent
//	uninstall       helm uninstall leaves only what the chart documents it keeps (the Postgres PVC and Secret)
//
// Each check fails when its behaviour breaks; the ones after a failed install are skipped. Traffic goes only to
// the cluster's own addresses: Service and pod IPs on the bridge up.sh made, or a port-forward on loopback.
// At the end it prints a table (check, result, time) and appends the same rows, tab-separated, to -summary
// for run.sh's table. Exit status 1 if any check failed.
//
// Environment: KUBECONFIG, KUBECTL, CTR and CONTAINERD_ADDRESS (from $CLUSTER_DIR/env), HELM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

type options struct {
	repo, namespace, release, values string
	upgradeTag, summary              string
	only                             string
}

type check struct {
	name    string
	timeout time.Duration
	run     func(ctx context.Context, c *cluster) error
	// needsRelease: skipped when the install failed.
	needsRelease bool
}

var checks = []check{
	{"install", 8 * time.Minute, checkInstall, false},
	{"traces", 5 * time.Minute, checkTraces, true},
	{"fault-redis", 4 * time.Minute, checkRedisFault, true},
	{"fault-postgres", 4 * time.Minute, checkPostgresFault, true},
	{"fault-app-pod", 4 * time.Minute, checkAppPodFault, true},
	{"upgrade", 6 * time.Minute, checkUpgrade, true},
	{"uninstall", 4 * time.Minute, checkUninstall, false},
}

func main() {
	var o options
	flag.StringVar(&o.repo, "repo", ".", "root of the repository (charts/cacheside, app/e2e)")
	flag.StringVar(&o.namespace, "namespace", "cacheside", "namespace to install into (created, labelled restricted)")
	flag.StringVar(&o.release, "release", "cacheside", "Helm release name")
	flag.StringVar(&o.values, "values", "hack/cluster/values.yaml", "values file, relative to -repo")
	flag.StringVar(&o.upgradeTag, "upgrade-tag", "e2e-2", "image tag the upgrade check moves to")
	flag.StringVar(&o.summary, "summary", "", "file to append the result rows to (check<TAB>result<TAB>seconds)")
	flag.StringVar(&o.only, "only", "", "comma-separated checks to run (default: all, in order); install and uninstall are checks too")
	flag.Parse()
	var err error
	if o.repo, err = filepath.Abs(o.repo); err != nil {
		fatal(err)
	}
	if !filepath.IsAbs(o.values) {
		o.values = filepath.Join(o.repo, o.values)
	}
	c, err := newCluster(o)
	if err != nil {
		fatal(err)
	}

	type row struct {
		name, result string
		took         time.Duration
	}
	var rows []row
	selected := func(name string) bool {
		return o.only == "" || slices.Contains(strings.Split(o.only, ","), name)
	}
	installed := true
	failed := false
	for _, ch := range checks {
		if !selected(ch.name) {
			continue
		}
		if ch.needsRelease && !installed {
			rows = append(rows, row{ch.name, "SKIP (no release)", 0})
			continue
		}
		logf("==> check %s", ch.name)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), ch.timeout)
		err := ch.run(ctx, c)
		if err == nil && ctx.Err() != nil {
			err = fmt.Errorf("timed out after %s", ch.timeout)
		}
		cancel()
		took := time.Since(start).Round(100 * time.Millisecond)
		result := "PASS"
		if err != nil {
			failed = true
			result = "FAIL"
			logf("<== check %s FAILED after %s: %v", ch.name, took, err)
			c.diagnose()
			if ch.name == "install" {
				installed = false
			}
		} else {
			logf("<== check %s passed in %s", ch.name, took)
		}
		rows = append(rows, row{ch.name, result, took})
	}

	tw := tabwriter.NewWriter(os.Stderr, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\ncheck\tresult\ttime")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.name, r.result, r.took)
	}
	_ = tw.Flush()
	if o.summary != "" {
		f, err := os.OpenFile(o.summary, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			fatal(err)
		}
		for _, r := range rows {
			fmt.Fprintf(f, "check %s\t%s\t%.1f\n", r.name, r.result, r.took.Seconds())
		}
		if err := f.Close(); err != nil {
			fatal(err)
		}
	}
	if failed {
		os.Exit(1)
	}
}

var started = time.Now()

// logf prints a line with the time since the start, so a slow step shows in the log.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "e2e:", err)
	os.Exit(2)
}

// problems joins what a check found wrong into one error (nil when nothing).
func problems(ps []string) error {
	if len(ps) == 0 {
		return nil
	}
	return errors.New(strings.Join(ps, "\n  "))
}
