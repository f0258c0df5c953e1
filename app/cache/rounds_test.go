package cache

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheside/cacheside/app/view"
)

// TestARoundIsSharedByEveryReadThatArrivedWhileTheLastRan: reads that arrive while a lookup
// runs wait for the next one and all share it; none is answered by the lookup already running,
// which began before they did. The same whether the opener of a round runs it itself (inline,
// lookups) or hands it to a goroutine (bypass loads).
func TestARoundIsSharedByEveryReadThatArrivedWhileTheLastRan(t *testing.T) {
	for _, inline := range []bool{true, false} {
		t.Run(fmt.Sprintf("inline=%v", inline), func(t *testing.T) { testRoundSharing(t, inline) })
	}
}

func testRoundSharing(t *testing.T, inline bool) {
	const late = 999
	g := rounds[looked]{inline: inline}
	var lookups atomic.Int32
	firstRuns, releaseFirst := make(chan struct{}), make(chan struct{})
	look := func(context.Context) looked {
		n := lookups.Add(1)
		if n == 1 {
			close(firstRuns)
			<-releaseFirst
		}
		res := view.View{ETag: fmt.Sprint(n)} // which lookup answered
		return looked{hit: &res}
	}
	answer := func() (string, bool) {
		r, joined := g.join(context.Background(), "k", look)
		<-r.done
		return r.res.hit.ETag, joined
	}

	firstAnswer := make(chan string)
	go func() { a, _ := answer(); firstAnswer <- a }()
	<-firstRuns
	var wg sync.WaitGroup
	answers := make([]string, late)
	joined := make([]bool, late)
	for i := range late {
		wg.Go(func() { answers[i], joined[i] = answer() })
	}
	deadline := time.Now().Add(30 * time.Second)
	for g.members("k") < 1+late { // the running round's reader and every late one
		if time.Now().After(deadline) {
			t.Fatalf("only %d reads joined", g.members("k"))
		}
		time.Sleep(time.Millisecond)
	}
	close(releaseFirst)
	wg.Wait()

	if a := <-firstAnswer; a != "1" {
		t.Errorf("the first read got lookup %s", a)
	}
	opened := 0
	for i, a := range answers {
		if a != "2" {
			t.Fatalf("a late read got lookup %s, want 2 (the first began before it arrived)", a)
		}
		if !joined[i] {
			opened++
		}
	}
	if n := lookups.Load(); n != 2 || opened != 1 {
		t.Errorf("%d lookups, %d opened by late reads; want 2 and 1", n, opened)
	}
	// The runner takes a finished round off the key just after waking its readers, so they may
	// return a moment before they stop being counted.
	for g.members("k") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d reads still counted after all returned", g.members("k"))
		}
		time.Sleep(time.Millisecond)
	}
}
