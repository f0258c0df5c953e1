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

// TestAConnectionFaultRetiresEveryPooledConnection: a server that stops answering without
// closing its connections (CLIENT PAUSE here; in production a deleted pod, a failover to another
// address, a partition) makes an operation time out. go-redis checks an idle connection before
// handing it out only for a peer that closed it, so it would hand out each of the other pooled
// connections once more, each costing an operation a whole timeout if the server were gone for
// good. After the fault none of them is used again: every operation runs on a connection
// dialled after it. An error reply from Redis is no fault: the connections stay. Production
// settings: the default REDIS_TIMEOUT and pool size.
func TestAConnectionFaultRetiresEveryPooledConnection(t *testing.T) {
	srv := testenv.StartRedis(t)
	cfg := testenv.Config(t, "REDIS_URL="+srv.URL(), "DATABASE_URL=postgres://unused.invalid/db")
	rdb := testenv.RedisClient(t, cfg)
	pool := rdb.(*redis.Client).Options().PoolSize
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 1})
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
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := len(conns()); n < pool {
			return fmt.Errorf("%d of %d connections dialled", n, pool)
		}
		return nil
	})
	before := conns()

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

	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.LPush(ctx, "k", "x").Err(); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Fatalf("LPUSH on a string: %v, want WRONGTYPE", err)
	}
	if n := overlap(used(), before); n == 0 {
		t.Fatal("after an error reply, no operation ran on the pooled connections: an error reply retired them")
	}

	for attempt := 1; ; attempt++ {
		if err := admin.Do(ctx, "CLIENT", "PAUSE", 2000, "ALL").Err(); err != nil {
			t.Fatal(err)
		}
		err := rdb.Get(ctx, "k").Err()
		if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
			break
		}
		if err != nil || attempt == 5 {
			t.Fatalf("GET while the server is paused: %v, want a timeout", err)
		}
		// This machine was too busy to send the GET before the pause ended: pause again.
		t.Logf("the pause ended before the GET was sent (attempt %d)", attempt)
	}
	testenv.Eventually(t, 30*time.Second, func() error { return rdb.Ping(ctx).Err() }) // the pause ends
	if n := overlap(used(), before); n != 0 {
		t.Errorf("after a timeout, operations still ran on %d connections dialled before it; want none", n)
	}
}
