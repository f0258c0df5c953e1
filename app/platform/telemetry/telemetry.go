// Package telemetry sets up OpenTelemetry from the standard OTEL_* environment variables: traces
// exported over OTLP (gRPC or HTTP) when an endpoint is configured and off at no cost otherwise,
// W3C trace context and baggage propagation, and metrics served in the Prometheus format.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
)

// Telemetry is what Setup installed. Shutdown flushes buffered spans; call it last.
type Telemetry struct {
	TracingEnabled bool
	// Metrics serves every instrument in the Prometheus text format (GET /metrics).
	Metrics  http.Handler
	shutdown []func(context.Context) error
}

// Setup installs the global tracer and meter providers and the propagator. serviceName is the
// default for service.name; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override it (the Helm
// chart puts the pod, namespace and node there from the downward API).
func Setup(ctx context.Context, serviceName, version string) (*Telemetry, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(serviceName), semconv.ServiceVersion(version)),
		resource.WithFromEnv(), // later detectors win: the environment overrides the defaults
		resource.WithTelemetrySDK(),
		resource.WithProcessRuntimeName(), resource.WithProcessRuntimeVersion(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("building telemetry resource: %w", err)
	}
	t := &Telemetry{}

	// Incoming traceparent/baggage are continued even with tracing off, so logs still carry the
	// caller's trace id.
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))

	if tracingConfigured() {
		// autoexport reads OTEL_TRACES_EXPORTER and OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL: OTLP over
		// http/protobuf by default, grpc on request. The SDK reads OTEL_TRACES_SAMPLER(_ARG) and
		// OTEL_BSP_* itself.
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, fmt.Errorf("creating span exporter: %w", err)
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
		otel.SetTracerProvider(tp)
		t.shutdown = append(t.shutdown, tp.Shutdown)
		t.TracingEnabled = true
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("creating prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter), sdkmetric.WithResource(res))
	otel.SetMeterProvider(mp)
	t.shutdown = append(t.shutdown, mp.Shutdown)
	t.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return t, nil
}

// tracingConfigured reports whether the environment asks for traces. Without an endpoint the
// OTLP exporter would retry a collector on localhost forever and log each failure; off is better.
func tracingConfigured() bool {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") {
		return false
	}
	switch exp := os.Getenv("OTEL_TRACES_EXPORTER"); exp {
	case "none":
		return false
	case "", "otlp":
		return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
	default:
		return true // console and other explicit choices need no endpoint
	}
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for _, f := range t.shutdown {
		errs = append(errs, f(ctx))
	}
	return errors.Join(errs...)
}

// ChildSpansOnly wraps a TracerProvider so that its tracers record only inside an existing span.
// Instrumentation that would otherwise start root spans for background work (connection pool
// dials, health pings) then stays out of traces instead of cluttering them with orphans.
func ChildSpansOnly(tp trace.TracerProvider) trace.TracerProvider { return childOnlyProvider{tp: tp} }

type childOnlyProvider struct {
	embedded.TracerProvider
	tp trace.TracerProvider
}

func (p childOnlyProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return childOnlyTracer{t: p.tp.Tracer(name, opts...)}
}

type childOnlyTracer struct {
	embedded.Tracer
	t trace.Tracer
}

func (t childOnlyTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if parent := trace.SpanFromContext(ctx); !parent.SpanContext().IsValid() {
		return ctx, parent // the no-op span: nothing is recorded
	}
	return t.t.Start(ctx, name, opts...)
}
