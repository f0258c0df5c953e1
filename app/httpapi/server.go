package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// ServerOptions are the HTTP servers' addresses and limits.
type ServerOptions struct {
	Addr              string
	AdminAddr         string        // where the admin handler listens, when there is one
	ReadHeaderTimeout time.Duration // the slowloris guard
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	ShutdownTimeout   time.Duration // how long in-flight requests get once ctx is cancelled
}

// NewAdmin returns the admin port's handler: GET (and HEAD) /metrics, nothing else. It is a
// separate server so that a Service or Ingress for clients can leave it out altogether.
func NewAdmin(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics) // a GET pattern serves HEAD too
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		mux.ServeHTTP(w, r)
	})
}

// Serve listens on o.Addr for h and, when admin is not nil, on o.AdminAddr for admin, and serves
// both until ctx is cancelled (SIGINT/SIGTERM); then both stop accepting and let in-flight
// requests finish within o.ShutdownTimeout. Both listen before either serves, so a port that is
// taken fails the start. The benchmark ceiling serves through this too, so it measures the same
// server.
func Serve(ctx context.Context, log *slog.Logger, o ServerOptions, h, admin http.Handler) error {
	type server struct {
		name string
		srv  *http.Server
		ln   net.Listener
	}
	var servers []server
	listen := func(name, addr string, h http.Handler) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listening on %s for the %s server: %w", addr, name, err)
		}
		servers = append(servers, server{name, &http.Server{
			Handler:           h,
			ReadHeaderTimeout: o.ReadHeaderTimeout,
			ReadTimeout:       o.ReadTimeout,
			WriteTimeout:      o.WriteTimeout,
			IdleTimeout:       o.IdleTimeout,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}, ln})
		return nil
	}
	err := listen("api", o.Addr, h)
	if err == nil && admin != nil {
		err = listen("admin", o.AdminAddr, admin)
	}
	if err != nil {
		for _, s := range servers {
			_ = s.ln.Close()
		}
		return err
	}

	served := make(chan error, len(servers))
	for _, s := range servers {
		go func() {
			if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
				served <- fmt.Errorf("serving %s http: %w", s.name, err)
			}
		}()
		log.Info("serving", "server", s.name, "addr", s.ln.Addr().String())
	}

	var failed error
	select {
	case failed = <-served:
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", o.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.ShutdownTimeout)
	defer cancel()
	// Both at once, within the one budget.
	shut := make(chan error, len(servers))
	for _, s := range servers {
		go func() {
			if err := s.srv.Shutdown(sctx); err != nil {
				_ = s.srv.Close()
				shut <- fmt.Errorf("shutting down the %s server: in-flight requests did not finish in %s: %w", s.name, o.ShutdownTimeout, err)
				return
			}
			shut <- nil
		}()
	}
	errs := []error{failed}
	for range servers {
		errs = append(errs, <-shut)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}
