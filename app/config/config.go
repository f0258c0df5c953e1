// Package config reads the service's settings from the environment: one struct, defaults and
// requirements in its tags, every bad variable reported at once, and secrets masked when printed.
package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"net/url"
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// Config is every setting the service reads. The envconfig tag is the variable's exact name (no
// prefix), so the names are greppable and the Helm chart's test can check its env against Vars().
// OTEL_* variables are not here: the OpenTelemetry SDK reads them itself.
type Config struct {
	HTTPAddr              string        `envconfig:"HTTP_ADDR" default:":8080" desc:"address the HTTP server listens on"`
	AdminAddr             string        `envconfig:"ADMIN_ADDR" default:":9090" desc:"address the admin server listens on: GET /metrics (Prometheus), kept off the port clients reach"`
	HTTPReadHeaderTimeout time.Duration `envconfig:"HTTP_READ_HEADER_TIMEOUT" default:"5s" desc:"time allowed to read request headers (slowloris guard)"`
	HTTPReadTimeout       time.Duration `envconfig:"HTTP_READ_TIMEOUT" default:"15s" desc:"time allowed to read a whole request"`
	HTTPWriteTimeout      time.Duration `envconfig:"HTTP_WRITE_TIMEOUT" default:"30s" desc:"time allowed to write a response"`
	HTTPIdleTimeout       time.Duration `envconfig:"HTTP_IDLE_TIMEOUT" default:"120s" desc:"keep-alive idle timeout"`
	HTTPMaxBodyBytes      int64         `envconfig:"HTTP_MAX_BODY_BYTES" default:"1048576" desc:"largest request body accepted (413 above)"`
	HTTPRetryAfter        time.Duration `envconfig:"HTTP_RETRY_AFTER" default:"5s" desc:"Retry-After suggested to clients (whole seconds) when the database is unavailable or the replica sheds load"`
	HTTPTrustedProxies    []string      `envconfig:"HTTP_TRUSTED_PROXIES" default:"" desc:"comma-separated addresses or CIDRs of the proxies (Ingress controller, load balancer) whose X-Forwarded-For names the client for rate limits; empty: the peer's address is the client"`
	HTTPMaxInFlight       int           `envconfig:"HTTP_MAX_IN_FLIGHT" default:"256" desc:"requests a replica serves at once (probes and /metrics not counted); past it a request is answered 503 with Retry-After at once; 0: no bound"`

	RateLimitEnabled         bool `envconfig:"RATE_LIMIT_ENABLED" default:"true" desc:"hold each client (address) to the read and write budgets below, across replicas through Redis (in process per replica while Redis is unusable); 429 past them"`
	RateLimitReadsPerSecond  int  `envconfig:"RATE_LIMIT_READS_PER_SECOND" default:"50" desc:"reads (GET, HEAD, OPTIONS) a client may make per second, sustained"`
	RateLimitReadBurst       int  `envconfig:"RATE_LIMIT_READ_BURST" default:"100" desc:"reads a client may make at once above the sustained rate"`
	RateLimitWritesPerSecond int  `envconfig:"RATE_LIMIT_WRITES_PER_SECOND" default:"10" desc:"writes (every other method) a client may make per second, sustained"`
	RateLimitWriteBurst      int  `envconfig:"RATE_LIMIT_WRITE_BURST" default:"20" desc:"writes a client may make at once above the sustained rate"`

	APITokens       Tokens `envconfig:"API_TOKENS" desc:"bearer tokens that POST, PUT and DELETE require (Authorization: Bearer <token>), comma-separated: several at once let a token be rotated without downtime; required unless API_AUTH_DISABLED is true"`
	APIAuthReads    bool   `envconfig:"API_AUTH_READS" default:"false" desc:"require a token for reads too (GET /sample, /cache, /samples/:id); probes never need one; /metrics is on the admin port"`
	APIAuthDisabled bool   `envconfig:"API_AUTH_DISABLED" default:"false" desc:"local development only: serve writes without authentication (a warning is logged at every start)"`

	HTTPCacheMaxAge               time.Duration `envconfig:"HTTP_CACHE_MAX_AGE" default:"0s" desc:"Cache-Control max-age of GET /cache (whole seconds): how long browsers and CDNs may reuse the list without asking; above 0 they may show it older than a write that has returned"`
	HTTPCacheStaleWhileRevalidate time.Duration `envconfig:"HTTP_CACHE_STALE_WHILE_REVALIDATE" default:"0s" desc:"Cache-Control stale-while-revalidate of GET /cache (RFC 5861, whole seconds); above 0 an HTTP cache may answer with the list it holds while it revalidates"`
	HTTPCacheStaleIfError         time.Duration `envconfig:"HTTP_CACHE_STALE_IF_ERROR" default:"0s" desc:"Cache-Control stale-if-error of GET /cache (RFC 5861, whole seconds); above 0 an HTTP cache may answer with the list it holds when the service fails, which may predate a write (the service itself never does)"`

	DatabaseURL            string        `envconfig:"DATABASE_URL" required:"true" desc:"Postgres URL, postgres://user:pass@host:5432/db?sslmode=…"`
	DatabaseMaxConns       int32         `envconfig:"DATABASE_MAX_CONNS" default:"10" desc:"largest Postgres pool size"`
	DatabaseTimeout        time.Duration `envconfig:"DATABASE_TIMEOUT" default:"5s" desc:"deadline for one Postgres query, also set as the connections' statement_timeout (seeding and migrations lift it)"`
	DatabaseConnectTimeout time.Duration `envconfig:"DATABASE_CONNECT_TIMEOUT" default:"5s" desc:"deadline for opening a Postgres connection"`
	MigrateOnStart         bool          `envconfig:"DATABASE_MIGRATE_ON_START" default:"false" desc:"apply schema migrations before serving"`

	RedisURL      string        `envconfig:"REDIS_URL" required:"true" desc:"Redis URL, redis:// or rediss://user:pass@host:6379/0 (Sentinel and Cluster: see README)"`
	RedisMode     string        `envconfig:"REDIS_MODE" default:"standalone" desc:"standalone, sentinel or cluster"`
	RedisTimeout  time.Duration `envconfig:"REDIS_TIMEOUT" default:"250ms" desc:"deadline for one Redis command, dial included; past it the request is served from Postgres"`
	RedisPoolSize int           `envconfig:"REDIS_POOL_SIZE" default:"0" desc:"Redis connections per node (0: go-redis default, 10 per CPU)"`

	CacheTTL              time.Duration `envconfig:"CACHE_TTL" default:"300s" desc:"how long a cached view lives"`
	CacheTTLJitter        float64       `envconfig:"CACHE_TTL_JITTER" default:"0.1" desc:"TTLs are stretched by a random fraction up to this, so keys written together expire apart"`
	CacheNegativeTTL      time.Duration `envconfig:"CACHE_NEGATIVE_TTL" default:"30s" desc:"how long a missing item is remembered as missing"`
	CacheKeyPrefix        string        `envconfig:"CACHE_KEY_PREFIX" default:"cacheside" desc:"prefix of every Redis key (lets services or tests share one Redis)"`
	CacheBreakerFailures  uint32        `envconfig:"CACHE_BREAKER_FAILURES" default:"3" desc:"consecutive Redis failures that make the service skip the cache"`
	CacheBreakerCooldown  time.Duration `envconfig:"CACHE_BREAKER_COOLDOWN" default:"5s" desc:"how long the cache is skipped before Redis is tried again"`
	CacheStaleGrace       time.Duration `envconfig:"CACHE_STALE_GRACE" default:"1h" desc:"how long a cached view is kept in Redis past its TTL, to be served (X-Cache: STALE) when Postgres is unavailable and no write has retired it; 0: not kept"`
	CacheEarlyRefreshBeta float64       `envconfig:"CACHE_EARLY_REFRESH_BETA" default:"1" desc:"early refresh (XFetch): a hit reloads its view in the background when -beta x load time x ln(rand) reaches the time it has left, so a view read steadily never expires into a miss; above 1 earlier, 0: off"`

	CacheInvalidationTimeout  time.Duration `envconfig:"CACHE_INVALIDATION_TIMEOUT" default:"1s" desc:"how long a write keeps retrying to retire what it changed in Redis before it returns with that deferred (this replica then bypasses those keys and retries in the background); 0: one attempt"`
	CacheInvalidationReplicas int           `envconfig:"CACHE_INVALIDATION_REPLICAS" default:"0" desc:"Redis replicas that must acknowledge an invalidation (WAIT) before it counts as delivered, so a failover cannot bring a retired generation back; 0: off"`

	CacheLeases   bool          `envconfig:"CACHE_LEASES" default:"true" desc:"coalesce misses across replicas: before loading, a replica takes a short lease on the key's generation in Redis, and replicas that miss meanwhile wait for its value instead of querying Postgres"`
	CacheLeaseTTL time.Duration `envconfig:"CACHE_LEASE_TTL" default:"0s" desc:"how long a lease lives, i.e. how long a replica that died while loading holds the others up before one takes over; at most DATABASE_TIMEOUT (0: DATABASE_TIMEOUT, which bounds every load)"`

	CacheCompression   string        `envconfig:"CACHE_COMPRESSION" default:"gzip" desc:"how cached bodies are stored and sent to clients that accept it: gzip or none"`
	CacheLocalEnabled  bool          `envconfig:"CACHE_LOCAL_ENABLED" default:"false" desc:"keep an in-process near-cache in front of Redis, invalidated across replicas through Redis pub/sub"`
	CacheLocalTTL      time.Duration `envconfig:"CACHE_LOCAL_TTL" default:"2s" desc:"life of a near-cache entry: the longest another replica can serve a value after a write if an invalidation message is lost"`
	CacheLocalMaxBytes int64         `envconfig:"CACHE_LOCAL_MAX_BYTES" default:"67108864" desc:"memory bound of the near-cache (least recently used entries go first); above 0 when it is on"`

	ReplicationEnabled        bool          `envconfig:"REPLICATION_ENABLED" default:"true" desc:"follow Postgres's logical replication stream and retire the cached views that any writer changed (psql, other services, migrations); needs wal_level=logical and a role with REPLICATION, and without them the service says so and retires only its own writes"`
	ReplicationSlot           string        `envconfig:"REPLICATION_SLOT" default:"" desc:"logical replication slot the cache follows (one per deployment; empty: <CACHE_KEY_PREFIX>_<database>, e.g. cacheside_app)"`
	ReplicationPublication    string        `envconfig:"REPLICATION_PUBLICATION" default:"cacheside" desc:"publication of the cached tables (the migrations create cacheside)"`
	ReplicationStatusInterval time.Duration `envconfig:"REPLICATION_STATUS_INTERVAL" default:"10s" desc:"how often the replication follower reports its position to Postgres (which then frees WAL) and, when not the leader, tries to become it"`

	ShutdownTimeout time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"15s" desc:"time from SIGTERM for in-flight requests to finish and deferred invalidations to be delivered"`
	LogLevel        string        `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	LogFormat       string        `envconfig:"LOG_FORMAT" default:"json" desc:"json or text"`
}

// Tokens are the API's bearer tokens, read from a comma-separated variable (spaces around each
// are dropped, as are empty entries). They print as a count, never as themselves, however the
// configuration is printed.
type Tokens []string

// Decode implements envconfig.Decoder.
func (t *Tokens) Decode(v string) error {
	*t = nil
	for tok := range strings.SplitSeq(v, ",") {
		if tok = strings.TrimSpace(tok); tok != "" {
			*t = append(*t, tok)
		}
	}
	return nil
}

func (t Tokens) String() string { return fmt.Sprintf("(%d tokens withheld)", len(t)) }

// Format prints String for every verb, %#v and %+v too, also as a field of a printed Config.
func (t Tokens) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, t.String()) }

// LogValue keeps the tokens out of slog lines.
func (t Tokens) LogValue() slog.Value { return slog.StringValue(t.String()) }

// MinTokenLength is the shortest token accepted: a token is a password a client sends on every
// write, so it must not be guessable (hack/dev generates 64 hex characters).
const MinTokenLength = 16

// Var describes one environment variable the service reads.
type Var struct {
	Name        string
	Type        string
	Default     string
	Required    bool
	Description string
}

// Vars lists every variable Config reads, in declaration order.
func Vars() []Var {
	t := reflect.TypeFor[Config]()
	vars := make([]Var, 0, t.NumField())
	for f := range t.Fields() {
		vars = append(vars, Var{
			Name:        f.Tag.Get("envconfig"),
			Type:        typeName(f.Type),
			Default:     f.Tag.Get("default"),
			Required:    f.Tag.Get("required") == "true",
			Description: f.Tag.Get("desc"),
		})
	}
	return vars
}

func typeName(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "duration"
	case t.Kind() == reflect.Float64:
		return "float"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "integer"
	case t.Kind() == reflect.Slice:
		return "list"
	default:
		return t.Kind().String()
	}
}

// Load reads Config for serving the API from the environment. Every bad or missing variable is
// reported in the one returned error, not just the first, so an operator fixes them all in one go.
func Load() (Config, error) { return load(true) }

// LoadForCommand reads Config for a one-off command (migrate, seed): every check of Load but the
// API's tokens, which a command that serves no requests has no use for (so the chart's migration
// Job is not handed them).
func LoadForCommand() (Config, error) { return load(false) }

func load(serving bool) (Config, error) {
	var cfg Config
	var problems []string

	// envconfig stops at the first bad field. Processing each field through a one-field struct of
	// the same tag keeps envconfig's own parsing and defaults while collecting every failure.
	dst := reflect.ValueOf(&cfg).Elem()
	failed := map[string]bool{}
	for i := range dst.NumField() {
		f := dst.Type().Field(i)
		one := reflect.New(reflect.StructOf([]reflect.StructField{f}))
		if err := envconfig.Process("", one.Interface()); err != nil {
			problems = append(problems, describe(f, err))
			failed[f.Tag.Get("envconfig")] = true
			continue
		}
		dst.Field(i).Set(one.Elem().Field(0))
	}
	// A variable that did not parse was left zero; its range check would only repeat the news.
	for _, p := range cfg.validate(serving) {
		if name, _, _ := strings.Cut(p, ":"); !failed[name] {
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		return Config{}, &Error{Problems: problems}
	}
	return cfg, nil
}

// describe turns an envconfig error into "NAME: what it expects" without echoing the value,
// which may be a URL holding a password.
func describe(f reflect.StructField, err error) string {
	name := f.Tag.Get("envconfig")
	var perr *envconfig.ParseError
	if errors.As(err, &perr) {
		return fmt.Sprintf("%s: must be a %s (got an unparsable value)", name, expectation(f.Type))
	}
	if strings.Contains(err.Error(), "required") {
		return fmt.Sprintf("%s: is required (%s)", name, f.Tag.Get("desc"))
	}
	return fmt.Sprintf("%s: %v", name, err)
}

func expectation(t reflect.Type) string {
	switch typeName(t) {
	case "duration":
		return "Go duration such as 250ms, 5s or 2m"
	case "integer":
		return "whole number"
	case "float":
		return "decimal number"
	case "bool":
		return "boolean (true or false)"
	default:
		return typeName(t)
	}
}

func (c Config) validate(serving bool) []string {
	var p []string
	if serving {
		p = append(p, c.validateAuth()...)
	}
	positive := func(name string, d time.Duration) {
		if d <= 0 {
			p = append(p, name+": must be a positive duration")
		}
	}
	positive("HTTP_READ_HEADER_TIMEOUT", c.HTTPReadHeaderTimeout)
	positive("HTTP_READ_TIMEOUT", c.HTTPReadTimeout)
	positive("HTTP_WRITE_TIMEOUT", c.HTTPWriteTimeout)
	positive("HTTP_IDLE_TIMEOUT", c.HTTPIdleTimeout)
	positive("HTTP_RETRY_AFTER", c.HTTPRetryAfter)
	positive("DATABASE_TIMEOUT", c.DatabaseTimeout)
	positive("DATABASE_CONNECT_TIMEOUT", c.DatabaseConnectTimeout)
	positive("REDIS_TIMEOUT", c.RedisTimeout)
	positive("CACHE_TTL", c.CacheTTL)
	positive("CACHE_NEGATIVE_TTL", c.CacheNegativeTTL)
	positive("CACHE_BREAKER_COOLDOWN", c.CacheBreakerCooldown)
	positive("CACHE_LOCAL_TTL", c.CacheLocalTTL)
	notNegative := func(name string, d time.Duration) {
		if d < 0 {
			p = append(p, name+": must be 0 or a positive duration")
		}
	}
	notNegative("CACHE_STALE_GRACE", c.CacheStaleGrace)
	notNegative("HTTP_CACHE_MAX_AGE", c.HTTPCacheMaxAge)
	notNegative("HTTP_CACHE_STALE_WHILE_REVALIDATE", c.HTTPCacheStaleWhileRevalidate)
	notNegative("HTTP_CACHE_STALE_IF_ERROR", c.HTTPCacheStaleIfError)
	if c.CacheEarlyRefreshBeta < 0 || math.IsNaN(c.CacheEarlyRefreshBeta) || math.IsInf(c.CacheEarlyRefreshBeta, 0) {
		p = append(p, "CACHE_EARLY_REFRESH_BETA: must be 0 (off) or a positive number")
	}
	positive("SHUTDOWN_TIMEOUT", c.ShutdownTimeout)
	positive("REPLICATION_STATUS_INTERVAL", c.ReplicationStatusInterval)

	if c.HTTPAddr == "" {
		p = append(p, "HTTP_ADDR: must be host:port or :port")
	}
	switch {
	case c.AdminAddr == "":
		p = append(p, "ADMIN_ADDR: must be host:port or :port")
	case c.AdminAddr == c.HTTPAddr:
		p = append(p, "ADMIN_ADDR: must differ from HTTP_ADDR (metrics stay off the port clients reach)")
	}
	if c.HTTPMaxBodyBytes <= 0 {
		p = append(p, "HTTP_MAX_BODY_BYTES: must be a positive number of bytes")
	}
	if c.DatabaseURL == "" {
		p = append(p, "DATABASE_URL: is required and must not be empty")
	} else {
		if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			p = append(p, "DATABASE_URL: must be a postgres:// or postgresql:// URL")
		}
	}
	for _, proxy := range c.HTTPTrustedProxies {
		if _, err := netip.ParsePrefix(proxy); err != nil {
			if _, err := netip.ParseAddr(proxy); err != nil {
				p = append(p, "HTTP_TRUSTED_PROXIES: must be comma-separated IP addresses or CIDRs such as 10.0.0.0/8")
				break
			}
		}
	}
	if c.HTTPMaxInFlight < 0 {
		p = append(p, "HTTP_MAX_IN_FLIGHT: must be 0 (no bound) or more")
	}
	if c.RateLimitEnabled {
		for _, v := range []struct {
			name string
			n    int
		}{
			{"RATE_LIMIT_READS_PER_SECOND", c.RateLimitReadsPerSecond}, {"RATE_LIMIT_READ_BURST", c.RateLimitReadBurst},
			{"RATE_LIMIT_WRITES_PER_SECOND", c.RateLimitWritesPerSecond}, {"RATE_LIMIT_WRITE_BURST", c.RateLimitWriteBurst},
		} {
			if v.n < 1 {
				p = append(p, v.name+": must be at least 1 (RATE_LIMIT_ENABLED=false turns limits off)")
			}
		}
	}
	if c.DatabaseMaxConns < 1 {
		p = append(p, "DATABASE_MAX_CONNS: must be at least 1")
	}
	if c.RedisURL == "" {
		p = append(p, "REDIS_URL: is required and must not be empty")
	} else {
		if u, err := url.Parse(c.RedisURL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
			p = append(p, "REDIS_URL: must be a redis:// or rediss:// URL")
		}
	}
	switch c.RedisMode {
	case "standalone", "sentinel", "cluster":
	default:
		p = append(p, "REDIS_MODE: must be standalone, sentinel or cluster")
	}
	if c.RedisPoolSize < 0 {
		p = append(p, "REDIS_POOL_SIZE: must be 0 or more")
	}
	if c.CacheTTLJitter < 0 || c.CacheTTLJitter > 1 {
		p = append(p, "CACHE_TTL_JITTER: must be between 0 and 1")
	}
	if c.CacheKeyPrefix == "" || strings.ContainsAny(c.CacheKeyPrefix, "{} \t\r\n") {
		p = append(p, "CACHE_KEY_PREFIX: must be non-empty, without spaces or braces")
	}
	switch c.CacheCompression {
	case "gzip", "none":
	default:
		p = append(p, "CACHE_COMPRESSION: must be gzip or none")
	}
	switch {
	case c.CacheLocalMaxBytes < 0:
		p = append(p, "CACHE_LOCAL_MAX_BYTES: must be 0 or more")
	case c.CacheLocalEnabled && c.CacheLocalMaxBytes == 0:
		p = append(p, "CACHE_LOCAL_MAX_BYTES: must be above 0 when CACHE_LOCAL_ENABLED is true")
	}
	if c.CacheInvalidationTimeout < 0 {
		p = append(p, "CACHE_INVALIDATION_TIMEOUT: must be 0 or a positive duration")
	}
	if c.CacheLeaseTTL < 0 || c.CacheLeaseTTL > c.DatabaseTimeout || (c.CacheLeaseTTL > 0 && c.CacheLeaseTTL < time.Millisecond) {
		p = append(p, "CACHE_LEASE_TTL: must be 0 (DATABASE_TIMEOUT) or from 1ms up to DATABASE_TIMEOUT")
	}
	if c.CacheInvalidationReplicas < 0 {
		p = append(p, "CACHE_INVALIDATION_REPLICAS: must be 0 or more")
	}
	if c.ReplicationSlot != "" && !validIdentifier(c.ReplicationSlot) {
		p = append(p, "REPLICATION_SLOT: must be 1 to 63 lower-case letters, digits or underscores")
	}
	if c.ReplicationPublication == "" || len(c.ReplicationPublication) > 63 || strings.ContainsAny(c.ReplicationPublication, "'\"\\ \t\r\n") {
		p = append(p, "REPLICATION_PUBLICATION: must be a publication name of 1 to 63 characters, without quotes or spaces")
	}
	if c.CacheBreakerFailures < 1 {
		p = append(p, "CACHE_BREAKER_FAILURES: must be at least 1")
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		p = append(p, "LOG_LEVEL: must be debug, info, warn or error")
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		p = append(p, "LOG_FORMAT: must be json or text")
	}
	return p
}

// validateAuth refuses to serve writes to anyone: with writes enabled and no token the start-up
// fails, unless API_AUTH_DISABLED says out loud that this is a developer's machine. The tokens are
// never echoed, only their positions.
func (c Config) validateAuth() []string {
	var p []string
	switch {
	case c.APIAuthDisabled && len(c.APITokens) > 0:
		p = append(p, "API_AUTH_DISABLED: is true while API_TOKENS is set: unset one of them (API_AUTH_DISABLED is for local development only)")
	case c.APIAuthDisabled && c.APIAuthReads:
		p = append(p, "API_AUTH_READS: needs tokens, but API_AUTH_DISABLED is true")
	case !c.APIAuthDisabled && len(c.APITokens) == 0:
		p = append(p, "API_TOKENS: is required: set one or more bearer tokens (comma-separated) for POST, PUT and DELETE, or API_AUTH_DISABLED=true on a developer's machine only")
	}
	for i, tok := range c.APITokens {
		if len(tok) < MinTokenLength || !isToken68(tok) {
			p = append(p, fmt.Sprintf("API_TOKENS: token %d of %d must be at least %d characters of A-Z, a-z, 0-9, -._~+/ (a bearer token as RFC 6750 defines it)", i+1, len(c.APITokens), MinTokenLength))
		}
	}
	return p
}

// isToken68 reports whether s can be sent as a bearer token (RFC 6750 section 2.1) as it is: a
// token with a space or a comma in it could never be presented, or never be configured.
func isToken68(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for _, r := range body {
		if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && !strings.ContainsRune("-._~+/", r) {
			return false
		}
	}
	return true
}

// validIdentifier reports whether s is a valid replication slot name: Postgres allows lower-case
// letters, digits and underscores, at most 63 bytes.
func validIdentifier(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '_' {
			return false
		}
	}
	return true
}

// Error lists every configuration problem found by Load.
type Error struct{ Problems []string }

func (e *Error) Error() string {
	return "invalid configuration:\n  " + strings.Join(e.Problems, "\n  ")
}

// Redact returns a URL with its password replaced, safe to log. Input that does not parse is
// withheld entirely rather than risk echoing a secret.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL withheld)"
	}
	return u.Redacted()
}

// LogValue keeps secrets out of logs when the config is logged with slog.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("http_addr", c.HTTPAddr),
		slog.String("admin_addr", c.AdminAddr),
		slog.Any("api_tokens", c.APITokens),
		slog.Bool("api_auth_reads", c.APIAuthReads),
		slog.Bool("api_auth_disabled", c.APIAuthDisabled),
		slog.String("database_url", Redact(c.DatabaseURL)),
		slog.String("redis_url", Redact(c.RedisURL)),
		slog.String("redis_mode", c.RedisMode),
		slog.String("cache_ttl", c.CacheTTL.String()),
		slog.Bool("migrate_on_start", c.MigrateOnStart),
	)
}

// PrintTable writes the table of variables with their defaults, as `cacheside env` shows it.
func PrintTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tTYPE\tDEFAULT\tDESCRIPTION")
	for _, v := range Vars() {
		def := v.Default
		if v.Required {
			def = "(required)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Name, v.Type, def, v.Description)
	}
	fmt.Fprintln(tw, "OTEL_*\t\t\tOpenTelemetry SDK settings (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, …)")
	return tw.Flush()
}
