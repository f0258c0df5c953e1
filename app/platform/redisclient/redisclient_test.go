package redisclient_test

import (
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/cacheside/cacheside/app/platform/redisclient"
)

func TestEachModeBuildsItsClientFromOneURL(t *testing.T) {
	for _, tc := range []struct {
		name, mode, url string
		check           func(redis.UniversalClient) bool
	}{
		{"standalone is a plain client on the URL's host", "standalone", "rediss://default:pw@cache:6380/2",
			func(c redis.UniversalClient) bool {
				o := c.(*redis.Client).Options()
				return o.Addr == "cache:6380" && o.DB == 2 && o.TLSConfig != nil && o.ReadTimeout.String() == "250ms"
			}},
		{"sentinel is a failover client on every sentinel named", "sentinel", "redis://:pw@s1:26379/0?master_name=mymaster&addr=s2:26379",
			func(c redis.UniversalClient) bool { _, ok := c.(*redis.Client); return ok }},
		{"cluster is a cluster client on every seed named", "cluster", "redis://u:pw@n1:6379?addr=n2:6379&addr=n3:6379",
			func(c redis.UniversalClient) bool {
				cc, ok := c.(*redis.ClusterClient)
				return ok && len(cc.Options().Addrs) == 3
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
