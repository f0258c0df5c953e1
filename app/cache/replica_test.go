package cache_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/view"
)

// masterAndReplica starts a Redis master and one replica of it, in sync.
func masterAndReplica(t testing.TB) (master, replica *testenv.RedisServer) {
	t.Helper()
	master = testenv.StartRedis(t)
	replica = testenv.StartRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port()))
	r := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", replica.Port())})
	defer r.Close()
	testenv.Eventually(t, 30*time.Second, func() error {
		info, err := r.Info(context.Background(), "replication").Result()
		if err == nil && !strings.Contains(info, "master_link_status:up") {
			err = fmt.Errorf("replica not in sync yet")
		}
		return err
	})
	return master, replica
}

// TestAFailoverCannotBringARetiredGenerationBackWithWait: Redis replicates asynchronously, so a
// replica promoted by a failover may lack the latest generation writes, and with them the values
// they retired come back. CACHE_INVALIDATION_REPLICAS makes an invalidation count only once that
// many replicas hold it (WAIT): a write then returns only when a failover to such a replica would
// keep its invalidation, and a replica that cannot confirm makes the invalidation pending instead.
func TestAFailoverCannotBringARetiredGenerationBackWithWait(t *testing.T) {
	master, replica := masterAndReplica(t)
	onReplica := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", replica.Port())})
	t.Cleanup(func() { onReplica.Close() })
	generation := func(rdb *redis.Client) string { return rdb.Get(context.Background(), "t:{item:1}:g").Val() }

	for _, tc := range []struct {
		replicas int
		frozen   bool // the replica is frozen during the write
		wantErr  bool
		wantSame bool // the replica holds the master's generation when Invalidate returns
	}{
		{replicas: 1, wantSame: true},
		{replicas: 1, frozen: true, wantErr: true},
		// The limit without WAIT: the write's invalidation counts as delivered though the only
		// replica, frozen, cannot have it; promoted now, it would serve the old value.
		{replicas: 0, frozen: true},
	} {
		t.Run(fmt.Sprintf("WAIT for %d, replica frozen %v", tc.replicas, tc.frozen), func(t *testing.T) {
			rdb := productionClient(t, master)
			o := options("t")
			o.WaitReplicas = tc.replicas
			c := cache.New(rdb, o)
			t.Cleanup(func() { c.Close(context.Background()) })
			src := &source{value: "old"}
			fetch(t, c, src.load)
			if tc.frozen {
				replica.Pause()
				defer replica.Resume()
			}
			src.set("new")
			err := c.Invalidate(context.Background(), key)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Invalidate: %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				if res := fetch(t, c, src.load); res.Served.Outcome != view.Bypass || gunzip(t, res) != "new" {
					t.Errorf("an unconfirmed invalidation left %s %q, want a BYPASS of new", res.Served.Outcome, gunzip(t, res))
				}
				return
			}
			if tc.frozen {
				return // a frozen replica cannot be read: that it cannot have the generation is the point
			}
			if same := generation(onReplica) == generation(rdb); same != tc.wantSame {
				t.Errorf("replica holds the new generation: %v, want %v", same, tc.wantSame)
			}
		})
	}
}

// BenchmarkInvalidate measures what waiting for a replica costs a write's invalidation, against
// a real master and replica on this machine (loopback: a replica elsewhere adds its round trip).
func BenchmarkInvalidate(b *testing.B) {
	master, _ := masterAndReplica(b)
	for _, replicas := range []int{0, 1} {
		b.Run(fmt.Sprintf("WAIT for %d replicas", replicas), func(b *testing.B) {
			rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", master.Port())})
			defer rdb.Close()
			o := options("t")
			o.WaitReplicas = replicas
			c := cache.New(rdb, o)
			defer c.Close(context.Background())
			keys := []cache.Key{{Space: "list", ID: "all"}, {Space: "item", ID: "1"}}
			for b.Loop() {
				if err := c.Invalidate(context.Background(), keys...); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
