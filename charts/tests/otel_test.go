package chart_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/cacheside/cacheside/app/platform/telemetry"
)

// The schema's otel.protocol must offer only what the service's exporter starts with: a value the
// schema accepts but the exporter rejects renders fine and then crash-loops every pod.
func TestEveryOTLPProtocolTheSchemaAcceptsStartsTheServicesExporter(t *testing.T) {
	var schema struct {
		Properties struct {
			OTel struct {
				Properties struct {
					Protocol struct {
						Enum []string `json:"enum"`
					} `json:"protocol"`
				} `json:"properties"`
			} `json:"otel"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(mustRead(t, chartDir+"/values.schema.json"), &schema); err != nil {
		t.Fatal(err)
	}
	protocols := schema.Properties.OTel.Properties.Protocol.Enum
	if len(protocols) == 0 {
		t.Fatal("the schema lists no otel.protocol")
	}
	for _, protocol := range protocols {
		t.Run(protocol+" starts the exporter", func(t *testing.T) {
			// What the chart's ConfigMap sets with otel.enabled (creating the exporter dials nothing).
			t.Setenv("OTEL_SDK_DISABLED", "")
			t.Setenv("OTEL_TRACES_EXPORTER", "")
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.invalid:4317")
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
			tel, err := telemetry.Setup(t.Context(), "cacheside", "test")
			if err != nil {
				t.Fatalf("the service does not start with OTEL_EXPORTER_OTLP_PROTOCOL=%s: %v", protocol, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = tel.Shutdown(ctx) // nothing was recorded, so nothing is sent
			if !tel.TracingEnabled {
				t.Errorf("tracing is off with OTEL_EXPORTER_OTLP_PROTOCOL=%s", protocol)
			}
		})
	}
}
