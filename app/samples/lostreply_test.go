package samples_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/platform/postgres"
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
	dbURL, proxy, direct := testenv.ProxiedDatabase(t)
	cfg := testenv.Config(t, "DATABASE_URL="+dbURL)
	hold := &holdOn{proxy: proxy}
	pool, err := postgres.Open(context.Background(), postgres.Options{URL: cfg.DatabaseURL, MaxConns: cfg.DatabaseMaxConns, ConnectTimeout: cfg.DatabaseConnectTimeout, Tracer: hold})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	c := cache.New(testenv.RedisClient(t, cfg), service.CacheOptions(cfg, slog.Default()))
	t.Cleanup(func() { c.Close(context.Background()) })
	cached := samples.NewCachedStore(samples.NewPGStore(pool, cfg.DatabaseTimeout), c, service.LateWriteBound(cfg))

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

// TestAWriteThatLandsAfterItsClientGaveUpIsRetiredAgain: a statement whose client gave up can
// still run on the server and commit after the error came back. pgx sends Postgres a cancel
// request, on a new connection; when that is lost (here the network lets no new connection
// through), an update waiting for a row lock commits once the lock is released. Its views were
// retired when the error came back, and a read in between cached the old row again. Once the
// write can no longer land (statement_timeout), its views are retired again, so the old row is
// served for that long at most, not for the TTL.
func TestAWriteThatLandsAfterItsClientGaveUpIsRetiredAgain(t *testing.T) {
	dbURL, proxy, direct := testenv.ProxiedDatabase(t)
	svc := testenv.Service(t, "DATABASE_URL="+dbURL)
	ctx := context.Background()
	s, err := svc.Cached.Create(ctx, "before")
	if err != nil {
		t.Fatal(err)
	}
	locker := lockRow(t, direct, s.ID)

	wctx, cancel := context.WithCancel(ctx)
	updated := make(chan error, 1)
	go func() { _, err := svc.Cached.Update(wctx, s.ID, "landed late"); updated <- err }()
	testenv.Eventually(t, 10*time.Second, func() error {
		var waiting int
		err := direct.QueryRow(ctx, waitingInThisDatabase).Scan(&waiting)
		if err == nil && waiting == 0 {
			err = fmt.Errorf("the update is not waiting for the row yet")
		}
		return err
	})
	proxy.RefuseNew()
	cancel()
	if err := <-updated; !errors.Is(err, context.Canceled) {
		t.Fatalf("the update returned %v, want context.Canceled", err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if proxy.Refused() == 0 {
			return fmt.Errorf("pgx has not tried to send its cancel request yet")
		}
		return nil
	})
	proxy.AcceptNew()
	v, err := svc.Cached.Get(ctx, s.ID) // the old row, cached again after the first retirement
	if err != nil || !strings.Contains(string(plain(t, v)), `"before"`) {
		t.Fatalf("read before the write landed: %s %v", plain(t, v), err)
	}
	if err := locker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		var title string
		if err := direct.QueryRow(ctx, "SELECT title FROM samples WHERE id = $1", s.ID).Scan(&title); err != nil || title != "landed late" {
			return fmt.Errorf("the update has not landed: %q %v", title, err)
		}
		return nil
	})
	testenv.Eventually(t, service.LateWriteBound(svc.Config)+10*time.Second, func() error {
		v, err := svc.Cached.Get(ctx, s.ID)
		if err != nil || !strings.Contains(string(plain(t, v)), `"landed late"`) {
			return fmt.Errorf("the cache still serves %s %v", plain(t, v), err)
		}
		return nil
	})
}

// TestAWriteWhoseClientGaveUpCannotLandAfterTheQueryTimeout: Postgres itself abandons a
// statement after DATABASE_TIMEOUT (statement_timeout), so a write whose client is gone and
// whose cancel request was lost cannot land later than that: the bound the second retirement
// of such a write relies on.
func TestAWriteWhoseClientGaveUpCannotLandAfterTheQueryTimeout(t *testing.T) {
	dbURL, proxy, direct := testenv.ProxiedDatabase(t)
	svc := testenv.Service(t, "DATABASE_URL="+dbURL, "DATABASE_TIMEOUT=1s")
	ctx := context.Background()
	s, err := svc.Samples.Create(ctx, "before")
	if err != nil {
		t.Fatal(err)
	}
	locker := lockRow(t, direct, s.ID)
	waiters := func() (n int) {
		_ = direct.QueryRow(ctx, waitingInThisDatabase).Scan(&n)
		return n
	}
	wctx, cancel := context.WithCancel(ctx)
	updated := make(chan error, 1)
	go func() { _, err := svc.Samples.Update(wctx, s.ID, "too late"); updated <- err }()
	testenv.Eventually(t, 10*time.Second, func() error {
		if waiters() == 0 {
			return fmt.Errorf("the update is not waiting for the row yet")
		}
		return nil
	})
	proxy.RefuseNew() // its cancel request is lost
	cancel()
	<-updated
	testenv.Eventually(t, 30*time.Second, func() error { // the server gives up on its own
		if n := waiters(); n != 0 {
			return fmt.Errorf("the abandoned update still waits for the row")
		}
		return nil
	})
	if err := locker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	var title string
	if err := direct.QueryRow(ctx, "SELECT title FROM samples WHERE id = $1", s.ID).Scan(&title); err != nil || title != "before" {
		t.Errorf("the row holds %q (%v): an abandoned write landed after the query timeout", title, err)
	}
}

// waitingInThisDatabase counts the sessions of the test's own database waiting for a lock. The
// server is shared: other tests' sessions wait too (creating a replication slot waits for every
// transaction running in the cluster, this test's row lock included).
const waitingInThisDatabase = `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
	WHERE NOT l.granted AND a.datname = current_database()`

// lockRow takes the row lock of sample id in a transaction of its own, so a write to that row
// waits until the returned transaction ends (rolled back at the end of the test at the latest).
func lockRow(t *testing.T, db *pgxpool.Pool, id int64) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, "SELECT 1 FROM samples WHERE id = $1 FOR UPDATE", id); err != nil {
		t.Fatal(err)
	}
	return tx
}
