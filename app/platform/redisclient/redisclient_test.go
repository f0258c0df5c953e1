package redisclient_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/platform/redisclient"
)

func TestEachModeBuildsItsClientFromOneURL(t *testing.T) {
	pool := 10 * runtime.GOMAXPROCS(0)
	for _, tc := range []struct {
		name, mode, url string
		check           func(redis.UniversalClient) bool
	}{
		{"standalone is a plain client on the URL's host, its pool kept warm", "standalone", "rediss://default:pw@cache:6380/2",
			func(c redis.UniversalClient) bool {
				o := c.(*redis.Client).Options()
				return o.Addr == "cache:6380" && o.DB == 2 && o.TLSConfig != nil && o.ReadTimeout.String() == "250ms" &&
					o.PoolSize == pool && o.MinIdleConns == pool && o.PipelinePoolSize < 0
			}},
		{"sentinel is a failover client, which resolves the master through the sentinels", "sentinel", "redis://:pw@s1:26379/0?master_name=mymaster&addr=s2:26379",
			func(c redis.UniversalClient) bool {
				o := c.(*redis.Client).Options()
				return o.Addr == "FailoverClient" && o.MinIdleConns == pool
			}},
		{"cluster is a cluster client on every seed named", "cluster", "redis://u:pw@n1:6379?addr=n2:6379&addr=n3:6379",
			func(c redis.UniversalClient) bool {
				cc, ok := c.(*redis.ClusterClient)
				return ok && len(cc.Options().Addrs) == 3 && cc.Options().MinIdleConns == pool
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := redisclient.New(redisclient.Options{URL: tc.url, Mode: tc.mode, Timeout: 250e6})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if !tc.check(c) {
				t.Errorf("unexpected client %T", c)
			}
		})
	}
}

// TestSentinelModeTalksToTheMasterNotTheSentinel: the URL names a Sentinel; the client must ask
// it for the master and send commands there. A plain client on the Sentinel's address would talk
// to the Sentinel process itself, which answers INFO as a sentinel: that is what must differ.
func TestSentinelModeTalksToTheMasterNotTheSentinel(t *testing.T) {
	sentinelURL := testenv.StartRedisSentinel(t)
	plainURL, _, _ := strings.Cut(sentinelURL, "?") // the same address, without master_name
	for _, tc := range []struct{ mode, url, want string }{
		{"sentinel", sentinelURL, "redis_mode:standalone"},
		{"standalone", plainURL, "redis_mode:sentinel"},
	} {
		c, err := redisclient.New(redisclient.Options{URL: tc.url, Mode: tc.mode, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(context.Background(), "server").Result()
		c.Close()
		if err != nil || !strings.Contains(info, tc.want) {
			t.Errorf("%s mode on %s: INFO server lacks %s (err %v)", tc.mode, tc.url, tc.want, err)
		}
	}
}

func TestBadURLsAreRejectedWithoutEchoingThem(t *testing.T) {
	for _, tc := range []struct{ mode, url string }{
		{"standalone", "redis://user:s3cret@host:notaport/0"},
		{"sentinel", "redis://:s3cret@s1:26379/0"}, // no master_name
		{"cluster", "http://user:s3cret@n1:6379"},
	} {
		_, err := redisclient.New(redisclient.Options{URL: tc.url, Mode: tc.mode, Timeout: 250e6})
		if err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s %s: err = %v, want an error without the password", tc.mode, tc.url, err)
		}
	}
}

// TestARunOfConnectionFaultsRetiresEveryPooledConnection: a server that stops answering without
// closing its connections (CLIENT PAUSE here; in production the node under it lost, a failover
// to another address, a partition) makes operations time out. go-redis checks an idle
// connection before handing it out only for a peer that closed it, so it would hand out each
// pooled connection once more, each costing an operation a whole timeout if the server were gone
// for good, and the circuit breaker's probe could land on one. After three faults in a row (what
// the breaker opens on) none of them is used again: every operation runs on a connection dialled
// after them. Fewer faults, or an error reply from Redis, leave the connections be: one
// timeout on a busy machine must not re-dial the whole pool. Production settings: the default
// REDIS_TIMEOUT and pool size.
func TestARunOfConnectionFaultsRetiresEveryPooledConnection(t *testing.T) {
	srv := testenv.StartRedis(t)
	cfg := testenv.Config(t, "REDIS_URL="+srv.URL(), "DATABASE_URL=postgres://unused.invalid/db")
	rdb := testenv.RedisClient(t, cfg)
	pool := rdb.(*redis.Client).Options().PoolSize
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 1, ReadTimeout: time.Minute}) // waits out pauses
	t.Cleanup(func() { admin.Close() })
	ctx := context.Background()

	// The pool's connections as the server lists them: every client but admin's.
	conns := func() map[int64]bool {
		t.Helper()
		self, err := admin.ClientID(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		list, err := admin.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		ids := map[int64]bool{}
		for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
			f, _, _ := strings.Cut(strings.TrimPrefix(line, "id="), " ")
			id, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				t.Fatalf("CLIENT LIST line %q: %v", line, err)
			}
			if id != self {
				ids[id] = true
			}
		}
		return ids
	}
	// Which connections operations run on: bursts of the pool's size take every idle one.
	used := func() map[int64]bool {
		t.Helper()
		var mu sync.Mutex
		ids := map[int64]bool{}
		for range 3 {
			var wg sync.WaitGroup
			for range pool {
				wg.Go(func() {
					id, err := rdb.ClientID(ctx).Result()
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					ids[id] = true
					mu.Unlock()
				})
			}
			wg.Wait()
		}
		return ids
	}
	overlap := func(a, b map[int64]bool) (n int) {
		for id := range a {
			if b[id] {
				n++
			}
		}
		return n
	}
	// timeouts pauses the server and sends n GETs one after another, each timing out: n faults in
	// a row. Then it waits for the pause to end.
	timeouts := func(n int) {
		t.Helper()
		for attempt := 1; ; attempt++ {
			if err := admin.Do(ctx, "CLIENT", "PAUSE", n*1500, "ALL").Err(); err != nil {
				t.Fatal(err)
			}
			got := 0
			for range n {
				err := rdb.Get(ctx, "k").Err()
				if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
					if err != nil {
						t.Fatalf("GET while the server is paused: %v, want a timeout", err)
					}
					break // the pause ended first
				}
				got++
			}
			if got == n {
				break
			}
			if attempt == 5 {
				t.Fatalf("%d of %d GETs timed out while the server was paused", got, n)
			}
			// This machine was too busy to send them before the pause ended: again, after it.
			t.Logf("the pause ended after %d of %d GETs (attempt %d)", got, n, attempt)
		}
		// Waits for the pause to end on admin's connection: the client's own commands would time
		// out meanwhile, more faults in the run.
		if err := admin.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	warm := func() map[int64]bool {
		t.Helper()
		testenv.Eventually(t, 30*time.Second, func() error {
			if n := len(conns()); n < pool {
				return fmt.Errorf("%d of %d connections dialled", n, pool)
			}
			return nil
		})
		return conns()
	}

	before := warm()
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for range faultsToRetire {
		if err := rdb.LPush(ctx, "k", "x").Err(); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
			t.Fatalf("LPUSH on a string: %v, want WRONGTYPE", err)
		}
	}
	if overlap(used(), before) == 0 {
		t.Fatal("after error replies, no operation ran on the pooled connections: error replies retired them")
	}

	timeouts(faultsToRetire - 1)
	if overlap(used(), before) == 0 {
		t.Fatalf("after %d timeouts in a row, no operation ran on the pooled connections: fewer faults than a run retired them", faultsToRetire-1)
	}

	before = warm()
	timeouts(faultsToRetire)
	if n := overlap(used(), before); n != 0 {
		t.Errorf("after %d timeouts in a row, operations still ran on %d connections dialled before them; want none", faultsToRetire, n)
	}
}

// faultsToRetire is the run of faults the client retires its connections on (retire.go).
const faultsToRetire = 3
