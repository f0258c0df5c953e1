package testenv_test

import (
	"context"
	neturl "net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/cacheside/cacheside/app/internal/testenv"
)

func TestATestDatabaseIsDroppedWithTheReplicationSlotsInIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := testenv.StartPostgres(t)
	admin, err := pgx.Connect(ctx, srv.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)

	var level string
	if err := admin.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != "logical" {
		t.Fatalf("wal_level = %s, want logical: the service could not create its replication slot", level)
	}

	var name string
	var stream *pgconn.PgConn
	defer func() {
		if stream != nil {
			stream.Close(context.Background())
		}
	}()
	t.Run("a database with an idle slot and one a walsender streams from", func(t *testing.T) {
		dbURL := testenv.CreateDatabase(t, srv.AdminURL())
		u, err := neturl.Parse(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		name = strings.TrimPrefix(u.Path, "/")
		if _, err := testenv.Pool(t, dbURL).Exec(ctx, "SELECT pg_create_logical_replication_slot('idle', 'pgoutput')"); err != nil {
			t.Fatal(err)
		}
		// Still streaming when the subtest's cleanups run, as from a service killed mid-test:
		// DROP DATABASE refuses while a slot is active, even WITH (FORCE).
		stream = startReplication(ctx, t, dbURL, "streaming")

		var active, idle int
		err = admin.QueryRow(ctx, "SELECT count(*) FILTER (WHERE active), count(*) FILTER (WHERE NOT active) FROM pg_replication_slots WHERE database = $1", name).Scan(&active, &idle)
		if err != nil {
			t.Fatal(err)
		}
		if active != 1 || idle != 1 {
			t.Fatalf("%d active and %d idle slots, want one of each", active, idle)
		}
	})

	var databases, slots int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&databases); err != nil {
		t.Fatal(err)
	}
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE database = $1", name).Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if databases != 0 || slots != 0 {
		t.Errorf("after the test: %d databases named %s and %d slots in it, want none", databases, name, slots)
	}
}

// startReplication creates a logical slot on a replication connection and streams from it, as
// the service's follower does, so the slot is active until the connection ends.
func startReplication(ctx context.Context, t *testing.T, dbURL, slot string) *pgconn.PgConn {
	t.Helper()
	conn, err := pgconn.Connect(ctx, dbURL+"&replication=database")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+slot+" LOGICAL pgoutput").ReadAll(); err != nil {
		t.Fatal(err)
	}
	// START_REPLICATION answers with CopyBothResponse, which Exec does not expect: speak the
	// protocol directly.
	conn.Frontend().Send(&pgproto3.Query{String: "START_REPLICATION SLOT " + slot + " LOGICAL 0/0 (proto_version '1', publication_names 'cacheside')"})
	if err := conn.Frontend().Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return conn
		case *pgproto3.ErrorResponse:
			t.Fatalf("START_REPLICATION: %s", msg.Message)
		}
	}
}
