package redisclient_test

import (
	"context"
	"runtime"
	"strings"
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
