package chart_test

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

const repoRoot = "../.."

// instruction is one Dockerfile instruction, continuation lines joined and comments dropped.
type instruction struct {
	Keyword string // upper case
	Args    string
	Line    int
}

// stage is a FROM and the instructions under it.
type stage struct {
	Name  string
	From  string
	Instr []instruction
}

func parseDockerfile(t *testing.T, src string) []stage {
	t.Helper()
	var stages []stage
	var cur strings.Builder
	start := 0
	flush := func() {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return
		}
		kw, args, _ := strings.Cut(text, " ")
		in := instruction{Keyword: strings.ToUpper(kw), Args: strings.TrimSpace(args), Line: start}
		if in.Keyword == "FROM" {
			fields := strings.Fields(in.Args)
			fields = slices.DeleteFunc(fields, func(f string) bool { return strings.HasPrefix(f, "--") })
			st := stage{From: fields[0]}
			if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
				st.Name = fields[2]
			}
			stages = append(stages, st)
			return
		}
		if len(stages) == 0 {
			if in.Keyword != "ARG" {
				t.Fatalf("line %d: %s before the first FROM", in.Line, in.Keyword)
			}
			return
		}
		stages[len(stages)-1].Instr = append(stages[len(stages)-1].Instr, in)
	}
	for i, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || trimmed == "" {
			continue // comment lines are dropped, even inside a continuation
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if cont, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(cont + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	return stages
}

// buildCommand returns the shell command of the RUN between the cacheside:go-build markers.
func buildCommand(t *testing.T, src string) string {
	t.Helper()
	_, rest, ok := strings.Cut(src, "# cacheside:go-build:begin\n")
	block, _, ok2 := strings.Cut(rest, "# cacheside:go-build:end")
	if !ok || !ok2 {
		t.Fatal("the Dockerfile lacks the # cacheside:go-build:begin / :end markers around its go build")
	}
	st := parseDockerfile(t, "FROM scratch\n"+block)
	if len(st[0].Instr) != 1 || st[0].Instr[0].Keyword != "RUN" {
		t.Fatalf("want exactly one RUN between the markers, got %+v", st[0].Instr)
	}
	// Drop RUN's own flags (--mount=…): BuildKit's, not the shell's.
	fields := strings.Fields(st[0].Instr[0].Args)
	i := slices.IndexFunc(fields, func(f string) bool { return !strings.HasPrefix(f, "--") })
	return strings.Join(fields[i:], " ")
}

func TestTheDockerfileBuildsAStaticStampedBinary(t *testing.T) {
	src := string(mustRead(t, filepath.Join(repoRoot, "Dockerfile")))
	cmd := buildCommand(t, src)

	t.Run("the build command has the flags the image needs", func(t *testing.T) {
		for _, want := range []string{
			"CGO_ENABLED=0",
			"go build -trimpath",
			`-ldflags "-s -w -X github.com/cacheside/cacheside/app/buildinfo.Version=${VERSION} -X github.com/cacheside/cacheside/app/buildinfo.Commit=${COMMIT}"`,
			"-o /out/cacheside ./app",
		} {
			if !strings.Contains(cmd, want) {
				t.Errorf("the build command lacks %q:\n%s", want, cmd)
			}
		}
	})

	// The build context is what .dockerignore lets through; the build stage sees what its COPYs take from it.
	work := t.TempDir()
	ctx := filepath.Join(work, "context")
	copyContext(t, repoRoot, ctx)
	stages := parseDockerfile(t, src)
	build := stages[slices.IndexFunc(stages, func(s stage) bool { return s.Name == "build" })]
	srcDir := filepath.Join(work, "src")
	for _, in := range build.Instr {
		if in.Keyword == "COPY" {
			copyInstruction(t, in, ctx, srcDir)
		}
	}

	const version, commit = "v0.0.0-dockerfile-test", "0123456789abcdef0123456789abcdef01234567"
	out := filepath.Join(work, "out", "cacheside")
	if strings.Count(cmd, "/out/cacheside") != 1 {
		t.Fatalf("want one /out/cacheside in %q", cmd)
	}
	run := exec.Command("sh", "-c", strings.Replace(cmd, "/out/cacheside", out, 1))
	run.Dir = srcDir
	// BuildKit passes ARGs to RUN as environment variables.
	run.Env = append(os.Environ(), "VERSION="+version, "COMMIT="+commit, "TARGETOS="+runtime.GOOS, "TARGETARCH="+runtime.GOARCH)
	if b, err := run.CombinedOutput(); err != nil {
		t.Fatalf("the Dockerfile's build command failed in a copy of its build context: %v\n%s", err, b)
	}

	t.Run("the binary is statically linked", func(t *testing.T) {
		f, err := elf.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Error("the binary has an ELF interpreter: it is dynamically linked and cannot run on distroless/static")
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("the binary needs shared libraries %v", libs)
		}
	})

	t.Run("the binary records the build settings and the stamped version", func(t *testing.T) {
		info, err := buildinfo.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{"CGO_ENABLED": "", "-trimpath": ""}
		for _, s := range info.Settings {
			if _, ok := got[s.Key]; ok {
				got[s.Key] = s.Value
			}
		}
		want := map[string]string{"CGO_ENABLED": "0", "-trimpath": "true"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("build settings (-want +got):\n%s", diff)
		}
		b := mustRead(t, out)
		// -X on a misspelt package path is silently ignored: the strings prove the stamp landed.
		for _, s := range []string{version, commit} {
			if !bytes.Contains(b, []byte(s)) {
				t.Errorf("the binary does not contain the stamped %q", s)
			}
		}
	})

	t.Run("the binary holds no path of the machine that built it", func(t *testing.T) {
		b := mustRead(t, out)
		abs, _ := filepath.Abs(repoRoot)
		home, _ := os.UserHomeDir()
		paths := []string{abs, work, goEnv(t, "GOROOT"), goEnv(t, "GOMODCACHE"), goEnv(t, "GOCACHE")}
		if home != "" && home != "/" {
			paths = append(paths, home+"/")
		}
		for _, p := range paths {
			if p != "" && bytes.Contains(b, []byte(p)) {
				t.Errorf("the binary contains %s: -trimpath is missing or ineffective", p)
			}
		}
	})

	t.Run("the binary runs its env subcommand with no configuration", func(t *testing.T) {
		env := exec.Command(out, "env")
		env.Env = []string{} // distroless: nothing set but what the image sets
		b, err := env.CombinedOutput()
		if err != nil {
			t.Fatalf("cacheside env: %v\n%s", err, b)
		}
		for _, want := range []string{"DATABASE_URL", "REDIS_URL", "SHUTDOWN_TIMEOUT"} {
			if !bytes.Contains(b, []byte(want)) {
				t.Errorf("cacheside env does not list %s:\n%s", want, b)
			}
		}
	})
}

func TestTheDockerfileMatchesTheModuleAndTheChart(t *testing.T) {
	stages := parseDockerfile(t, string(mustRead(t, filepath.Join(repoRoot, "Dockerfile"))))
	byName := map[string]stage{}
	for _, s := range stages {
		byName[s.Name] = s
	}

	t.Run("the builder's Go is go.mod's, so no toolchain is downloaded during the build", func(t *testing.T) {
		goLine := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(mustRead(t, filepath.Join(repoRoot, "go.mod")))
		if goLine == nil {
			t.Fatal("go.mod has no go line")
		}
		want := "golang:" + string(goLine[1]) + "-bookworm"
		if got := byName["build"].From; got != want {
			t.Errorf("build stage is FROM %s, want %s", got, want)
		}
	})

	t.Run("the default target is the distroless runtime running serve as 65532 on 8080", func(t *testing.T) {
		last := stages[len(stages)-1]
		if last.From != "gcr.io/distroless/static-debian12:nonroot" {
			t.Errorf("the last stage is FROM %s", last.From)
		}
		got := map[string]string{}
		for _, in := range last.Instr {
			if in.Keyword != "LABEL" && in.Keyword != "ARG" {
				got[in.Keyword] = in.Args
			}
		}
		want := map[string]string{
			"COPY":       "--from=build /out/cacheside /cacheside",
			"USER":       "65532:65532",
			"EXPOSE":     "8080",
			"ENTRYPOINT": `["/cacheside"]`,
			"CMD":        `["serve"]`,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("runtime stage (-want +got):\n%s", diff)
		}
	})

	t.Run("the dev target runs the host-built binary from build/ as 65532", func(t *testing.T) {
		dev, ok := byName["dev"]
		if !ok {
			t.Fatal("no dev stage")
		}
		var copies []string
		user := ""
		for _, in := range dev.Instr {
			switch in.Keyword {
			case "COPY":
				copies = append(copies, in.Args)
			case "USER":
				user = in.Args
			}
		}
		if diff := cmp.Diff([]string{"--chown=65532:65532 build/cacheside /app/cacheside"}, copies); diff != "" {
			t.Errorf("dev stage COPY (-want +got):\n%s", diff)
		}
		if user != "65532:65532" {
			t.Errorf("dev stage USER %q, want 65532:65532", user)
		}
		pm := dockerignore(t)
		for path, wantExcluded := range map[string]bool{"build/cacheside": false, "build/other": true, ".run/bin/helm": true, ".git/HEAD": true, "charts/cacheside/values.yaml": true} {
			if excluded, _ := pm.MatchesOrParentMatches(path); excluded != wantExcluded {
				t.Errorf(".dockerignore: %s excluded = %v, want %v", path, excluded, wantExcluded)
			}
		}
	})

	t.Run("the chart runs the image as the user the image declares", func(t *testing.T) {
		d := appDeployment(t, render(t, ""))
		if got := *d.Spec.Template.Spec.SecurityContext.RunAsUser; got != 65532 {
			t.Errorf("chart runAsUser = %d, the image's USER is 65532", got)
		}
	})
}

// dockerignore reads the repository's .dockerignore the way BuildKit does.
func dockerignore(t *testing.T) *patternmatcher.PatternMatcher {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return pm
}

// copyContext copies the files of root that .dockerignore lets into the build context.
func copyContext(t *testing.T, root, dst string) {
	t.Helper()
	pm := dockerignore(t)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile, e.g. by a test server under .run
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		excluded, err := pm.MatchesOrParentMatches(rel)
		if err != nil {
			return err
		}
		switch {
		case d.IsDir() && excluded && !mayReinclude(pm, rel):
			return fs.SkipDir
		case excluded || d.IsDir() || !d.Type().IsRegular():
			return nil
		}
		return copyFile(path, filepath.Join(dst, rel))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// mayReinclude reports whether an exception pattern (!…) could let something under the excluded dir back in.
func mayReinclude(pm *patternmatcher.PatternMatcher, dir string) bool {
	for _, p := range pm.Patterns() {
		if p.Exclusion() && (strings.ContainsAny(p.String(), "*?[") || strings.HasPrefix(p.String(), dir+"/")) {
			return true
		}
	}
	return false
}

// copyInstruction applies a build-stage COPY (sources relative to the context, destination relative to
// WORKDIR /src), the only forms the Dockerfile uses: files into a directory, and a directory into one.
func copyInstruction(t *testing.T, in instruction, ctx, workdir string) {
	t.Helper()
	fields := strings.Fields(in.Args)
	if strings.HasPrefix(fields[0], "--") {
		t.Fatalf("line %d: COPY flags are not modelled by this test: %s", in.Line, in.Args)
	}
	srcs, dest := fields[:len(fields)-1], fields[len(fields)-1]
	for _, s := range srcs {
		from := filepath.Join(ctx, s)
		info, err := os.Stat(from)
		if err != nil {
			t.Fatalf("line %d: COPY %s: not in the build context (.dockerignore?): %v", in.Line, s, err)
		}
		to := filepath.Join(workdir, dest)
		if !info.IsDir() {
			to = filepath.Join(to, filepath.Base(s))
			if err := copyFile(from, to); err != nil {
				t.Fatal(err)
			}
			continue
		}
		err = filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(from, path)
			return copyFile(path, filepath.Join(to, rel))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

func goEnv(t *testing.T, name string) string {
	t.Helper()
	b, err := exec.Command("go", "env", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
