package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// cluster is what every check works with: the API, the tools, and the release's addresses.
type cluster struct {
	o       options
	cs      kubernetes.Interface
	dyn     dynamic.Interface
	kubectl string
	helmBin string
	ctr     string
	ctrAddr string
	http    *http.Client
}

func newCluster(o options) (*cluster, error) {
	kubeconfig := os.Getenv("KUBECONFIG")
	if kubeconfig == "" {
		return nil, fmt.Errorf("KUBECONFIG is not set (source $CLUSTER_DIR/env)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 50, 100
	// Listing every kind (the uninstall check) would print a deprecation warning for v1 Endpoints each time.
	cfg.WarningHandler = rest.NoWarnings{}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	c := &cluster{o: o, cs: cs, dyn: dyn,
		kubectl: os.Getenv("KUBECTL"), helmBin: os.Getenv("HELM"),
		ctr: os.Getenv("CTR"), ctrAddr: os.Getenv("CONTAINERD_ADDRESS"),
		// A new connection per request: kube-proxy then spreads requests over the Service's endpoints as they
		// are at that moment, as a load balancer would, and no request rides a kept-alive connection to a pod
		// that is shutting down (which a client would retry; here it would hide nothing, but blur the count).
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	for name, v := range map[string]string{"KUBECTL": c.kubectl, "HELM": c.helmBin, "CTR": c.ctr, "CONTAINERD_ADDRESS": c.ctrAddr} {
		if v == "" {
			return nil, fmt.Errorf("%s is not set (run.sh sets it; see hack/cluster/run.sh)", name)
		}
	}
	return c, nil
}

// run runs a command, its output streamed to stderr (indented) and returned.
func (c *cluster) run(ctx context.Context, name string, args ...string) (string, error) {
	logf("$ %s %s", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	w := io.MultiWriter(&out, &indent{w: os.Stderr})
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return out.String(), err
}

func (c *cluster) helm(ctx context.Context, args ...string) (string, error) {
	return c.run(ctx, c.helmBin, append(args, "--namespace", c.o.namespace)...)
}

// indent prefixes each line a command prints, so it stands apart from the checks' own lines.
type indent struct {
	w       io.Writer
	midLine bool
}

func (in *indent) Write(p []byte) (int, error) {
	for _, line := range bytes.SplitAfter(p, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if !in.midLine {
			_, _ = in.w.Write([]byte("    | "))
		}
		_, _ = in.w.Write(line)
		in.midLine = line[len(line)-1] != '\n'
	}
	return len(p), nil
}

// waitFor polls cond until it holds, the deadline passes or ctx ends; the error says what was awaited and
// what cond last reported.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		ok, err := cond()
		if ok && err == nil {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if ctx.Err() == context.Canceled { // the caller gave up (e.g. the upgrade ended), not the deadline
				return fmt.Errorf("%s: not before it ended (last: %v)", what, last)
			}
			if last != nil {
				return fmt.Errorf("%s: not within %s (last: %v)", what, timeout, last)
			}
			return fmt.Errorf("%s: not within %s", what, timeout)
		case <-tick.C:
		}
	}
}

// Names of the release's objects (the chart's fullname is the release name when it contains "cacheside").
func (c *cluster) fullname() string {
	if strings.Contains(c.o.release, "cacheside") {
		return c.o.release
	}
	return c.o.release + "-cacheside"
}
func (c *cluster) redisName() string    { return c.o.release + "-redis" }
func (c *cluster) postgresName() string { return c.o.release + "-postgresql" }

// appSelector selects the service's serving pods (not the migration Job's nor the test pod).
func (c *cluster) appSelector() string {
	return "app.kubernetes.io/instance=" + c.o.release + ",app.kubernetes.io/component=server"
}

func (c *cluster) pods(ctx context.Context, selector string) ([]corev1.Pod, error) {
	l, err := c.cs.CoreV1().Pods(c.o.namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

func ready(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
		return false
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// readyApp returns the serving pods that are Ready and not terminating.
func (c *cluster) readyApp(ctx context.Context) ([]corev1.Pod, error) {
	all, err := c.pods(ctx, c.appSelector())
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for i := range all {
		if ready(&all[i]) {
			out = append(out, all[i])
		}
	}
	return out, nil
}

// awaitAppReady waits until the Deployment's serving pods are all Ready (at least two, hack/cluster/values.yaml's
// replicaCount): each check starts from, and the faults recover to, a whole release.
func (c *cluster) awaitAppReady(ctx context.Context) error {
	return waitFor(ctx, 3*time.Minute, "every serving pod Ready", func() (bool, error) {
		all, err := c.pods(ctx, c.appSelector())
		if err != nil {
			return false, err
		}
		n := 0
		for i := range all {
			if all[i].DeletionTimestamp != nil {
				return false, fmt.Errorf("%s is terminating", all[i].Name)
			}
			if !ready(&all[i]) {
				return false, fmt.Errorf("%s is not Ready", all[i].Name)
			}
			n++
		}
		return n >= 2, nil
	})
}

// restarts maps each serving pod (by UID) to its containers' restart count.
func (c *cluster) restarts(ctx context.Context) (map[string]int32, error) {
	all, err := c.pods(ctx, c.appSelector())
	if err != nil {
		return nil, err
	}
	out := map[string]int32{}
	for _, p := range all {
		var n int32
		for _, s := range p.Status.ContainerStatuses {
			n += s.RestartCount
		}
		out[p.Name+" "+string(p.UID)] = n
	}
	return out, nil
}

// sameRestarts says how the serving pods changed between two restarts() snapshots: none replaced, none
// restarted.
func sameRestarts(before, after map[string]int32) []string {
	var ps []string
	for pod, n := range before {
		m, ok := after[pod]
		switch {
		case !ok:
			ps = append(ps, fmt.Sprintf("pod %s was replaced", pod))
		case m != n:
			ps = append(ps, fmt.Sprintf("pod %s restarted (restartCount %d -> %d)", pod, n, m))
		}
	}
	return ps
}

// serviceURL is http://<ClusterIP>:<port> of a Service: kube-proxy on the host routes it like a pod would.
func (c *cluster) serviceURL(ctx context.Context, ns, name string, port int32) (string, error) {
	s, err := c.cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if port == 0 {
		port = s.Spec.Ports[0].Port
	}
	return fmt.Sprintf("http://%s:%d", s.Spec.ClusterIP, port), nil
}

func (c *cluster) appURL(ctx context.Context) (string, error) {
	return c.serviceURL(ctx, c.o.namespace, c.fullname(), 0)
}

func podURL(p *corev1.Pod) string { return "http://" + p.Status.PodIP + ":8080" }

// apiToken is the first of the release's API tokens, read from its Secret as a client would get it.
func (c *cluster) apiToken(ctx context.Context) (string, error) {
	s, err := c.cs.CoreV1().Secrets(c.o.namespace).Get(ctx, c.fullname(), metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	tokens := strings.TrimSpace(string(s.Data["API_TOKENS"]))
	if tokens == "" {
		return "", fmt.Errorf("secret %s has no API_TOKENS", c.fullname())
	}
	return strings.TrimSpace(strings.Split(tokens, ",")[0]), nil
}

var forwarding = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+)`)

// portForward runs kubectl port-forward to target (e.g. svc/jaeger) on a free loopback port and returns
// http://127.0.0.1:<port> and a function that stops it.
func (c *cluster) portForward(ctx context.Context, ns, target string, port int) (string, func(), error) {
	ctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(ctx, c.kubectl, "-n", ns, "port-forward", "--address", "127.0.0.1", target, fmt.Sprintf(":%d", port))
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return "", nil, err
	}
	cmd.Stderr = &indent{w: os.Stderr}
	if err := cmd.Start(); err != nil {
		cancel()
		return "", nil, err
	}
	stop := func() { cancel(); _ = cmd.Wait() }
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := forwarding.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	select {
	case p := <-found:
		logf("port-forward %s/%s:%d on 127.0.0.1:%s", ns, target, port, p)
		return "http://127.0.0.1:" + p, stop, nil
	case <-time.After(30 * time.Second):
		stop()
		return "", nil, fmt.Errorf("kubectl port-forward %s/%s: no port within 30s", ns, target)
	}
}

// diagnose prints what helps to understand a failed check: the pods, recent events, the app's logs.
func (c *cluster) diagnose() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := c.o.namespace
	_, _ = c.run(ctx, c.kubectl, "-n", ns, "get", "pods,jobs,pvc,endpointslices", "-o", "wide")
	_, _ = c.run(ctx, c.kubectl, "-n", ns, "get", "events", "--sort-by=.lastTimestamp")
	_, _ = c.run(ctx, c.kubectl, "-n", ns, "logs", "-l", c.appSelector(), "--all-containers", "--prefix", "--tail=40")
}
