package samples

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cacheside/cacheside/app/platform/postgres"
	"github.com/cacheside/cacheside/app/view"
)

// PGStore reads and writes samples in Postgres. Every call but Seed (bulk work, bounded by its
// caller) is bounded by the query timeout.
type PGStore struct {
	pool    *pgxpool.Pool
	timeout time.Duration
}

// NewPGStore returns a store over pool.
func NewPGStore(pool *pgxpool.Pool, timeout time.Duration) *PGStore {
	return &PGStore{pool: pool, timeout: timeout}
}

const columns = "id, title, created_at"

// List returns every sample ordered by id, as a JSON array.
func (s *PGStore) List(ctx context.Context) (view.View, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, _ := s.pool.Query(ctx, "SELECT "+columns+" FROM samples ORDER BY id")
	list, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Sample])
	if err != nil {
		return view.View{}, classify(ctx, "listing samples", err)
	}
	if list == nil {
		list = []Sample{} // [] rather than null
	}
	return encode(list)
}

// Get returns one sample as a JSON object.
func (s *PGStore) Get(ctx context.Context, id int64) (view.View, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, _ := s.pool.Query(ctx, "SELECT "+columns+" FROM samples WHERE id = $1", id)
	one, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Sample])
	if err != nil {
		return view.View{}, classify(ctx, "reading sample", err)
	}
	return encode(one)
}

// Create inserts a sample; the database assigns created_at. The id is drawn from the table's
// sequence before the insert, so that when the insert fails in a way that leaves its outcome
// unknown (a timeout, a lost connection) the returned Sample still carries the id it would have:
// the caller can retire what the insert may have changed.
func (s *PGStore) Create(ctx context.Context, title string) (Sample, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var id int64
	if err := s.pool.QueryRow(ctx, "SELECT nextval(pg_get_serial_sequence('samples', 'id'))").Scan(&id); err != nil {
		return Sample{}, notSentError{classify(ctx, "reserving an id", err)} // the insert was never tried
	}
	created, err := s.writeOne(ctx, "creating sample",
		"INSERT INTO samples (id, title) OVERRIDING SYSTEM VALUE VALUES ($1, $2) RETURNING "+columns, id, title)
	if err != nil {
		return Sample{ID: id}, err
	}
	return created, nil
}

// Update replaces a sample's title.
func (s *PGStore) Update(ctx context.Context, id int64, title string) (Sample, error) {
	return s.writeOne(ctx, "updating sample", "UPDATE samples SET title = $2 WHERE id = $1 RETURNING "+columns, id, title)
}

// Delete removes a sample.
func (s *PGStore) Delete(ctx context.Context, id int64) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	conn, err := s.acquire(ctx, "deleting sample")
	if err != nil {
		return err
	}
	defer conn.Release()
	tag, err := conn.Exec(ctx, "DELETE FROM samples WHERE id = $1", id)
	if err != nil {
		return classifyWrite(ctx, "deleting sample", err)
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

// Seed inserts n samples titled "Sample N" in one statement, first deleting every sample when
// replace is set. It returns how many samples exist afterwards.
func (s *PGStore) Seed(ctx context.Context, n int, replace bool) (int64, error) {
	var total int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Bulk work, bounded by its caller rather than by a request's statement_timeout.
		if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = 0"); err != nil {
			return err
		}
		if replace {
			if _, err := tx.Exec(ctx, "DELETE FROM samples"); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, "INSERT INTO samples (title) SELECT 'Sample ' || g FROM generate_series(1, $1::int) AS g", n); err != nil {
			return err
		}
		return tx.QueryRow(ctx, "SELECT count(*) FROM samples").Scan(&total)
	})
	if err != nil {
		return 0, classify(ctx, "seeding samples", err)
	}
	return total, nil
}

// Count returns how many samples exist.
func (s *PGStore) Count(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var n int64
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM samples").Scan(&n); err != nil {
		return 0, classify(ctx, "counting samples", err)
	}
	return n, nil
}

func (s *PGStore) writeOne(ctx context.Context, what, sql string, args ...any) (Sample, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	conn, err := s.acquire(ctx, what)
	if err != nil {
		return Sample{}, err
	}
	defer conn.Release()
	rows, _ := conn.Query(ctx, sql, args...)
	one, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Sample])
	if err != nil {
		return Sample{}, classifyWrite(ctx, what, err)
	}
	return one, nil
}

// notSentError marks a write that failed before its statement reached the server: it certainly
// changed nothing, so it retires no cached view (during a Postgres outage, a write attempt must
// not turn cached reads into errors). See CachedStore's mayHaveWritten.
type notSentError struct{ error }

func (e notSentError) Unwrap() error { return e.error }

// acquire takes a connection for a write and checks it with a ping, one round trip. A pooled
// connection that Postgres closed since it was last used (a restart, a terminated backend)
// fails the ping and is dropped, and the next one is tried, so the write is not lost to it; and
// when Postgres is down, acquiring fails before anything was sent. Without the ping, the write
// would fail after sending, its outcome unknown, and retire views nothing changed.
func (s *PGStore) acquire(ctx context.Context, what string) (*pgxpool.Conn, error) {
	for {
		conn, err := s.pool.Acquire(ctx)
		if err != nil {
			return nil, notSentError{classify(ctx, what, err)}
		}
		err = conn.Ping(ctx)
		if err == nil {
			return conn, nil
		}
		closed := conn.Conn().IsClosed()
		conn.Release() // the pool drops a closed connection
		if !closed || ctx.Err() != nil {
			return nil, notSentError{classify(ctx, what, err)}
		}
	}
}

// classifyWrite is classify for a write's statement, which pgx may have failed to send at all
// (a connection found broken when writing to it).
func classifyWrite(ctx context.Context, what string, err error) error {
	classified := classify(ctx, what, err)
	if pgconn.SafeToRetry(err) {
		return notSentError{classified}
	}
	return classified
}

// classify maps a Postgres error onto the domain's. A call whose own caller went away is
// reported as that (context.Canceled), not as Postgres being unavailable, whatever pgx was
// doing when it noticed (dialling, waiting for a connection, reading a reply).
func classify(ctx context.Context, what string, err error) error {
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return ErrNotFound
	case errors.Is(context.Cause(ctx), context.Canceled):
		return fmt.Errorf("%s: %w", what, context.Canceled)
	case postgres.IsUnavailable(err):
		return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// encode serializes a read, with its ETag: the store supplies it, so no later layer fingerprints.
func encode(v any) (view.View, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return view.View{}, fmt.Errorf("encoding samples: %w", err)
	}
	return view.View{Body: b, ETag: view.Fingerprint(b), Found: true}, nil
}
