package chart_test

import (
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cacheside/cacheside/app/config"
	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
)

// Invalidation by logical replication (the chart README): the service follows its database through a
// replication slot, which the bundled Postgres must allow, and its REPLICATION_* settings must reach it.

// postgresSettings returns the `-c name=value` arguments of the bundled Postgres' container.
func postgresSettings(t *testing.T, sts *appsv1.StatefulSet) map[string]string {
	t.Helper()
	c := container(t, sts.Spec.Template.Spec, "postgres")
	settings := map[string]string{}
	for i := 0; i < len(c.Args); i++ {
		if c.Args[i] != "-c" || i+1 == len(c.Args) {
			t.Fatalf("postgres args %q: want only -c name=value pairs", c.Args)
		}
		i++
		name, value, ok := strings.Cut(c.Args[i], "=")
		if !ok {
			t.Fatalf("postgres arg -c %q is not name=value", c.Args[i])
		}
		settings[name] = value
	}
	return settings
}

// pgBytes parses a Postgres memory setting whose unit is given (kB, MB, GB, TB: powers of 1024).
func pgBytes(t *testing.T, v string) int64 {
	t.Helper()
	for i, unit := range []string{"kB", "MB", "GB", "TB"} {
		if n, ok := strings.CutSuffix(v, unit); ok {
			k, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				t.Fatalf("%q: %v", v, err)
			}
			return k << (10 * (i + 1))
		}
	}
	t.Fatalf("%q has no unit", v)
	return 0
}

func TestTheBundledPostgresLetsTheServiceFollowItThroughALogicalSlot(t *testing.T) {
	// The kind cluster's values give Postgres a small volume: the slot's WAL must still fit in it.
	for _, file := range append(ciValuesFiles(t), "../../k8s/values/kind.yaml") {
		m := render(t, file)
		name := strings.TrimPrefix(file, "../../")
		sets := all(m, func(s *appsv1.StatefulSet) bool { return component("database")(s) })
		if len(sets) == 0 {
			continue // an external Postgres: the README says what to switch on
		}
		sts := sets[0]
		settings := postgresSettings(t, sts)

		t.Run(name+": wal_level is logical, with slots and walsenders to spare", func(t *testing.T) {
			if got := settings["wal_level"]; got != "logical" {
				t.Errorf("wal_level = %q, want logical: the service could not create its slot", got)
			}
			for _, name := range []string{"max_replication_slots", "max_wal_senders"} {
				if n, err := strconv.Atoi(settings[name]); err != nil || n < 1 {
					t.Errorf("%s = %q, want at least 1", name, settings[name])
				}
			}
		})

		t.Run(name+": a slot nobody reads cannot fill the volume", func(t *testing.T) {
			keep := settings["max_slot_wal_keep_size"]
			if keep == "" || keep == "-1" {
				t.Fatalf("max_slot_wal_keep_size = %q: a slot left behind would keep WAL until the disk is full", keep)
			}
			for _, claim := range sts.Spec.VolumeClaimTemplates {
				size := claim.Spec.Resources.Requests.Storage().Value()
				if pgBytes(t, keep) > size/2 {
					t.Errorf("max_slot_wal_keep_size = %s, more than half the %s volume %s", keep, claim.Spec.Resources.Requests.Storage(), claim.Name)
				}
			}
		})

		t.Run(name+": the service connects as a role that may replicate", func(t *testing.T) {
			// The image makes POSTGRES_USER superuser; the app's own role gets REPLICATION from db-role.
			var user string
			for _, e := range container(t, sts.Spec.Template.Spec, "postgres").Env {
				if e.Name == "POSTGRES_USER" {
					user = e.Value
				}
			}
			if role, script, ok := dbRole(appDeployment(t, m).Spec.Template.Spec); ok {
				if !strings.Contains(script, " REPLICATION ") {
					t.Errorf("db-role does not give %s REPLICATION:\n%s", role, script)
				}
				user = role
			}
			for _, e := range container(t, appDeployment(t, m).Spec.Template.Spec, "cacheside").Env {
				if e.Name != "DATABASE_URL" {
					continue
				}
				u, err := url.Parse(varRef.ReplaceAllString(e.Value, "x"))
				if err != nil {
					t.Fatal(err)
				}
				if u.User.Username() != user {
					t.Errorf("DATABASE_URL's role is %q, the role that may replicate %q", u.User.Username(), user)
				}
			}
		})
	}
}

func TestReplicationSettingsReachTheServiceAsItParsesThem(t *testing.T) {
	set := map[string]string{
		"REPLICATION_ENABLED":         "false",
		"REPLICATION_SLOT":            "cacheside_blue",
		"REPLICATION_PUBLICATION":     "cacheside_views",
		"REPLICATION_STATUS_INTERVAL": "30s",
	}
	var names []string
	for _, v := range config.Vars() {
		if strings.HasPrefix(v.Name, "REPLICATION_") {
			names = append(names, v.Name)
		}
	}
	if len(names) != len(set) {
		t.Fatalf("the service reads %v: set each of them here", names)
	}
	var args []string
	for _, name := range names {
		args = append(args, fmt.Sprintf("config.%s=%s", name, set[name]))
	}
	m := render(t, "", args...)
	for owner, c := range appContainers(t, m) {
		t.Run("the "+owner+" passes every REPLICATION_* setting of config", func(t *testing.T) {
			env := map[string]string{}
			if len(c.EnvFrom) > 0 {
				for k, v := range appConfigMap(t, m).Data {
					env[k] = v
				}
			}
			for _, e := range c.Env {
				switch {
				case e.ValueFrom == nil:
					env[e.Name] = e.Value
				case e.Name == "API_TOKENS": // from a Secret: any well-formed token, as the kubelet would pass one
					env[e.Name] = apiToken
				}
			}
			// The server loads as serve does; the migration containers as migrate does (no tokens).
			cfg := load(t, env, owner == "Deployment")
			got := map[string]string{
				"REPLICATION_ENABLED":         strconv.FormatBool(cfg.ReplicationEnabled),
				"REPLICATION_SLOT":            cfg.ReplicationSlot,
				"REPLICATION_PUBLICATION":     cfg.ReplicationPublication,
				"REPLICATION_STATUS_INTERVAL": cfg.ReplicationStatusInterval.String(),
			}
			if diff := cmp.Diff(set, got); diff != "" {
				t.Errorf("what the service loads from the rendered env (-set +loaded):\n%s", diff)
			}
		})
	}
}

// load runs the service's config.Load on env (only env: the test's own environment is cleared of the
// service's variables, and restored afterwards).
func load(t *testing.T, env map[string]string, serving bool) config.Config {
	t.Helper()
	for _, v := range config.Vars() {
		t.Setenv(v.Name, "")
		if err := os.Unsetenv(v.Name); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	loadConfig := config.LoadForCommand
	if serving {
		loadConfig = config.Load
	}
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestTheReplicationSchemaRejectsWhatPostgresWould(t *testing.T) {
	cases := []struct {
		name    string
		set     []string
		wantErr string // empty: must render
	}{
		{"an empty slot name (the service's default) is accepted", []string{"config.REPLICATION_SLOT="}, ""},
		{"a slot name Postgres refuses is rejected", []string{"config.REPLICATION_SLOT=Blue-Slot"}, "/config/REPLICATION_SLOT"},
		{"a publication with a space is rejected", []string{"config.REPLICATION_PUBLICATION=cache side"}, "/config/REPLICATION_PUBLICATION"},
		{"a status interval without a unit is rejected", []string{"config.REPLICATION_STATUS_INTERVAL=10"}, "/config/REPLICATION_STATUS_INTERVAL"},
		{"an unlimited max_slot_wal_keep_size (-1) is rejected", []string{"postgresql.logicalReplication.maxSlotWalKeepSize=-1"}, "/logicalReplication/maxSlotWalKeepSize"},
		{"a max_slot_wal_keep_size without a unit is rejected", []string{"postgresql.logicalReplication.maxSlotWalKeepSize=2048"}, "/logicalReplication/maxSlotWalKeepSize"},
		{"a max_slot_wal_keep_size in a unit Postgres does not know is rejected", []string{"postgresql.logicalReplication.maxSlotWalKeepSize=2Gi"}, "/logicalReplication/maxSlotWalKeepSize"},
		{"no replication slots is rejected", []string{"postgresql.logicalReplication.maxReplicationSlots=0"}, "/logicalReplication/maxReplicationSlots"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderWith(renderOptions{}, "", tc.set...)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("render failed: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("render succeeded, want an error mentioning %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}
}
