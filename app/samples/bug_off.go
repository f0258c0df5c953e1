//go:build !cacheside_bug_retire_before_commit

package samples

// retireBeforeCommit restores, only in a binary built with the tag
// cacheside_bug_retire_before_commit, the textbook mistake of retiring cached views before the
// write commits: a read in between caches the old row again under the new generation. It exists
// so the soak can prove its checker catches a real bug (hack/soak); a constant, so the
// production binary carries no trace of it.
const retireBeforeCommit = false
