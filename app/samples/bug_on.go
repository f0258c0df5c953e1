//go:build cacheside_bug_retire_before_commit

package samples

// retireBeforeCommit: see bug_off.go.
const retireBeforeCommit = true
