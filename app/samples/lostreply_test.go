package samples_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/platform/postgres"
	"github.com/cacheside/cacheside/app/platform/redisclient"
	"github.com/cacheside/cacheside/app/samples"
	"github.com/cacheside/cacheside/app/service"
)

// holdOn is a pgx tracer that makes the proxy hold the server's replies from the moment a
// statement starting with the armed prefix is executed: the statement runs and commits, its
// reply never arrives.
type holdOn struct {
	proxy *testenv.Proxy
	mu    sync.Mutex
	sql   string
}

func (h *holdOn) arm(sqlPrefix string) { h.mu.Lock(); h.sql = sqlPrefix; h.mu.Unlock() }

func (h *holdOn) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sql != "" && strings.HasPrefix(data.SQL, h.sql) {
		h.sql = ""
		h.proxy.HoldAfterExecute()
	}
	return ctx
}

func (h *holdOn) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestAWriteWhoseReplyIsLostStillRetiresWhatItChanged: a write that committed on the server
// while its client gave up (a cancelled request, DATABASE_TIMEOUT, a lost connection) returns
// an error, yet the data changed. The views it affects must be retired anyway, or every replica
// serves the old data until the TTL. The stores use the production cache settings.
func TestAWriteWhoseReplyIsLostStillRetiresWhatItChanged(t *testing.T) {
	dbURL := testenv.Database(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.StartProxy(t, u.Host)
	u.Host = proxy.Addr()
	cfg := testenv.Config(t, "DATABASE_URL="+u.String())
	hold := &holdOn{proxy: proxy}
	pool, err := postgres.Open(context.Background(), postgres.Options{URL: cfg.DatabaseURL, MaxConns: cfg.DatabaseMaxConns, ConnectTimeout: cfg.DatabaseConnectTimeout, Tracer: hold})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	rdb, err := redisclient.New(redisclient.Options{URL: cfg.RedisURL, Timeout: cfg.RedisTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	c := cache.New(rdb, service.CacheOptions(cfg, slog.Default()))
	t.Cleanup(func() { c.Close(context.Background()) })
	cached := samples.NewCachedStore(samples.NewPGStore(pool, cfg.DatabaseTimeout), c)
	direct := testenv.Pool(t, dbURL) // around the proxy: sees what the server committed

	ctx := context.Background()
	titleOf := func(id int64) (string, error) {
		var title string
		err := direct.QueryRow(ctx, "SELECT title FROM samples WHERE id = $1", id).Scan(&title)
		return title, err
	}
	// lose runs write with the reply to the statement starting with sqlPrefix held, waits until
	// the server has committed, then cancels the write, as a client that gives up does.
	lose := func(sqlPrefix string, committed func() error, write func(context.Context) error) {
		t.Helper()
		hold.arm(sqlPrefix)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- write(wctx) }()
		testenv.Eventually(t, 10*time.Second, committed)
		cancel()
		if err := <-done; err == nil {
			t.Fatal("the write returned no error: the test did not lose its reply")
		} else {
			t.Logf("the write returned %v", err)
		}
		proxy.Release()
	}
	// views reads the item and the list through the cache.
	views := func(id int64) (item string, list string) {
		t.Helper()
		v, err := cached.Get(ctx, id)
		switch {
		case errors.Is(err, samples.ErrNotFound):
			item = "(not found)"
		case err != nil:
			t.Fatal(err)
		default:
			item = string(plain(t, v))
		}
		l, err := cached.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return item, string(plain(t, l))
	}

	s, err := cached.Create(ctx, "before")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("update", func(t *testing.T) {
		views(s.ID) // cached
		lose("UPDATE", func() error {
			if title, err := titleOf(s.ID); err != nil || title != "updated" {
				return fmt.Errorf("not committed yet: %q %v", title, err)
			}
			return nil
		}, func(ctx context.Context) error { _, err := cached.Update(ctx, s.ID, "updated"); return err })
		if item, list := views(s.ID); !strings.Contains(item, `"updated"`) || !strings.Contains(list, `"updated"`) {
			t.Errorf("after an update that committed: item %s, list %s", item, list)
		}
	})

	t.Run("create", func(t *testing.T) {
		var last int64
		if err := direct.QueryRow(ctx, "SELECT pg_sequence_last_value(pg_get_serial_sequence('samples', 'id'))").Scan(&last); err != nil {
			t.Fatal(err)
		}
		next := last + 1
		if item, _ := views(next); item != "(not found)" { // its absence is cached now
			t.Fatalf("id %d exists before the create: %s", next, item)
		}
		lose("INSERT", func() error {
			if title, err := titleOf(next); err != nil || title != "created" {
				return fmt.Errorf("not committed yet: %q %v", title, err)
			}
			return nil
		}, func(ctx context.Context) error { _, err := cached.Create(ctx, "created"); return err })
		if item, list := views(next); !strings.Contains(item, `"created"`) || !strings.Contains(list, `"created"`) {
			t.Errorf("after a create that committed: item %s, list %s", item, list)
		}
	})

	t.Run("delete", func(t *testing.T) {
		views(s.ID)
		lose("DELETE", func() error {
			if _, err := titleOf(s.ID); !errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("not committed yet: %v", err)
			}
			return nil
		}, func(ctx context.Context) error { return cached.Delete(ctx, s.ID) })
		if item, list := views(s.ID); item != "(not found)" || strings.Contains(list, fmt.Sprintf(`"id":%d,`, s.ID)) {
			t.Errorf("after a delete that committed: item %s, list %s", item, list)
		}
	})
}
