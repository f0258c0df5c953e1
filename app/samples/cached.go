package samples

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/replication"
	"github.com/cacheside/cacheside/app/view"
)

// CachedStore serves reads cache-aside through Redis and retires the cached views a write
// affects once the write is committed. It wraps any Store and is one itself.
type CachedStore struct {
	db    Store
	cache *cache.Cache
	late  time.Duration
}

// NewCachedStore wraps db with c. late bounds how long after a write returned with an unknown
// outcome it can still land on the server (db's statement timeout, plus a margin): such a
// write's views are retired at once, and once more when late has passed.
func NewCachedStore(db Store, c *cache.Cache, late time.Duration) *CachedStore {
	return &CachedStore{db: db, cache: c, late: late}
}

var listKey = cache.Key{Space: "list", ID: "all"}

func itemKey(id int64) cache.Key { return cache.Key{Space: "item", ID: strconv.FormatInt(id, 10)} }

// List serves the whole list.
func (s *CachedStore) List(ctx context.Context) (view.View, error) {
	return s.cache.Fetch(ctx, listKey, s.db.List)
}

// Get serves one sample; a missing id is remembered as missing for the negative TTL.
func (s *CachedStore) Get(ctx context.Context, id int64) (view.View, error) {
	return s.cache.Fetch(ctx, itemKey(id), func(ctx context.Context) (view.View, error) { return s.db.Get(ctx, id) })
}

// Create inserts a sample and retires the list and the new id's (possibly negative) entry.
func (s *CachedStore) Create(ctx context.Context, title string) (Sample, error) {
	created, err := s.db.Create(ctx, title)
	if mayHaveWritten(err) {
		keys := []cache.Key{listKey}
		if created.ID != 0 { // the id was reserved before the insert, which may have happened
			keys = append(keys, itemKey(created.ID))
		}
		s.retireViews(ctx, err, keys...)
	}
	return created, err
}

// Update changes a sample and retires the list and that item.
func (s *CachedStore) Update(ctx context.Context, id int64, title string) (Sample, error) {
	if retireBeforeCommit { // only in the soak's proof that its checker fails: see bug_off.go
		_ = s.cache.Invalidate(ctx, listKey, itemKey(id))
		return s.db.Update(ctx, id, title)
	}
	updated, err := s.db.Update(ctx, id, title)
	if mayHaveWritten(err) {
		s.retireViews(ctx, err, listKey, itemKey(id))
	}
	return updated, err
}

// Delete removes a sample and retires the list and that item.
func (s *CachedStore) Delete(ctx context.Context, id int64) error {
	err := s.db.Delete(ctx, id)
	if mayHaveWritten(err) {
		s.retireViews(ctx, err, listKey, itemKey(id))
	}
	return err
}

// mayHaveWritten reports whether a write may have changed the database. Only a write that
// certainly did not happen is exempt: no row matched, the input was refused, or the statement
// never reached the server (no connection could be had: Postgres is down). A write that failed
// with a timeout, a cancellation or a lost connection after it was sent may have committed on
// the server after all, and then every replica would serve the old views until the TTL; a
// needless retirement costs one miss.
func mayHaveWritten(err error) bool {
	var invalid *ValidationError
	var notSent notSentError
	return !errors.Is(err, ErrNotFound) && !errors.As(err, &invalid) && !errors.As(err, &notSent)
}

// InvalidateAll retires every cached view, for bulk changes made outside the API such as seeding.
// Both retirements are tried whatever the first returned: one that fails is deferred and
// redelivered by the cache, one never tried would be lost.
func (s *CachedStore) InvalidateAll(ctx context.Context) error {
	return errors.Join(s.cache.Invalidate(ctx, listKey), s.cache.InvalidateSpace(ctx, "item"))
}

// retireViews retires the cached views a write affected. It never fails the write: the cache
// defers what Redis did not take, bypasses itself for those keys and redelivers them. A write
// that failed may still be on its way: a statement whose client gave up can run on the server,
// and commit, after the error came back (waiting for a row lock, say), and a read in between
// could cache the old row again. So its views are retired once more when it can no longer land.
func (s *CachedStore) retireViews(ctx context.Context, writeErr error, keys ...cache.Key) {
	_ = s.cache.Invalidate(ctx, keys...)
	if writeErr != nil {
		s.cache.InvalidateLater(s.late, keys...)
	}
}

// Views tells the replication follower which cached views a change to the samples table made
// by any writer (psql, another service, a migration) affects: a row's item and the list; a
// TRUNCATE, the list and every item. It is the same mapping the writes above use.
type Views struct{}

// Table is the table Views maps.
const Table = "samples"

// RowChanged returns the views of one changed row. A change that does not name its row (the
// table's REPLICA IDENTITY was set to NOTHING) retires every item.
func (v Views) RowChanged(t replication.Table, row map[string]string) ([]cache.Key, []string) {
	if t.Name != Table {
		return nil, nil
	}
	id, err := strconv.ParseInt(row["id"], 10, 64)
	if err != nil {
		return v.Truncated(t)
	}
	return []cache.Key{listKey, itemKey(id)}, nil
}

// Truncated returns what a TRUNCATE retires.
func (Views) Truncated(t replication.Table) ([]cache.Key, []string) {
	if t.Name != Table {
		return nil, nil
	}
	return []cache.Key{listKey}, []string{"item"}
}

// All returns every cached view.
func (Views) All() ([]cache.Key, []string) { return []cache.Key{listKey}, []string{"item"} }
