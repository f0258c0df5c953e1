package chart_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// reuseValues matches Helm's --reuse-values flag as a command would use it: not --reset-then-reuse-values,
// and not the flag named in backquotes in prose (which explains why not to use it).
var reuseValues = regexp.MustCompile("(^|[^-a-z`])--reuse-values\\b")

// --reuse-values takes the previous release's computed values as they are, so a key that a newer chart adds
// to values.yaml has no value at all on that upgrade (a nil where a template expects a default). The repo
// must never recommend it: --reset-then-reuse-values (Helm 3.14+) or -f files instead.
func TestNothingRecommendsReuseValues(t *testing.T) {
	t.Run("the rendered NOTES", func(t *testing.T) {
		for _, file := range []string{"", "external-values.yaml"} {
			notes := render(t, file).Notes
			if loc := reuseValues.FindStringIndex(notes); loc != nil {
				t.Errorf("%q: NOTES recommend --reuse-values: %q", file, notes[max(0, loc[0]-60):loc[1]])
			}
		}
	})
	t.Run("the repository's docs, scripts, workflows and templates", func(t *testing.T) {
		root := "../.."
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				switch d.Name() {
				case ".git", ".run", "build", "node_modules", "tilt_modules":
					return filepath.SkipDir
				}
				return nil
			}
			switch filepath.Ext(path) {
			case ".md", ".gotmpl", ".txt", ".tpl", ".yaml", ".yml", ".sh", ".json", "":
			default:
				return nil
			}
			if strings.HasSuffix(path, "_test.go") {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for i, line := range strings.Split(string(b), "\n") {
				if reuseValues.MatchString(line) {
					rel, _ := filepath.Rel(root, path)
					t.Errorf("%s:%d recommends --reuse-values (use --reset-then-reuse-values or -f files): %s", rel, i+1, strings.TrimSpace(line))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
