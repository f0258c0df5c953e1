// Package replication retires the cached views that any writer changed, not only the API: psql,
// another service, a migration, a bulk import. It follows Postgres's logical replication stream
// (the pgoutput plugin, through a replication slot and a publication of the cached tables) and
// hands each committed row change to the store that owns the table, which names the views it
// affects; those are retired through the cache's generations, like the API's own writes.
//
// Delivery is at least once. The follower confirms a position to Postgres only once Redis has
// taken the retirements of every change up to it; until then the slot keeps the WAL, and a
// follower that restarts (this one after an error, or another replica after a crash) is sent
// those changes again. Retiring twice costs a miss.
//
// One follower streams at a time across the replicas: it holds a Postgres advisory lock on a
// connection of its own; the others try for the lock every status interval. When the leader dies
// its session ends, the lock is free, and the next one resumes from the slot's confirmed position.
package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/cacheside/cacheside/app/cache"
)

// Views maps changes of the cached tables onto the cache keys they affect. The store that owns a
// table implements it, next to the keys it reads through.
type Views interface {
	// RowChanged returns the keys (and whole key spaces) a changed row affects. row holds the
	// row's columns as text, by name: for an update both the old key (if it changed) and the new
	// row are given, one call each; for a delete only the key columns are set; a change that
	// does not identify its row (REPLICA IDENTITY NOTHING) comes with none.
	RowChanged(table Table, row map[string]string) (keys []cache.Key, spaces []string)
	// Truncated returns what a TRUNCATE of table retires: keys, and whole key spaces.
	Truncated(table Table) (keys []cache.Key, spaces []string)
	// All returns everything cached from the published tables, for a full retirement.
	All() (keys []cache.Key, spaces []string)
}

// Table names a relation.
type Table struct{ Schema, Name string }

func (t Table) String() string { return t.Schema + "." + t.Name }

// Retirer is what the follower retires through: *cache.Cache.
type Retirer interface {
	Invalidate(ctx context.Context, keys ...cache.Key) error
	InvalidateSpace(ctx context.Context, space string) error
}

// Options configures a Follower.
type Options struct {
	// URL is the Postgres URL; its role needs the REPLICATION attribute.
	URL string
	// Slot is the logical replication slot's name; Publication the publication's.
	Slot, Publication string
	// StatusInterval is how often the position is confirmed to Postgres and how often a replica
	// that is not the leader tries to become it.
	StatusInterval time.Duration
	// BatchKeys bounds the keys retired in one round trip; a large transaction is retired in
	// batches of this size. 0: 500.
	BatchKeys int
	Views     Views
	Retirer   Retirer
	Logger    *slog.Logger
}

// State is what the follower is doing, for /readyz and the logs.
type State struct {
	// Role is "leader" (streaming), "standby" (another replica streams), "starting", "off"
	// (REPLICATION_ENABLED=false) or "unavailable" (the database does not allow it: see Reason).
	Role   string `json:"role"`
	Reason string `json:"reason,omitempty"`
	// Streaming is true while the leader follows the stream (false while it reconnects).
	Streaming bool `json:"streaming"`
	// Confirmed is the last position confirmed to Postgres by this replica, when leader.
	Confirmed string `json:"confirmed_lsn,omitempty"`
}

// Follower follows the stream while it is the leader. Start it with Run.
type Follower struct {
	opts    Options
	tracer  trace.Tracer
	metrics *metrics

	mu    sync.Mutex
	state State

	applied   atomic.Uint64 // the position up to which every change is retired (an LSN)
	walEnd    atomic.Uint64 // the server's end of WAL, last we heard
	oldest    atomic.Int64  // commit time (UnixNano) of the oldest change not yet retired, 0 if none
	isLeader  atomic.Bool
	streaming atomic.Bool  // the leader follows the stream now
	fullRuns  atomic.Int64 // full retirements done, for tests
}

// New returns a Follower; it does nothing until Run.
func New(o Options) *Follower {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.BatchKeys <= 0 {
		o.BatchKeys = 500
	}
	if o.StatusInterval <= 0 {
		o.StatusInterval = 10 * time.Second
	}
	f := &Follower{opts: o, tracer: otel.Tracer("github.com/cacheside/cacheside/app/replication"), state: State{Role: "starting"}}
	f.metrics = newMetrics(f)
	return f
}

// State reports what the follower is doing.
func (f *Follower) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.state
	if s.Role == "leader" {
		s.Confirmed = pglogrepl.LSN(f.applied.Load()).String()
		s.Streaming = f.streaming.Load()
	}
	return s
}

// Applied is the position up to which every change has been retired (when leader).
func (f *Follower) Applied() pglogrepl.LSN { return pglogrepl.LSN(f.applied.Load()) }

// FullRetirements counts the times this follower retired everything because the slot was new.
func (f *Follower) FullRetirements() int64 { return f.fullRuns.Load() }

func (f *Follower) setState(role, reason string) {
	f.mu.Lock()
	prev := f.state
	f.state = State{Role: role, Reason: reason}
	f.mu.Unlock()
	if prev.Role == role && prev.Reason == reason {
		return
	}
	switch {
	case role == "unavailable":
		f.opts.Logger.Error("replication-driven invalidation is unavailable; only this service's own writes retire cached views, so a change made by another writer stays cached until CACHE_TTL",
			"reason", reason, "slot", f.opts.Slot)
	case prev.Role == "leader" || role == "leader":
		f.opts.Logger.Info("replication leadership changed", "from", prev.Role, "to", role, "slot", f.opts.Slot, "reason", reason)
	}
	if (prev.Role == "leader") != (role == "leader") {
		f.metrics.leaderChanges.Add(context.Background(), 1)
	}
}

// errUnavailable means the database does not allow logical replication for this role: retrying
// soon will not help.
type errUnavailable struct{ reason string }

func (e errUnavailable) Error() string { return e.reason }

// Run follows until ctx ends. It never returns early: every failure is logged and retried.
func (f *Follower) Run(ctx context.Context) {
	var lock *pgx.Conn // kept open while standing by, so trying for the lock costs one query
	closeLock := func() {
		if lock != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = lock.Close(cctx) // ends the session: the advisory lock, if held, is released
			cancel()
			lock = nil
		}
	}
	defer closeLock()
	backoff := time.Second
	for ctx.Err() == nil {
		var err error
		if lock == nil {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			lock, err = pgx.Connect(cctx, f.opts.URL)
			cancel()
			if err != nil {
				lock, err = nil, fmt.Errorf("connecting to Postgres: %w", err)
			}
		}
		if lock != nil {
			err = f.campaign(ctx, lock)
		}
		led := f.isLeader.Swap(false)
		if ctx.Err() != nil {
			return
		}
		if err != nil || led {
			closeLock() // a leader's session is ended, whatever ended its leading
		}
		wait := backoff
		var unavailable errUnavailable
		switch {
		case errors.As(err, &unavailable):
			f.setState("unavailable", unavailable.reason)
			wait = max(time.Minute, f.opts.StatusInterval) // a configuration change is needed
		case err != nil:
			if f.State().Role == "leader" {
				f.setState("standby", err.Error())
			}
			f.opts.Logger.Warn("replication follower failed; retrying", "err", err, "in", wait.String())
			backoff = min(2*backoff, 10*time.Second)
		default:
			backoff = time.Second
			wait = f.opts.StatusInterval
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// campaign tries to become the leader on lock's session; as the leader it streams until an
// error or ctx ends. It returns nil when another replica leads.
func (f *Follower) campaign(ctx context.Context, lock *pgx.Conn) error {
	var walLevel string
	if err := lock.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return fmt.Errorf("reading wal_level: %w", err)
	}
	if walLevel != "logical" {
		return errUnavailable{fmt.Sprintf("wal_level is %s: set wal_level = logical in postgresql.conf (or the managed database's parameters) and restart Postgres", walLevel)}
	}
	var won bool
	err := lock.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtext('cacheside.replication'), hashtext($1))", f.opts.Slot).Scan(&won)
	if err != nil {
		return fmt.Errorf("taking the leader lock: %w", err)
	}
	if !won {
		f.setState("standby", "")
		return nil
	}
	f.isLeader.Store(true)
	f.setState("leader", "")
	return f.lead(ctx, lock)
}

// lead streams from the slot while this replica holds the leader lock on lock. A session that
// ends in an error (Redis did not take a retirement, the connection broke) is started again
// from the slot's confirmed position, so its changes are sent again; the lock is kept meanwhile.
func (f *Follower) lead(ctx context.Context, lock *pgx.Conn) error {
	backoff := 250 * time.Millisecond
	for {
		began := time.Now()
		err := f.session(ctx, lock)
		if ctx.Err() != nil {
			return nil
		}
		err = f.classify(err)
		var unavailable errUnavailable
		if errors.As(err, &unavailable) {
			return err
		}
		if perr := lockAlive(ctx, lock); perr != nil {
			return fmt.Errorf("lost the leader lock's session (%v) after: %w", perr, err)
		}
		if time.Since(began) > time.Minute {
			backoff = 250 * time.Millisecond
		}
		f.opts.Logger.Warn("replication stream interrupted; resuming from the slot's confirmed position, so nothing is lost",
			"err", err, "in", backoff.String(), "confirmed_lsn", f.Applied().String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// lockAlive reports whether the session holding the leader lock still answers: if it is gone,
// the lock is free and another replica may be taking over.
func lockAlive(ctx context.Context, lock *pgx.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return lock.Ping(ctx)
}

// classify turns the errors that retrying cannot cure into errUnavailable, naming the fix.
func (f *Follower) classify(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch {
	case pgErr.Code == "42501": // insufficient privilege: neither superuser nor REPLICATION
		role := "the service's role"
		if cfg, perr := pgconn.ParseConfig(f.opts.URL); perr == nil {
			role = cfg.User
		}
		return errUnavailable{fmt.Sprintf("role %s may not replicate (%s): ALTER ROLE %s WITH REPLICATION (on Amazon RDS: GRANT rds_replication TO %s)", role, pgErr.Message, role, role)}
	case pgErr.Code == "42704" && strings.Contains(pgErr.Message, "publication"):
		return errUnavailable{fmt.Sprintf("publication %s does not exist in this database: run the migrations, or set REPLICATION_PUBLICATION", f.opts.Publication)}
	}
	return err
}

// session is one replication session: the slot made sure of, the views retired once if the slot
// is new, and the stream followed until an error.
func (f *Follower) session(ctx context.Context, lock *pgx.Conn) error {
	if err := f.prepareSlot(ctx, lock); err != nil {
		return err
	}
	// What the slot has confirmed (by this replica or an earlier leader) is retired: the first
	// status update of this session must not report less.
	var confirmed string
	err := lock.QueryRow(ctx, "SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = $1", f.opts.Slot).Scan(&confirmed)
	if err != nil {
		return fmt.Errorf("reading slot %s's confirmed position: %w", f.opts.Slot, err)
	}
	lsn, err := pglogrepl.ParseLSN(confirmed)
	if err != nil {
		return fmt.Errorf("reading slot %s's confirmed position %q: %w", f.opts.Slot, confirmed, err)
	}
	// A slot that has confirmed more than any follower recorded was made anew, or advanced, by
	// something else: what it skipped was never retired.
	tag, err := lock.Exec(ctx, `UPDATE cache_replication_slots SET synced = false
		WHERE slot_name = $1 AND synced AND confirmed_lsn IS NOT NULL AND confirmed_lsn < $2::pg_lsn`, f.opts.Slot, confirmed)
	if err != nil {
		return fmt.Errorf("comparing slot %s's position with the recorded one: %w", f.opts.Slot, err)
	}
	if tag.RowsAffected() > 0 {
		f.opts.Logger.Warn("replication slot has confirmed more than any follower recorded: it was made anew or advanced by something else; retiring every cached view",
			"slot", f.opts.Slot, "slot_confirmed_lsn", confirmed)
	}
	if uint64(lsn) > f.applied.Load() {
		f.applied.Store(uint64(lsn))
	}
	cfg, err := pgconn.ParseConfig(f.opts.URL)
	if err != nil {
		return errUnavailable{"DATABASE_URL does not parse"}
	}
	cfg.RuntimeParams["replication"] = "database"
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgconn.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		return fmt.Errorf("opening the replication connection: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()

	if err := f.retireAllIfNew(ctx, lock); err != nil {
		return err
	}
	args := []string{"proto_version '1'", "publication_names '" + f.opts.Publication + "'"}
	if err := pglogrepl.StartReplication(ctx, conn, f.opts.Slot, 0, pglogrepl.StartReplicationOptions{PluginArgs: args}); err != nil {
		return fmt.Errorf("starting replication from slot %s: %w", f.opts.Slot, err)
	}
	f.streaming.Store(true)
	defer f.streaming.Store(false)
	s := &stream{f: f, conn: conn, lock: lock, relations: map[uint32]relation{}}
	return s.run(ctx)
}

// prepareSlot makes sure the slot exists and is usable. A slot Postgres invalidated (it fell past
// max_slot_wal_keep_size) has lost changes: it is dropped and made anew, which retires everything.
func (f *Follower) prepareSlot(ctx context.Context, lock *pgx.Conn) error {
	var status string
	err := lock.QueryRow(ctx, "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()", f.opts.Slot).Scan(&status)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return fmt.Errorf("looking up slot %s: %w", f.opts.Slot, err)
	case status == "lost":
		f.opts.Logger.Warn("replication slot was invalidated by Postgres (it held more WAL than max_slot_wal_keep_size); making it anew and retiring every cached view", "slot", f.opts.Slot)
		if _, err := lock.Exec(ctx, "SELECT pg_drop_replication_slot($1)", f.opts.Slot); err != nil {
			return fmt.Errorf("dropping the invalidated slot: %w", err)
		}
	default:
		return nil
	}
	// Recorded before the slot exists: a follower that dies after making it leaves synced false,
	// and the next one retires everything.
	_, err = lock.Exec(ctx, `INSERT INTO cache_replication_slots (slot_name, synced) VALUES ($1, false)
		ON CONFLICT (slot_name) DO UPDATE SET synced = false, confirmed_lsn = NULL, created_at = now()`, f.opts.Slot)
	if err != nil {
		return fmt.Errorf("recording the new slot: %w", err)
	}
	// pg_create_logical_replication_slot waits for the transactions running now to end, as a
	// slot's starting point must be consistent.
	_, err = lock.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", f.opts.Slot)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42710" { // another replica made it meanwhile
		return nil
	}
	if errors.As(err, &pgErr) && pgErr.Code == "53400" { // max_replication_slots reached
		return errUnavailable{fmt.Sprintf("Postgres has no free replication slot for %s: raise max_replication_slots, or drop a slot nobody uses", f.opts.Slot)}
	}
	if err != nil {
		return fmt.Errorf("creating slot %s: %w", f.opts.Slot, err)
	}
	f.opts.Logger.Info("replication slot created", "slot", f.opts.Slot, "publication", f.opts.Publication)
	return nil
}

// retireAllIfNew retires every cached view once after the slot was made: changes committed before
// it existed were never streamed.
func (f *Follower) retireAllIfNew(ctx context.Context, lock *pgx.Conn) error {
	var synced bool
	err := lock.QueryRow(ctx, "SELECT synced FROM cache_replication_slots WHERE slot_name = $1", f.opts.Slot).Scan(&synced)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("reading the slot's record: %w", err)
	}
	if synced {
		return nil
	}
	keys, spaces := f.opts.Views.All()
	ctx, span := f.tracer.Start(ctx, "replication.retire_all", trace.WithNewRoot())
	defer span.End()
	var errs []error
	if len(keys) > 0 {
		errs = append(errs, f.opts.Retirer.Invalidate(ctx, keys...))
	}
	for _, sp := range spaces {
		errs = append(errs, f.opts.Retirer.InvalidateSpace(ctx, sp))
	}
	if err := errors.Join(errs...); err != nil {
		span.RecordError(err)
		return fmt.Errorf("retiring every cached view for a new slot: %w", err)
	}
	f.fullRuns.Add(1)
	_, err = lock.Exec(ctx, `INSERT INTO cache_replication_slots (slot_name, synced) VALUES ($1, true)
		ON CONFLICT (slot_name) DO UPDATE SET synced = true`, f.opts.Slot)
	if err != nil {
		return fmt.Errorf("recording the slot as synced: %w", err)
	}
	f.opts.Logger.Info("retired every cached view: the replication slot is new, changes made before it were not streamed", "slot", f.opts.Slot)
	return nil
}

// relation is a table as the stream described it.
type relation struct {
	table   Table
	columns []string
}

// stream is one replication session.
type stream struct {
	f         *Follower
	conn      *pgconn.PgConn
	lock      *pgx.Conn
	relations map[uint32]relation
	recorded  pglogrepl.LSN // the position last recorded in cache_replication_slots

	inTx       bool
	commitTime time.Time
	keys       map[cache.Key]struct{}
	done       map[cache.Key]struct{} // retired in this transaction already
	spaces     map[string]struct{}    // retired whole in this transaction
	everything bool                   // the transaction was too large: every view was retired
	rows       int
	tables     map[string]struct{}
}

func (s *stream) run(ctx context.Context) error {
	f := s.f
	nextStatus := time.Now()
	for {
		if !time.Now().Before(nextStatus) {
			if err := s.confirm(ctx); err != nil {
				return err
			}
			// The leader lock lives on its own session: if that session is gone, another replica
			// may be taking over.
			if err := lockAlive(ctx, s.lock); err != nil {
				return fmt.Errorf("the leader lock's session is gone: %w", err)
			}
			nextStatus = time.Now().Add(f.opts.StatusInterval)
		}
		rctx, cancel := context.WithDeadline(ctx, nextStatus)
		msg, err := s.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return s.confirmOnExit()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receiving: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return err
				}
				f.walEnd.Store(uint64(ka.ServerWALEnd))
				// Everything before a keepalive was sent before it: with no transaction half-read,
				// every change up to ServerWALEnd is retired.
				if !s.inTx && uint64(ka.ServerWALEnd) > f.applied.Load() {
					f.applied.Store(uint64(ka.ServerWALEnd))
				}
				if ka.ReplyRequested {
					nextStatus = time.Time{}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return err
				}
				f.walEnd.Store(uint64(xld.ServerWALEnd))
				if err := s.handle(ctx, xld.WALData); err != nil {
					return err
				}
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		default:
			return fmt.Errorf("unexpected message %T on the replication stream", msg)
		}
	}
}

// confirm tells Postgres the position up to which everything is retired: it may free the WAL
// before it, and a restarted stream starts there.
func (s *stream) confirm(ctx context.Context) error {
	lsn := pglogrepl.LSN(s.f.applied.Load())
	if lsn > s.recorded { // recorded first: the slot never confirms more than the record says
		_, err := s.lock.Exec(ctx, `UPDATE cache_replication_slots SET confirmed_lsn = $2::pg_lsn
			WHERE slot_name = $1 AND (confirmed_lsn IS NULL OR confirmed_lsn < $2::pg_lsn)`, s.f.opts.Slot, lsn.String())
		if err != nil {
			return fmt.Errorf("recording the position %s: %w", lsn, err)
		}
		s.recorded = lsn
	}
	if err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: lsn}); err != nil {
		return fmt.Errorf("confirming %s: %w", lsn, err)
	}
	return nil
}

func (s *stream) confirmOnExit() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.confirm(ctx)
	return nil
}

// handle applies one pgoutput message.
func (s *stream) handle(ctx context.Context, data []byte) error {
	m, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("parsing a pgoutput message: %w", err)
	}
	f := s.f
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		cols := make([]string, len(m.Columns))
		for i, c := range m.Columns {
			cols[i] = c.Name
		}
		s.relations[m.RelationID] = relation{table: Table{Schema: m.Namespace, Name: m.RelationName}, columns: cols}
	case *pglogrepl.BeginMessage:
		s.inTx, s.commitTime, s.rows = true, m.CommitTime, 0
		s.keys, s.done, s.tables, s.spaces = map[cache.Key]struct{}{}, map[cache.Key]struct{}{}, map[string]struct{}{}, map[string]struct{}{}
		s.everything = false
		f.oldest.CompareAndSwap(0, m.CommitTime.UnixNano())
	case *pglogrepl.InsertMessage:
		return s.row(ctx, m.RelationID, "insert", m.Tuple)
	case *pglogrepl.UpdateMessage:
		if m.OldTuple != nil {
			if err := s.row(ctx, m.RelationID, "update", m.OldTuple); err != nil {
				return err
			}
		}
		return s.row(ctx, m.RelationID, "update", m.NewTuple)
	case *pglogrepl.DeleteMessage:
		return s.row(ctx, m.RelationID, "delete", m.OldTuple)
	case *pglogrepl.TruncateMessage:
		var keys []cache.Key
		var spaces []string
		for _, id := range m.RelationIDs {
			rel, ok := s.relations[id]
			if !ok {
				return fmt.Errorf("truncate of relation %d that the stream never described", id)
			}
			k, sp := f.opts.Views.Truncated(rel.table)
			keys, spaces = append(keys, k...), append(spaces, sp...)
			s.tables[rel.table.String()] = struct{}{}
			f.metrics.changes(ctx, rel.table, "truncate")
		}
		for _, sp := range spaces {
			if _, done := s.spaces[sp]; done {
				continue
			}
			s.spaces[sp] = struct{}{}
			if err := s.retire(ctx, func(ctx context.Context) error { return f.opts.Retirer.InvalidateSpace(ctx, sp) }); err != nil {
				return fmt.Errorf("retiring space %s after a truncate: %w", sp, err)
			}
		}
		for _, k := range keys {
			s.keys[k] = struct{}{}
		}
	case *pglogrepl.CommitMessage:
		if err := s.flush(ctx, pglogrepl.LSN(m.TransactionEndLSN)); err != nil {
			return err
		}
		s.inTx = false
		f.applied.Store(uint64(m.TransactionEndLSN))
		f.oldest.Store(0)
		f.metrics.latency.Record(ctx, time.Since(m.CommitTime).Seconds())
	}
	return nil
}

// row maps one changed row to its keys and retires a batch when it is full.
func (s *stream) row(ctx context.Context, relID uint32, op string, tuple *pglogrepl.TupleData) error {
	rel, ok := s.relations[relID]
	if !ok {
		return fmt.Errorf("change to relation %d that the stream never described", relID)
	}
	cols := map[string]string{}
	if tuple != nil {
		for i, c := range tuple.Columns {
			if i < len(rel.columns) && c.DataType == pglogrepl.TupleDataTypeText {
				cols[rel.columns[i]] = string(c.Data)
			}
		}
	}
	s.rows++
	s.tables[rel.table.String()] = struct{}{}
	s.f.metrics.changes(ctx, rel.table, op)
	if s.everything {
		return nil
	}
	keys, spaces := s.f.opts.Views.RowChanged(rel.table, cols)
	for _, sp := range spaces {
		if _, done := s.spaces[sp]; done { // once per transaction: the stream holds only committed ones
			continue
		}
		s.spaces[sp] = struct{}{}
		if err := s.retire(ctx, func(ctx context.Context) error { return s.f.opts.Retirer.InvalidateSpace(ctx, sp) }); err != nil {
			return fmt.Errorf("retiring space %s for a change to %s that names no row: %w", sp, rel.table, err)
		}
	}
	for _, k := range keys {
		if _, done := s.done[k]; !done {
			s.keys[k] = struct{}{}
		}
	}
	if len(s.keys) >= s.f.opts.BatchKeys {
		if err := s.flush(ctx, 0); err != nil {
			return err
		}
	}
	// The keys retired are remembered for the transaction (the list is in every row's views);
	// a transaction so large that this costs memory retires every view instead, once.
	if len(s.done) > maxTrackedKeys {
		return s.retireEverything(ctx)
	}
	return nil
}

// flush retires the keys gathered so far in one round trip, under a span of its own.
func (s *stream) flush(ctx context.Context, lsn pglogrepl.LSN) error {
	if len(s.keys) == 0 {
		return nil
	}
	keys := make([]cache.Key, 0, len(s.keys))
	for k := range s.keys {
		keys = append(keys, k)
	}
	tables := make([]string, 0, len(s.tables))
	for t := range s.tables {
		tables = append(tables, t)
	}
	ctx, span := s.f.tracer.Start(ctx, "replication.apply", trace.WithNewRoot(), trace.WithAttributes(
		attrTables.String(strings.Join(tables, ",")), attrRows.Int(s.rows), attrKeys.Int(len(keys)),
		attrLSN.String(lsn.String()), attrCommitTime.String(s.commitTime.UTC().Format(time.RFC3339Nano))))
	defer span.End()
	if err := s.retire(ctx, func(ctx context.Context) error { return s.f.opts.Retirer.Invalidate(ctx, keys...) }); err != nil {
		span.RecordError(err)
		return fmt.Errorf("retiring %d keys (%s): %w", len(keys), strings.Join(tables, ","), err)
	}
	s.f.metrics.retired.Add(ctx, int64(len(keys)))
	for _, k := range keys {
		s.done[k] = struct{}{}
	}
	clear(s.keys)
	s.rows = 0
	return nil
}

// retire runs a retirement until Redis takes it. The stream is held meanwhile rather than
// dropped and started again, which would make Postgres decode the whole backlog anew at every
// attempt: nothing past the change is confirmed, status updates keep the walsender from timing
// out, and the attempts come at most a second apart. So once Redis answers again, the backlog
// is retired within about a second, while the replicas that saw Redis fail keep bypassing it
// for CACHE_BREAKER_COOLDOWN (5 s).
func (s *stream) retire(ctx context.Context, fn func(context.Context) error) error {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			if attempt > 1 {
				s.f.opts.Logger.Info("replication follower retired again after Redis came back", "attempts", attempt)
			}
			return nil
		}
		if attempt == 1 {
			s.f.opts.Logger.Warn("replication follower cannot retire; holding the stream and retrying until Redis takes it (nothing past it is confirmed)",
				"err", err, "confirmed_lsn", s.f.Applied().String())
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
		if err := s.confirm(ctx); err != nil {
			return err
		}
		if perr := lockAlive(ctx, s.lock); perr != nil {
			return fmt.Errorf("the leader lock's session is gone while retrying: %w (last: %v)", perr, err)
		}
	}
}

// maxTrackedKeys bounds the keys a transaction retires one by one.
const maxTrackedKeys = 100_000

// retireEverything retires every view once, for the rest of a transaction too large to track.
func (s *stream) retireEverything(ctx context.Context) error {
	keys, spaces := s.f.opts.Views.All()
	for _, sp := range spaces {
		if err := s.retire(ctx, func(ctx context.Context) error { return s.f.opts.Retirer.InvalidateSpace(ctx, sp) }); err != nil {
			return fmt.Errorf("retiring space %s for a large transaction: %w", sp, err)
		}
	}
	if err := s.retire(ctx, func(ctx context.Context) error { return s.f.opts.Retirer.Invalidate(ctx, keys...) }); err != nil {
		return fmt.Errorf("retiring every view for a large transaction: %w", err)
	}
	s.everything = true
	clear(s.keys)
	clear(s.done)
	return nil
}
