package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cacheside/cacheside/app/internal/testenv"
)

// replicationState is /readyz's account of the replication follower.
type replicationState struct {
	Role      string `json:"role"`
	Streaming bool   `json:"streaming"`
	Confirmed string `json:"confirmed_lsn"`
	Reason    string `json:"reason"`
}

func (p *proc) replication(t *testing.T) replicationState {
	t.Helper()
	res, err := http.Get("http://" + p.addr + "/readyz")
	if err != nil {
		return replicationState{Role: "unreachable: " + err.Error()}
	}
	defer res.Body.Close()
	var r struct {
		Checks struct {
			Replication replicationState `json:"replication"`
		} `json:"checks"`
	}
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	return r.Checks.Replication
}

// leader waits until exactly one of ps streams, and returns it.
func leader(t *testing.T, within time.Duration, ps ...*proc) *proc {
	t.Helper()
	var found *proc
	testenv.Eventually(t, within, func() error {
		found = nil
		var states []string
		for _, p := range ps {
			s := p.replication(t)
			states = append(states, fmt.Sprintf("%s:%+v", p.addr, s))
			if s.Role == "leader" && s.Streaming {
				if found != nil {
					return fmt.Errorf("two leaders: %v", states)
				}
				found = p
			}
		}
		if found == nil {
			return fmt.Errorf("no leader streaming: %v", states)
		}
		return nil
	})
	return found
}

func body(t *testing.T, p *proc, path string) (int, string) {
	t.Helper()
	res, err := http.Get("http://" + p.addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestChangesMadeOutsideTheAPIReachEveryReplica: INSERT, UPDATE, DELETE and TRUNCATE made with
// plain SQL show on /cache and on the item of both replicas, each of which holds them in its
// near-cache for a minute (so only a retirement can refresh them), within the stated bound.
func TestChangesMadeOutsideTheAPIReachEveryReplica(t *testing.T) {
	env := append(baseEnv(t), "CACHE_LOCAL_ENABLED=true", "CACHE_LOCAL_TTL=1m")
	db := testenv.Pool(t, strings.TrimPrefix(env[0], "DATABASE_URL="))
	a, b := serve(t, env...), serve(t, env...)
	leader(t, 60*time.Second, a, b)
	ctx := context.Background()
	var id int64
	if err := db.QueryRow(ctx, "INSERT INTO samples (title) VALUES ('first') RETURNING id").Scan(&id); err != nil {
		t.Fatal(err)
	}
	item := fmt.Sprintf("/samples/%d", id)
	const bound = 5 * time.Second // stated in the README; measured in milliseconds here

	for _, step := range []struct{ sql, itemHas, listHas, listLacks string }{
		{"UPDATE samples SET title = 'changed by psql' WHERE id = $1", "changed by psql", "changed by psql", "first"},
		{"INSERT INTO samples (title) SELECT 'inserted by psql' WHERE $1::bigint > 0", "changed by psql", "inserted by psql", ""},
		{"DELETE FROM samples WHERE id = $1", "not_found", "inserted by psql", "changed by psql"},
		{"TRUNCATE samples", "not_found", "[]", "inserted by psql"},
	} {
		// Warm both replicas' tiers: the reads below are answered from the near-cache.
		testenv.Eventually(t, 10*time.Second, func() error {
			for _, p := range []*proc{a, b} {
				for _, path := range []string{"/cache", item} {
					res, err := http.Get("http://" + p.addr + path)
					if err != nil {
						return err
					}
					res.Body.Close()
					if res.Header.Get("X-Cache-Tier") != "local" {
						return fmt.Errorf("%s%s not from the near-cache yet", p.addr, path)
					}
				}
			}
			return nil
		})
		args := []any{}
		if strings.Contains(step.sql, "$1") {
			args = append(args, id)
		}
		if _, err := db.Exec(ctx, step.sql, args...); err != nil {
			t.Fatal(err)
		}
		committed := time.Now()
		for _, p := range []*proc{a, b} {
			testenv.Eventually(t, bound, func() error {
				_, list := body(t, p, "/cache")
				_, it := body(t, p, item)
				if !strings.Contains(it, step.itemHas) || !strings.Contains(list, step.listHas) ||
					(step.listLacks != "" && strings.Contains(list, step.listLacks)) {
					return fmt.Errorf("%s after %q: item %s, list %s", p.addr, step.sql, it, list)
				}
				return nil
			})
		}
		t.Logf("%-62s seen on both replicas %v after its commit", step.sql, time.Since(committed).Round(time.Millisecond))
	}

	// What an operator watches: the leader's changes, latency, lag and leadership.
	lead := leader(t, time.Second, a, b)
	_, metrics := body(t, &proc{addr: lead.admin}, "/metrics")
	for _, series := range []string{
		`cacheside_replication_changes_total{op="update",otel_scope_name="github.com/cacheside/cacheside/app/replication"`,
		`op="truncate"`,
		`cacheside_replication_keys_retired_total`,
		`cacheside_replication_retire_latency_seconds_bucket{`,
		`cacheside_replication_lag_bytes{`,
		`cacheside_replication_lag_seconds{`,
		`cacheside_replication_leadership_changes_total{`,
		"cacheside_replication_leader{",
	} {
		if !strings.Contains(metrics, series) {
			t.Errorf("the leader's /metrics lacks %s", series)
		}
	}
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "cacheside_replication_leader{") && !strings.HasSuffix(line, " 1") {
			t.Errorf("the leader reports %s", line)
		}
	}
}

// TestTheLeaderKilledWhileChangesCommitLosesNothing: the streaming replica is SIGKILLed while a
// client keeps changing rows with plain SQL; the other takes over from the slot's confirmed
// position, and afterwards every row it serves from its cache is the row in the database.
func TestTheLeaderKilledWhileChangesCommitLosesNothing(t *testing.T) {
	// Its reader reads as fast as it can, to keep rows cached: far over one client's budget.
	env := append(baseEnv(t), "RATE_LIMIT_ENABLED=false")
	db := testenv.Pool(t, strings.TrimPrefix(env[0], "DATABASE_URL="))
	ctx := context.Background()
	const rows = 50
	if _, err := db.Exec(ctx, "INSERT INTO samples (title) SELECT 'row ' || i FROM generate_series(1, $1::int) i", rows); err != nil {
		t.Fatal(err)
	}
	ids := allIDs(t, db)
	a, b := serve(t, env...), serve(t, env...)
	first := leader(t, 60*time.Second, a, b)
	other := a
	if first == a {
		other = b
	}
	warm := func(p *proc) {
		for _, id := range ids {
			body(t, p, fmt.Sprintf("/samples/%d", id))
		}
		body(t, p, "/cache")
	}
	warm(other)

	var changes atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 2)
	go func() { // readers keep caching rows, so a change whose retirement is lost stays served
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			res, err := http.Get(fmt.Sprintf("http://%s/samples/%d", other.addr, ids[rand.IntN(len(ids))]))
			if err != nil {
				done <- err
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}()
	go func() { // a client outside the API
		var err error
		for n := 0; err == nil; n++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			id := ids[rand.IntN(len(ids))]
			_, err = db.Exec(ctx, "UPDATE samples SET title = $1 WHERE id = $2", fmt.Sprintf("change %d", n), id)
			changes.Add(1)
		}
		done <- err
	}()
	testenv.Eventually(t, 30*time.Second, func() error {
		if changes.Load() < 100 {
			return fmt.Errorf("%d changes so far", changes.Load())
		}
		return nil
	})
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.cmd.Wait()
	killedAt, before := time.Now(), changes.Load()
	leader(t, 60*time.Second, other)
	t.Logf("leader killed after %d changes; the other replica streams %v later", before, time.Since(killedAt).Round(time.Millisecond))
	// A few more changes after the takeover: enough to show streaming goes on, few enough that
	// most rows changed while no one streamed are not changed again (which would hide a loss).
	took := changes.Load()
	testenv.Eventually(t, 30*time.Second, func() error {
		if changes.Load() < took+50 {
			return fmt.Errorf("%d changes since the takeover", changes.Load()-took)
		}
		return nil
	})
	close(stop)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}

	// A last change marks the end: once the new leader has retired past it, each row read
	// through its cache must be the database's.
	var mark string
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE samples SET title = 'last' WHERE id = $1", ids[0]); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&mark); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		var past bool
		confirmed := other.replication(t).Confirmed
		err := db.QueryRow(ctx, "SELECT $1::pg_lsn > $2::pg_lsn", orZero(confirmed), mark).Scan(&past)
		if err == nil && !past {
			err = fmt.Errorf("new leader has retired up to %s, not past %s", confirmed, mark)
		}
		return err
	})
	stale := 0
	for _, id := range ids {
		var want string
		if err := db.QueryRow(ctx, "SELECT title FROM samples WHERE id = $1", id).Scan(&want); err != nil {
			t.Fatal(err)
		}
		if _, got := body(t, other, fmt.Sprintf("/samples/%d", id)); !strings.Contains(got, `"`+want+`"`) {
			stale++
			t.Errorf("sample %d: served %s, the database has %q", id, got, want)
		}
	}
	t.Logf("%d changes, the leader killed mid-way: %d of %d rows stale afterwards", changes.Load(), stale, len(ids))
}

func allIDs(t *testing.T, db *pgxpool.Pool) []int64 {
	t.Helper()
	rows, err := db.Query(context.Background(), "SELECT id FROM samples ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func orZero(lsn string) string {
	if lsn == "" {
		return "0/0"
	}
	return lsn
}
