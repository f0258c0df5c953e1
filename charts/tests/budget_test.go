package chart_test

import (
	"testing"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
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
