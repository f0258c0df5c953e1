package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// checkInstall: the namespace enforces Pod Security "restricted" (a privileged pod is refused), the chart
// installs there with --wait, helm test passes, the migration init containers ran and succeeded, and every
// pod runs as the chart promises.
func checkInstall(ctx context.Context, c *cluster) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.o.namespace, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce":         "restricted",
		"pod-security.kubernetes.io/enforce-version": "latest",
	}}}
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s (left from an earlier run? hack/cluster/down.sh clears the cluster): %w", c.o.namespace, err)
	}
	logf("namespace %s created, enforcing Pod Security restricted", c.o.namespace)

	// The label alone proves nothing: the API server must refuse what "restricted" forbids.
	if err := c.restrictedIsEnforced(ctx); err != nil {
		return err
	}

	if _, err := c.helm(ctx, "install", c.o.release, filepath.Join(c.o.repo, "charts/cacheside"),
		"--values", c.o.values, "--wait", "--timeout", "5m"); err != nil {
		return err
	}
	if _, err := c.helm(ctx, "test", c.o.release, "--logs", "--timeout", "3m"); err != nil {
		return err
	}

	var ps []string
	app, err := c.pods(ctx, c.appSelector())
	if err != nil {
		return err
	}
	if len(app) == 0 {
		return fmt.Errorf("no serving pods (%s)", c.appSelector())
	}
	for _, p := range app {
		ps = append(ps, migrated(&p)...)
	}

	all, err := c.pods(ctx, "")
	if err != nil {
		return err
	}
	pids, err := c.containerPIDs(ctx)
	if err != nil {
		return err
	}
	checked := 0
	for _, p := range all {
		ps = append(ps, specProblems(&p)...)
		for _, s := range p.Status.ContainerStatuses {
			if s.State.Running == nil {
				continue
			}
			pid, ok := pids[strings.TrimPrefix(s.ContainerID, "containerd://")]
			if !ok {
				ps = append(ps, fmt.Sprintf("%s/%s: running, but containerd has no task %s", p.Name, s.Name, s.ContainerID))
				continue
			}
			ps = append(ps, processProblems(fmt.Sprintf("%s/%s (pid %d)", p.Name, s.Name, pid), pid, runAsUser(&p, s.Name))...)
			checked++
		}
	}
	logf("security context: %d pods' specs, %d running containers' processes checked", len(all), checked)
	if checked < len(app)+2 { // the app's, Redis', Postgres'
		ps = append(ps, fmt.Sprintf("only %d running containers found; expected the app's %d, Redis' and Postgres'", checked, len(app)))
	}
	return problems(ps)
}

// restrictedIsEnforced asks the API server, as a dry run, to create a privileged root pod in the namespace:
// Pod Security admission must refuse it.
func (c *cluster) restrictedIsEnforced(ctx context.Context) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "privileged-probe"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "probe", Image: "localhost/standin/pause:3.10",
			SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true), RunAsUser: ptr.To(int64(0))},
		}}},
	}
	_, err := c.cs.CoreV1().Pods(c.o.namespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	switch {
	case err == nil:
		return fmt.Errorf("namespace %s admitted a privileged pod running as root: Pod Security is not enforced", c.o.namespace)
	case !apierrors.IsForbidden(err):
		return fmt.Errorf("dry-run of a privileged pod: %w", err)
	}
	logf("a privileged pod is refused: %v", err)
	return nil
}

// migrated: the pod's init containers (db-role, then migrate) both ran to exit 0.
func migrated(p *corev1.Pod) []string {
	var ps []string
	names := map[string]bool{}
	for _, s := range p.Status.InitContainerStatuses {
		names[s.Name] = true
		t := s.State.Terminated
		switch {
		case t == nil:
			ps = append(ps, fmt.Sprintf("%s: init container %s has not finished", p.Name, s.Name))
		case t.ExitCode != 0:
			ps = append(ps, fmt.Sprintf("%s: init container %s exited %d (%s)", p.Name, s.Name, t.ExitCode, t.Reason))
		}
	}
	for _, want := range []string{"db-role", "migrate"} {
		if !names[want] {
			ps = append(ps, fmt.Sprintf("%s: no init container %s", p.Name, want))
		}
	}
	if len(ps) == 0 {
		logf("%s: init containers db-role and migrate exited 0", p.Name)
	}
	return ps
}

// specProblems compares each container's effective security context (its own over the pod's) with what the
// chart promises: non-root with a uid, read-only root filesystem, no privilege escalation, every capability
// dropped, seccomp RuntimeDefault, not privileged.
func specProblems(p *corev1.Pod) []string {
	var ps []string
	psc := p.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	for _, ctr := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
		sc := ctr.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		bad := func(format string, args ...any) {
			ps = append(ps, fmt.Sprintf("%s/%s: %s", p.Name, ctr.Name, fmt.Sprintf(format, args...)))
		}
		if !ptr.Deref(firstNonNil(sc.RunAsNonRoot, psc.RunAsNonRoot), false) {
			bad("runAsNonRoot is not true")
		}
		if uid := firstNonNil(sc.RunAsUser, psc.RunAsUser); uid == nil || *uid == 0 {
			bad("no non-zero runAsUser")
		}
		if !ptr.Deref(sc.ReadOnlyRootFilesystem, false) {
			bad("readOnlyRootFilesystem is not true")
		}
		if ptr.Deref(sc.AllowPrivilegeEscalation, true) {
			bad("allowPrivilegeEscalation is not false")
		}
		if ptr.Deref(sc.Privileged, false) {
			bad("privileged")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
			bad("capabilities are not drop [ALL] with none added: %+v", sc.Capabilities)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil {
			seccomp = psc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			bad("seccomp profile is not RuntimeDefault: %+v", seccomp)
		}
	}
	return ps
}

func firstNonNil[T any](a, b *T) *T {
	if a != nil {
		return a
	}
	return b
}

// runAsUser is the uid a container of the pod is meant to run as.
func runAsUser(p *corev1.Pod, container string) int64 {
	var podUID *int64
	if p.Spec.SecurityContext != nil {
		podUID = p.Spec.SecurityContext.RunAsUser
	}
	for _, ctr := range p.Spec.Containers {
		if ctr.Name == container && ctr.SecurityContext != nil && ctr.SecurityContext.RunAsUser != nil {
			return *ctr.SecurityContext.RunAsUser
		}
	}
	return ptr.Deref(podUID, -1)
}

// containerPIDs maps each running container's ID to its init process's PID, as the cluster's containerd
// knows them (ctr tasks ls).
func (c *cluster) containerPIDs(ctx context.Context) (map[string]int, error) {
	out, err := c.runQuiet(ctx, c.ctr, "-a", c.ctrAddr, "-n", "k8s.io", "tasks", "ls")
	if err != nil {
		return nil, err
	}
	pids := map[string]int{}
	for _, line := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "RUNNING" {
			if pid, err := strconv.Atoi(f[1]); err == nil {
				pids[f[0]] = pid
			}
		}
	}
	return pids, nil
}

// processProblems reads what the kernel applies to the process, whatever the spec said: every uid is the
// pod's, no_new_privs is set, no capability is effective, permitted or in the bounding set, a seccomp filter
// is on, and the root filesystem is mounted read-only.
func processProblems(who string, pid int, uid int64) []string {
	var ps []string
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", who, err)}
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	want := map[string]string{
		"Uid":        strings.Repeat(strconv.FormatInt(uid, 10)+"\t", 3) + strconv.FormatInt(uid, 10),
		"NoNewPrivs": "1",
		"CapEff":     "0000000000000000",
		"CapPrm":     "0000000000000000",
		"CapBnd":     "0000000000000000",
		"Seccomp":    "2", // SECCOMP_MODE_FILTER
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if fields[k] != want[k] {
			ps = append(ps, fmt.Sprintf("%s: /proc status %s is %q, want %q", who, k, fields[k], want[k]))
		}
	}
	mounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return append(ps, fmt.Sprintf("%s: %v", who, err))
	}
	rootOpts := ""
	for _, line := range strings.Split(string(mounts), "\n") {
		// mountinfo: id parent major:minor root mountpoint options ...; the last mount on / is the one seen.
		if f := strings.Fields(line); len(f) > 5 && f[4] == "/" {
			rootOpts = f[5]
		}
	}
	if !slices.Contains(strings.Split(rootOpts, ","), "ro") {
		ps = append(ps, fmt.Sprintf("%s: root filesystem mounted %q, not read-only", who, rootOpts))
	}
	return ps
}

// runQuiet runs a command without echoing its output (for output that is parsed, not read).
func (c *cluster) runQuiet(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
