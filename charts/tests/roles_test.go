package chart_test

import (
	"encoding/base64"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
)

// dbRole returns the role the app pods' db-role init container keeps in step, and its script.
func dbRole(spec corev1.PodSpec) (role, script string, ok bool) {
	i := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == "db-role" })
	if i < 0 {
		return "", "", false
	}
	c := spec.InitContainers[i]
	for _, e := range c.Env {
		if e.Name == "APP_ROLE" {
			role = e.Value
		}
	}
	return role, strings.Join(slices.Concat(c.Command, c.Args), "\n"), true
}

// dbCredentials is the role of a container's DATABASE_URL and where its password comes from.
type dbCredentials struct{ User, Secret, Key string }

func databaseCredentials(t *testing.T, c corev1.Container) dbCredentials {
	t.Helper()
	var got dbCredentials
	for _, e := range c.Env {
		switch {
		case e.Name == "DATABASE_PASSWORD" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			got.Secret, got.Key = e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key
		case e.Name == "DATABASE_URL":
			u, err := url.Parse(varRef.ReplaceAllString(e.Value, "x"))
			if err != nil {
				t.Fatal(err)
			}
			got.User = u.User.Username()
		}
	}
	return got
}

func envSecretRef(c corev1.Container, name string) dbCredentials {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			return dbCredentials{Secret: e.ValueFrom.SecretKeyRef.Name, Key: e.ValueFrom.SecretKeyRef.Key}
		}
	}
	return dbCredentials{}
}

// The bundled Postgres' POSTGRES_USER is the cluster's superuser. Only the migrations need to own the schema;
// the server gets a role that may read and write rows and follow the database by logical replication, nothing
// more, so a bug or an injection in the server cannot drop tables or read other databases.
func TestTheAppConnectsAsAnUnprivilegedRoleAndMigratesAsTheOwner(t *testing.T) {
	for _, tc := range []struct {
		file, secret, ownerKey, appKey, owner string
	}{
		{"default-values.yaml", "demo-postgresql", "password", "app-password", "cacheside"},
		{"bundled-existing-secrets-values.yaml", "db-password", "pg-password", "app-password", "samples"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			m := renderUpgrade(t, tc.file)
			spec := appDeployment(t, m).Spec.Template.Spec
			server := databaseCredentials(t, container(t, spec, "cacheside"))
			if diff := cmp.Diff(dbCredentials{"cacheside_app", tc.secret, tc.appKey}, server); diff != "" {
				t.Errorf("the server's credentials (-want +got):\n%s", diff)
			}
			owner := dbCredentials{tc.owner, tc.secret, tc.ownerKey}
			if c, ok := migrateInitContainer(spec); !ok {
				t.Error("no migrate init container")
			} else if diff := cmp.Diff(owner, databaseCredentials(t, c)); diff != "" {
				t.Errorf("the migrate init container's credentials (-want +got):\n%s", diff)
			}
			job := container(t, migrationJob(t, m).Spec.Template.Spec, "migrate")
			if diff := cmp.Diff(owner, databaseCredentials(t, job)); diff != "" {
				t.Errorf("the migration Job's credentials (-want +got):\n%s", diff)
			}

			role, script, ok := dbRole(spec)
			if !ok {
				t.Fatal("no db-role init container")
			}
			if role != server.User {
				t.Errorf("db-role keeps %q in step, the server connects as %q", role, server.User)
			}
			roleC := spec.InitContainers[slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == "db-role" })]
			// The very key the server reads, so the role's password and the server's cannot drift apart.
			if got := envSecretRef(roleC, "APP_PASSWORD"); got != (dbCredentials{Secret: server.Secret, Key: server.Key}) {
				t.Errorf("db-role sets the password from %v, the server reads %v", got, server)
			}
			if got := envSecretRef(roleC, "PGPASSWORD"); got != (dbCredentials{Secret: owner.Secret, Key: owner.Key}) {
				t.Errorf("db-role logs in with %v, want the owner's %v", got, owner)
			}
			for _, want := range []string{
				"NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS REPLICATION",
				"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public",
				"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public",
				`ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES`,
				`ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES`,
				"ON_ERROR_STOP=1", "pg_isready",
			} {
				if !strings.Contains(script, want) {
					t.Errorf("db-role's script lacks %q", want)
				}
			}
			for _, forbidden := range []string{"GRANT ALL", "SUPERUSER REPLICATION", " CREATE ON", "OWNER TO"} {
				if strings.Contains(script, forbidden) {
					t.Errorf("db-role's script grants too much: %q", forbidden)
				}
			}
			names := []string{}
			for _, c := range spec.InitContainers {
				names = append(names, c.Name)
			}
			if diff := cmp.Diff([]string{"db-role", "migrate"}, names); diff != "" {
				t.Errorf("init containers (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("postgresql.auth.appUsername empty: the server connects as the owner, as before", func(t *testing.T) {
		spec := appDeployment(t, render(t, "", "postgresql.auth.appUsername=")).Spec.Template.Spec
		if got := databaseCredentials(t, container(t, spec, "cacheside")); got != (dbCredentials{"cacheside", "demo-postgresql", "password"}) {
			t.Errorf("the server's credentials: %v", got)
		}
		if _, _, ok := dbRole(spec); ok {
			t.Error("db-role still rendered")
		}
	})

	t.Run("external databases are left alone", func(t *testing.T) {
		for _, file := range []string{"external-values.yaml", "existing-secrets-values.yaml"} {
			if _, _, ok := dbRole(appDeployment(t, render(t, file)).Spec.Template.Spec); ok {
				t.Errorf("%s: db-role rendered for an external database", file)
			}
		}
	})
}

func TestTheAppRolePasswordIsKeptLikeTheOwners(t *testing.T) {
	appPassword := func(t *testing.T, m manifest) string {
		t.Helper()
		return string(only(t, m, func(s *corev1.Secret) bool { return s.Name == "demo-postgresql" }).Data["app-password"])
	}
	t.Run("a first install generates it", func(t *testing.T) {
		if got := appPassword(t, render(t, "")); !generated.MatchString(got) {
			t.Errorf("app-password %q is not 32 generated alphanumerics", got)
		}
	})
	t.Run("an upgrade keeps the stored one, and a release older than the role gets one", func(t *testing.T) {
		for stored, want := range map[string]string{"stored-app": "stored-app", "": ""} {
			lookup := func(apiVersion, kind, ns, name string) (map[string]any, error) {
				if kind != "Secret" || name != "demo-postgresql" {
					return map[string]any{}, nil
				}
				data := map[string]any{"password": base64.StdEncoding.EncodeToString([]byte("stored-owner"))}
				if stored != "" {
					data["app-password"] = base64.StdEncoding.EncodeToString([]byte(stored))
				}
				return map[string]any{"data": data}, nil
			}
			m, err := renderWith(renderOptions{upgrade: true, lookup: lookup}, "", "redis.auth.password=r", "auth.tokens={"+apiToken+"}")
			if err != nil {
				t.Fatal(err)
			}
			got := appPassword(t, m)
			if want != "" && got != want {
				t.Errorf("app-password %q, want the stored %q", got, want)
			}
			if want == "" && !generated.MatchString(got) {
				t.Errorf("app-password %q, want a generated one for a release whose Secret has none", got)
			}
		}
	})
	t.Run("with only the owner's password given, it is derived: stable without the cluster, and not the owner's", func(t *testing.T) {
		set := []string{"postgresql.auth.password=owner-secret", "redis.auth.password=r", "auth.tokens={" + apiToken + "}"}
		first, err := renderWith(renderOptions{offline: true}, "", set...)
		if err != nil {
			t.Fatal(err)
		}
		second, err := renderWith(renderOptions{offline: true}, "", set...)
		if err != nil {
			t.Fatal(err)
		}
		a, b := appPassword(t, first), appPassword(t, second)
		if a != b || a == "" || strings.Contains(a, "owner-secret") {
			t.Errorf("app-password %q then %q", a, b)
		}
	})
}

// A server that migrates itself (DATABASE_MIGRATE_ON_START, as the Tiltfile's values do) needs the owner's
// rights: the app role may not create tables.
func TestAServerThatMigratesItselfConnectsAsTheOwner(t *testing.T) {
	for _, m := range []manifest{
		render(t, "", "config.DATABASE_MIGRATE_ON_START=true"),
		render(t, "../../k8s/values/kind.yaml", "config.DATABASE_MIGRATE_ON_START=true"),
	} {
		spec := appDeployment(t, m).Spec.Template.Spec
		if got := databaseCredentials(t, container(t, spec, "cacheside")); got.User != "cacheside" || got.Key != "password" {
			t.Errorf("the server migrates as %v, want the owner cacheside with key password", got)
		}
		if _, _, ok := dbRole(spec); ok {
			t.Error("db-role rendered for a role nobody uses")
		}
	}
}
