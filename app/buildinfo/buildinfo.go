// Package buildinfo holds the version and commit stamped into the binary at build time.
package buildinfo

import "runtime/debug"

// Set with -ldflags "-X github.com/cacheside/cacheside/app/buildinfo.Version=… -X …Commit=…".
var (
	Version = "dev"
	Commit  = ""
)

// CommitOrVCS returns the stamped commit, else the one the Go toolchain recorded, else "unknown".
func CommitOrVCS() string {
	if Commit != "" {
		return Commit
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}
