package httpapi

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/cacheside/cacheside/app/config"
)

// Serve listens on cfg.HTTPAddr and serves h until ctx is cancelled (SIGINT/SIGTERM), then stops
// accepting and lets in-flight requests finish within cfg.ShutdownTimeout. The server's limits
// (slowloris guard included) come from cfg; the benchmark ceiling serves through this too, so it
// measures the same server.
func Serve(ctx context.Context, log *slog.Logger, cfg config.Config, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.HTTPReadHeaderTimeout,
		ReadTimeout:       cfg.HTTPReadTimeout,
		WriteTimeout:      cfg.HTTPWriteTimeout,
		IdleTimeout:       cfg.HTTPIdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.HTTPAddr, err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("serving", "addr", ln.Addr().String())

	select {
	case err := <-served:
		return fmt.Errorf("serving http: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("shutting down: in-flight requests did not finish in %s: %w", cfg.ShutdownTimeout, err)
	}
	log.Info("stopped")
	return nil
}
