package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"go.starlark.net/syntax"
)

// checkLiterals looks at every string literal of the Tiltfile, and at the words of the ones that are shell
// commands, for paths into the repository: a word whose first element is an entry of the repository root
// (or that starts with ./) must exist. Build outputs (build/, .run/) are exempt; globs are checked up to
// their first wildcard.
func (c *checker) checkLiterals(f *syntax.File) {
	syntax.Walk(f, func(n syntax.Node) bool {
		lit, ok := n.(*syntax.Literal)
		if !ok || lit.Token != syntax.STRING {
			return true
		}
		s, _ := lit.Value.(string)
		for _, word := range shellWords.Split(s, -1) {
			c.checkPathWord(lit.TokenPos, word)
		}
		return true
	})
}

var (
	shellWords = regexp.MustCompile(`[\s;&|()<>='"` + "`" + `]+`)
	pathWord   = regexp.MustCompile(`^(\./)?[A-Za-z0-9_.*-]+(/[A-Za-z0-9_.*-]*)*$`)
)

func (c *checker) checkPathWord(pos syntax.Position, word string) {
	word = strings.TrimRight(word, ",:")
	if word == "" || strings.Contains(word, "://") || !pathWord.MatchString(word) {
		return // empty, a URL or ext://, or has %s, {{ }}, $ …: not a literal path
	}
	if !strings.Contains(word, "/") {
		return // a bare name is a path only as an argument, checked where it is one
	}
	clean := strings.TrimPrefix(word, "./")
	first := strings.SplitN(clean, "/", 2)[0]
	if !strings.HasPrefix(word, "./") {
		if _, err := os.Stat(filepath.Join(c.root, first)); err != nil {
			return // helm.sh/helm/…, deploy/name, statefulset/name: not a repository path
		}
	}
	if c.generated(clean) {
		return
	}
	// Check up to the first wildcard.
	var kept []string
	for _, seg := range strings.Split(clean, "/") {
		if strings.ContainsAny(seg, "*?") {
			break
		}
		kept = append(kept, seg)
	}
	if len(kept) == 0 {
		return
	}
	if _, err := os.Stat(filepath.Join(c.root, filepath.Join(kept...))); err != nil {
		c.problem(pos, "path %q does not exist in the repository", word)
	}
}
