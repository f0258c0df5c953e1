package cache_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/view"
)

// Reads for clients that do not take gzip (view.WantPlain) get the JSON as it is, from every
// tier, and the tiers keep plain copies for them without breaking their promises.

func fetchPlain(t *testing.T, c *cache.Cache, k cache.Key, load cache.Loader) view.View {
	t.Helper()
	res, err := c.Fetch(view.WantPlain(context.Background()), k, load)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	return res
}

// decoded is the JSON a view carries, as the handler sends it to a client without gzip.
func decoded(t *testing.T, v view.View) string {
	t.Helper()
	b, err := v.JSON()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPlainReadsGetTheSameJSONFromEveryTier(t *testing.T) {
	for _, near := range []bool{false, true} {
		t.Run(fmt.Sprintf("near-cache %v", near), func(t *testing.T) {
			rdb, prefix := testenv.Redis(t)
			o := options(prefix)
			o.Compress = true
			if near {
				o.NearCache, o.NearCacheTTL, o.NearCacheMaxBytes = true, time.Minute, 1<<20
			}
			var c *cache.Cache
			if near {
				c = withOptions(t, rdb, o)
			} else {
				c = cache.New(rdb, o)
				t.Cleanup(func() { c.Close(context.Background()) })
			}
			body := strings.Repeat(`{"id":1,"title":"plain"},`, 200)
			src := &source{value: body}

			var got []string
			for i, plain := range []bool{true, true, false, true, false, true} {
				var res view.View
				if plain {
					res = fetchPlain(t, c, key, src.load)
				} else {
					res = fetchKey(t, c, key, src.load)
				}
				got = append(got, fmt.Sprintf("%s %s", res.Served.Outcome, res.Served.Tier))
				if res.Encoding != "gzip" || res.ETag != view.Fingerprint([]byte(body)) {
					t.Errorf("read %d: encoding %q ETag %q, want gzip and the JSON's fingerprint", i, res.Encoding, res.ETag)
				}
				if d := decoded(t, res); d != body {
					t.Errorf("read %d (plain %v): JSON of %d bytes differs from the loaded %d", i, plain, len(d), len(body))
				}
				if plain && res.Plain == nil {
					t.Errorf("read %d: a plain read came back without the plain copy (%s)", i, got[i])
				}
			}
			want := []string{"MISS ", "HIT redis", "HIT redis", "HIT redis", "HIT redis", "HIT redis"}
			if near {
				want = []string{"MISS ", "HIT local", "HIT local", "HIT local", "HIT local", "HIT local"}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("outcomes %v, want %v", got, want)
			}
			if n := src.reads.Load(); n != 1 {
				t.Errorf("source read %d times, want 1", n)
			}
		})
	}
}

// TestAPlainCopyOfARetiredGenerationIsNeverServed: the copy is kept next to the view under the
// generation it was read with. A write retires both; even a copy that survives the write (its
// DEL lost, or kept longer by some later change) must not answer for the new generation.
func TestAPlainCopyOfARetiredGenerationIsNeverServed(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	o := options(prefix)
	o.Compress = true
	c := cache.New(rdb, o)
	t.Cleanup(func() { c.Close(context.Background()) })
	src := &source{value: `["before the write"]`}
	ctx := context.Background()

	fetchPlain(t, c, key, src.load) // miss: stores the view and its plain copy
	plainKey := prefix + ":{" + key.Space + ":" + key.ID + "}:p"
	old, err := rdb.Get(ctx, plainKey).Result()
	if err != nil {
		t.Fatalf("no plain copy stored after a plain miss: %v", err)
	}

	src.set(`["after the write"]`)
	if err := c.Invalidate(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, plainKey, old, time.Minute).Err(); err != nil { // the copy survives
		t.Fatal(err)
	}
	if res := fetchKey(t, c, key, src.load); res.Served.Outcome != view.Miss {
		t.Fatalf("first read after the write: %s, want a MISS", res.Served.Outcome)
	}
	for range 2 {
		res := fetchPlain(t, c, key, src.load)
		if d := decoded(t, res); d != `["after the write"]` || res.ETag != view.Fingerprint([]byte(d)) {
			t.Fatalf("plain read after the write: %s %q ETag %s", res.Served.Outcome, d, res.ETag)
		}
	}
}

// TestTheNearCacheBoundCountsPlainCopies: CACHE_LOCAL_MAX_BYTES bounds all the memory the tier
// holds. Bodies that compress well make plain copies many times larger than the gzip entries,
// so a weigher that forgot them would let the tier hold several times its bound.
func TestTheNearCacheBoundCountsPlainCopies(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	const bound = 64 << 10
	o := options(prefix)
	o.Compress = true
	o.NearCache, o.NearCacheTTL, o.NearCacheMaxBytes = true, time.Minute, bound
	c := withOptions(t, rdb, o)

	var keys []cache.Key
	for i := range 40 {
		keys = append(keys, cache.Key{Space: "item", ID: fmt.Sprint(i)})
	}
	loader := func(i int) cache.Loader {
		body := []byte(strings.Repeat(fmt.Sprintf(`{"id":%d,"title":"a title that repeats"},`, i), 400)) // ~16 KB, ~0.3 KB gzipped
		return func(context.Context) (view.View, error) { return val(string(body)), nil }
	}
	for round := range 3 {
		for i, k := range keys {
			res := fetchPlain(t, c, k, loader(i))
			if want, _ := loader(i)(context.Background()); !bytes.Equal(mustJSON(t, res), want.Body) {
				t.Fatalf("round %d key %d: wrong JSON", round, i)
			}
		}
		held, copies := c.NearCacheHeld()
		if held > bound {
			t.Fatalf("round %d: the near-cache holds %d bytes with %d plain copies, over its bound of %d", round, held, copies, bound)
		}
		if copies == 0 {
			t.Fatalf("round %d: no entry kept a plain copy (%d bytes held)", round, held)
		}
	}
}

func mustJSON(t *testing.T, v view.View) []byte {
	t.Helper()
	b, err := v.JSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
