package chart_test

import (
	"strconv"
	"testing"

	"github.com/cacheside/cacheside/app/config"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// With GOMEMLIMIT near the memory limit the Go heap grows towards it and is rarely returned, so an HPA
// on memory scales up under load and seldom back down: the examples scale on CPU alone.
func TestTheExamplesAutoscaleOnCPUNotMemory(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		t.Run(file, func(t *testing.T) {
			for _, hpa := range all[*autoscalingv2.HorizontalPodAutoscaler](render(t, file), nil) {
				var names []corev1.ResourceName
				for _, m := range hpa.Spec.Metrics {
					if m.Resource != nil {
						names = append(names, m.Resource.Name)
					}
				}
				if len(names) != 1 || names[0] != corev1.ResourceCPU {
					t.Errorf("HPA %s scales on %v, want cpu alone", hpa.Name, names)
				}
			}
		})
	}
}

// Postgres' own defaults for what the chart does not set.
const (
	postgresDefaultMaxConnections = 100
	superuserReservedConnections  = 3 // kept free for an operator's psql
)

// The most connections a release opens to the bundled Postgres must fit in its max_connections, or the
// last pods to scale up (or a migration, or a seed run) fail to connect: every serving pod the Deployment
// can run at once (the HPA's maxReplicas, or replicaCount, plus the rollout's surge) with its pool
// (DATABASE_MAX_CONNS) and, when it follows the replication stream, the follower's lock connection (the
// stream itself is a walsender, which since Postgres 12 does not count against max_connections); the
// migration Job's pool; a `cacheside seed` run's pool; the superuser's reserve.
func TestTheConnectionBudgetFitsTheBundledPostgres(t *testing.T) {
	type budgetCase struct {
		name, file string
		set        []string
	}
	cases := []budgetCase{
		{"defaults", "", nil},
		{"defaults with the HPA on", "", []string{"autoscaling.enabled=true"}},
		{"the kind cluster's values", "../../k8s/values/kind.yaml", nil},
	}
	for _, file := range ciValuesFiles(t) {
		cases = append(cases, budgetCase{file, file, nil}, budgetCase{file + " with the HPA on", file, []string{"autoscaling.enabled=true"}})
	}
	defaults := map[string]string{}
	for _, v := range config.Vars() {
		defaults[v.Name] = v.Default
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := render(t, tc.file, tc.set...)
			sets := all(m, func(s *appsv1.StatefulSet) bool { return component("database")(s) })
			if len(sets) == 0 {
				t.Skip("an external Postgres: its max_connections is the operator's (the chart README, Connection budget)")
			}
			maxConnections := postgresDefaultMaxConnections
			if v, ok := postgresSettings(t, sets[0])["max_connections"]; ok {
				maxConnections = mustAtoi(t, v)
			}

			setting := func(name string) string {
				if v, ok := appConfigMap(t, m).Data[name]; ok {
					return v
				}
				return defaults[name]
			}
			poolSize := mustAtoi(t, setting("DATABASE_MAX_CONNS"))
			perPod := poolSize
			if follows, _ := strconv.ParseBool(setting("REPLICATION_ENABLED")); follows {
				perPod++
			}

			d := appDeployment(t, m)
			pods := 0
			if d.Spec.Replicas != nil {
				pods = int(*d.Spec.Replicas)
			}
			for _, hpa := range all[*autoscalingv2.HorizontalPodAutoscaler](m, nil) {
				pods = int(hpa.Spec.MaxReplicas)
			}
			surge := 0
			if ru := d.Spec.Strategy.RollingUpdate; ru != nil && ru.MaxSurge != nil {
				s, err := intstr.GetScaledValueFromIntOrPercent(ru.MaxSurge, pods, true)
				if err != nil {
					t.Fatal(err)
				}
				surge = s
			}
			budget := (pods+surge)*perPod + poolSize /* migration */ + poolSize /* seed */ + superuserReservedConnections
			t.Logf("(%d pods + %d surge) × %d + %d migration + %d seed + %d reserved = %d of max_connections %d",
				pods, surge, perPod, poolSize, poolSize, superuserReservedConnections, budget, maxConnections)
			if budget > maxConnections {
				t.Errorf("the release may open %d connections, more than the bundled Postgres' max_connections (%d)", budget, maxConnections)
			}
		})
	}
}

func TestTheBundledPostgresTakesFurtherSettings(t *testing.T) {
	m := render(t, "", "postgresql.maxConnections=250", "postgresql.extraConfig.shared_buffers=256MB",
		"postgresql.extraConfig.log_min_duration_statement=500")
	sts := only(t, m, func(s *appsv1.StatefulSet) bool { return component("database")(s) })
	settings := postgresSettings(t, sts)
	want := map[string]string{"max_connections": "250", "shared_buffers": "256MB", "log_min_duration_statement": "500"}
	for name, v := range want {
		if settings[name] != v {
			t.Errorf("%s = %q, want %q", name, settings[name], v)
		}
	}
	t.Run("a setting in extraConfig overrides the chart's, as the last -c wins in Postgres", func(t *testing.T) {
		m := render(t, "", "postgresql.extraConfig.max_connections=300")
		sts := only(t, m, func(s *appsv1.StatefulSet) bool { return component("database")(s) })
		if got := postgresSettings(t, sts)["max_connections"]; got != "300" {
			t.Errorf("max_connections = %q, want 300", got)
		}
	})
}
