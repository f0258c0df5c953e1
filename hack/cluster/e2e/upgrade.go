package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// checkUpgrade runs `helm upgrade` to another image tag under a steady load of reads and writes: no request
// may fail, the pre-upgrade migration Job must have completed before the first new pod exists, and while old
// and new pods serve side by side a write on either is seen by reads on every pod (the near-caches of both
// releases invalidate each other over Redis pub/sub). Afterwards every pod reads the last write.
func checkUpgrade(ctx context.Context, c *cluster) error {
	base, token, ids, err := c.warmed(ctx, 4)
	if err != nil {
		return err
	}
	probe, err := c.createSample(ctx, base, token, "coherence probe")
	if err != nil {
		return err
	}
	pods, err := c.readyApp(ctx)
	if err != nil {
		return err
	}
	oldImage := pods[0].Spec.Containers[0].Image
	newImage := oldImage[:strings.LastIndex(oldImage, ":")+1] + c.o.upgradeTag
	if newImage == oldImage {
		return fmt.Errorf("the release already runs %s", newImage)
	}
	logf("upgrading %s -> %s", oldImage, newImage)

	w, err := c.watchRollout(ctx, newImage)
	if err != nil {
		return err
	}
	defer w.stop()
	// Reads of the list and items 1.., and one write in ten to item 0.
	l := c.startLoad(ctx, base, token, loadRate, func(n int) request {
		if n%10 == 9 {
			return request{method: "PUT", path: fmt.Sprintf("/samples/%d", ids[0]), body: fmt.Sprintf(`{"title":"write %d under the upgrade"}`, n), auth: true}
		}
		return reads(ids[1:])(n)
	})
	defer l.stop()

	rolloutCtx, rolloutDone := context.WithCancel(ctx)
	var coherence struct {
		err   error
		title string
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		coherence.title, coherence.err = c.coherentDuringRollout(rolloutCtx, oldImage, newImage, probe.ID, token)
	})
	_, upgradeErr := c.helm(ctx, "upgrade", c.o.release, filepath.Join(c.o.repo, "charts/cacheside"),
		"--values", c.o.values, "--set", "image.tag="+c.o.upgradeTag, "--wait", "--timeout", "5m")
	rolloutDone()
	wg.Wait()
	if upgradeErr != nil {
		return upgradeErr
	}
	if err := l.waitAnswers(ctx, 30*time.Second, "answers after the upgrade", time.Now(), 20, response.ok); err != nil {
		return err
	}
	got := l.stop()
	logf("under load through the upgrade: %s", tally(got))

	var ps []string
	if f := failures(got); len(f) > 0 {
		ps = append(ps, fmt.Sprintf("%d of %d requests failed during the upgrade (want none):\n    %s", len(f), len(got), describe(f, 10)))
	}
	if coherence.err != nil {
		ps = append(ps, "near-caches during the rollout: "+coherence.err.Error())
	}
	ps = append(ps, w.migrationFirst()...)

	// Every pod of the new release reads the last write.
	now, err := c.readyApp(ctx)
	if err != nil {
		return err
	}
	for _, p := range now {
		if img := p.Spec.Containers[0].Image; img != newImage {
			ps = append(ps, fmt.Sprintf("%s still runs %s after the upgrade", p.Name, img))
		}
		if coherence.title != "" {
			if r := c.do(ctx, podURL(&p), "GET", fmt.Sprintf("/samples/%d", probe.ID), "", ""); !strings.Contains(r.body, coherence.title) {
				ps = append(ps, fmt.Sprintf("%s after the upgrade: %s, want the title %q", p.Name, r.body, coherence.title))
			}
		}
	}
	return problems(ps)
}

// coherentDuringRollout waits until an old pod and a new one are both Ready, fills every pod's near-cache with
// the probe item, then writes it on a new pod and on an old one in turn: after each write returns, every pod
// must read it within 3 s (the near-cache entries would otherwise live CACHE_LOCAL_TTL, a minute in
// hack/cluster/values.yaml). Returns the last title written.
func (c *cluster) coherentDuringRollout(ctx context.Context, oldImage, newImage string, id int64, token string) (string, error) {
	var olds, news []corev1.Pod
	if err := waitFor(ctx, 5*time.Minute, "an old and a new pod Ready side by side", func() (bool, error) {
		pods, err := c.readyApp(ctx)
		if err != nil {
			return false, err
		}
		olds, news = nil, nil
		for _, p := range pods {
			switch p.Spec.Containers[0].Image {
			case oldImage:
				olds = append(olds, p)
			case newImage:
				news = append(news, p)
			}
		}
		return len(olds) > 0 && len(news) > 0, nil
	}); err != nil {
		return "", err
	}
	all := append(append([]corev1.Pod{}, olds...), news...)
	path := fmt.Sprintf("/samples/%d", id)
	for _, p := range all {
		c.do(ctx, podURL(&p), "GET", path, "", "")
		if r := c.do(ctx, podURL(&p), "GET", path, "", ""); !r.ok() || r.tier != "local" {
			return "", fmt.Errorf("%s: a repeated read answered %s, X-Cache-Tier %q: want a near-cache hit (CACHE_LOCAL_ENABLED)", p.Name, r, r.tier)
		}
	}
	title := ""
	for i, writer := range []corev1.Pod{news[0], olds[0]} {
		title = fmt.Sprintf("rollout write %d via %s", i, writer.Name)
		body, _ := json.Marshal(map[string]string{"title": title})
		if r := c.do(ctx, podURL(&writer), "PUT", path, string(body), token); !r.ok() {
			return "", fmt.Errorf("write on %s: %s", writer.Name, r)
		}
		for _, p := range all {
			if err := waitFor(ctx, 3*time.Second, fmt.Sprintf("%s (%s) reads the write made on %s", p.Name, p.Spec.Containers[0].Image, writer.Name), func() (bool, error) {
				r := c.do(ctx, podURL(&p), "GET", path, "", "")
				if !r.ok() {
					return false, fmt.Errorf("%s", r)
				}
				if !strings.Contains(r.body, title) {
					return false, fmt.Errorf("still %s (X-Cache %s, tier %s)", r.body, r.xcache, r.tier)
				}
				return true, nil
			}); err != nil {
				return "", err
			}
		}
	}
	logf("near-caches coherent across %d old and %d new pods: writes on %s and %s seen everywhere", len(olds), len(news), news[0].Name, olds[0].Name)
	return title, nil
}

// rolloutWatch records, as the API server reports them, when the migration Job completed and when the first
// pod of the new image appeared.
type rolloutWatch struct {
	stop func()
	mu   sync.Mutex
	job  string
	// jobDone: when the Job was first seen Complete; jobPods: its succeeded count then.
	jobDone              time.Time
	jobSucceeded         int32
	firstPod             time.Time
	firstPodName, jobErr string
	watchErr             string
}

func (c *cluster) watchRollout(ctx context.Context, newImage string) (*rolloutWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	w := &rolloutWatch{job: c.fullname() + "-migrate"}
	// ResourceVersion "0": start from the API server's watch cache as it is, with an ADDED event for each
	// object. An empty one asks for a fresh start, which this cluster's etcd (3.4, no progress notifications
	// to tell the cache it is current) answers only after a timeout, with an error event.
	jobs, err := c.cs.BatchV1().Jobs(c.o.namespace).Watch(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		cancel()
		return nil, err
	}
	pods, err := c.cs.CoreV1().Pods(c.o.namespace).Watch(ctx, metav1.ListOptions{LabelSelector: c.appSelector(), ResourceVersion: "0"})
	if err != nil {
		cancel()
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for ev := range jobs.ResultChan() {
			if ev.Type == watch.Error {
				w.mu.Lock()
				w.watchErr = fmt.Sprintf("watching Jobs: %v", ev.Object)
				w.mu.Unlock()
			}
			j, ok := ev.Object.(*batchv1.Job)
			if !ok || j.Name != w.job || ev.Type == watch.Deleted {
				continue
			}
			for _, cond := range j.Status.Conditions {
				w.mu.Lock()
				if cond.Status == corev1.ConditionTrue && w.jobDone.IsZero() {
					switch cond.Type {
					case batchv1.JobComplete:
						w.jobDone, w.jobSucceeded = time.Now(), j.Status.Succeeded
						logf("migration Job %s complete (%d succeeded)", j.Name, j.Status.Succeeded)
					case batchv1.JobFailed:
						w.jobErr = cond.Message
					}
				}
				w.mu.Unlock()
			}
		}
	})
	wg.Go(func() {
		for ev := range pods.ResultChan() {
			if ev.Type == watch.Error {
				w.mu.Lock()
				w.watchErr = fmt.Sprintf("watching pods: %v", ev.Object)
				w.mu.Unlock()
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || p.Spec.Containers[0].Image != newImage {
				continue
			}
			w.mu.Lock()
			if w.firstPod.IsZero() {
				w.firstPod, w.firstPodName = time.Now(), p.Name
				logf("first pod of %s: %s", newImage, p.Name)
			}
			w.mu.Unlock()
		}
	})
	w.stop = func() { cancel(); jobs.Stop(); pods.Stop(); wg.Wait() }
	return w, nil
}

// migrationFirst: the Job completed with a success, before the first new pod was created.
func (w *rolloutWatch) migrationFirst() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.watchErr != "":
		return []string{w.watchErr}
	case w.jobErr != "":
		return []string{fmt.Sprintf("migration Job %s failed: %s", w.job, w.jobErr)}
	case w.jobDone.IsZero():
		return []string{fmt.Sprintf("no migration Job %s was seen completing", w.job)}
	case w.jobSucceeded < 1:
		return []string{fmt.Sprintf("migration Job %s complete without a succeeded pod", w.job)}
	case w.firstPod.IsZero():
		return []string{"no pod of the new image was seen"}
	case !w.jobDone.Before(w.firstPod):
		return []string{fmt.Sprintf("pod %s of the new image appeared %s before the migration Job completed",
			w.firstPodName, w.jobDone.Sub(w.firstPod).Round(time.Millisecond))}
	}
	logf("migration Job done %s before the first new pod", w.firstPod.Sub(w.jobDone).Round(time.Millisecond))
	return nil
}
