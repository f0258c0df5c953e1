package main

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// stageTree writes a small tree: a file, an executable, a directory with the sticky bit and a symlink.
func stageTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "etc"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte("nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "app"), []byte("#!/bin/sh\n"), 0o755))
	must(t, os.Mkdir(filepath.Join(dir, "tmp"), 0o755))
	must(t, os.Chmod(filepath.Join(dir, "tmp"), os.ModeSticky|0o777))
	must(t, os.Symlink("app", filepath.Join(dir, "entry")))
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func options(out, layer string) buildOptions {
	return buildOptions{
		Ref: "localhost/standin/test:1.2", Out: out, Layers: []string{layer}, Created: time.Unix(0, 0).UTC(), Arch: "amd64",
		Config: v1.Config{
			User: "65532:65532", Entrypoint: []string{"/app"}, Cmd: []string{"serve"}, WorkingDir: "/",
			Env: []string{"A=b"}, Labels: map[string]string{"org.opencontainers.image.version": "1"},
			ExposedPorts: map[string]struct{}{"8080/tcp": {}}, Volumes: map[string]struct{}{"/tmp": {}},
		},
	}
}

func TestTheArchiveNamesTheImageAsCtrImportReadsIt(t *testing.T) {
	work := t.TempDir()
	out := filepath.Join(work, "image.tar")
	digest, err := build(options(out, stageTree(t)))
	must(t, err)

	dir := filepath.Join(work, "layout")
	must(t, untar(out, dir))
	p, err := layout.FromPath(dir)
	must(t, err)
	idx, err := p.ImageIndex()
	must(t, err)
	im, err := idx.IndexManifest()
	must(t, err)
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json holds %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if got := desc.Annotations[annotationContainerdName]; got != "localhost/standin/test:1.2" {
		t.Errorf("%s = %q, want the full reference (ctr images import names the image with it)", annotationContainerdName, got)
	}
	if got := desc.Annotations[annotationRefName]; got != "1.2" {
		t.Errorf("%s = %q, want the tag", annotationRefName, got)
	}
	if desc.Digest != digest {
		t.Errorf("index.json points at %s, build returned %s", desc.Digest, digest)
	}

	img, err := idx.Image(desc.Digest)
	must(t, err)
	cf, err := img.ConfigFile()
	must(t, err)
	want := options(out, "").Config
	gotJSON, _ := json.Marshal(cf.Config)
	wantJSON, _ := json.Marshal(want)
	if string(gotJSON) != string(wantJSON) {
		t.Errorf("config = %s\nwant %s", gotJSON, wantJSON)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform = %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
}

func TestALayerKeepsModesOwnersAndLinksButNoNamesOrTimes(t *testing.T) {
	staged := stageTree(t)
	scratch := filepath.Join(t.TempDir(), "layer.tar")
	created := time.Unix(1700000000, 0).UTC()
	must(t, tarDir(staged, scratch, created, true))

	f, err := os.Open(scratch)
	must(t, err)
	defer f.Close()
	got := map[string]*tar.Header{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		must(t, err)
		got[hdr.Name] = hdr
	}
	for name, mode := range map[string]int64{"etc/": 0o755, "etc/passwd": 0o644, "app": 0o755, "tmp/": 0o1777} {
		hdr := got[name]
		if hdr == nil {
			t.Errorf("%s is not in the layer (entries: %v)", name, keys(got))
			continue
		}
		if hdr.Mode&0o7777 != mode {
			t.Errorf("%s has mode %o, want %o", name, hdr.Mode&0o7777, mode)
		}
		if hdr.Uname != "" || hdr.Gname != "" {
			t.Errorf("%s carries owner names %q/%q from the staging host", name, hdr.Uname, hdr.Gname)
		}
		if !hdr.ModTime.Equal(created) {
			t.Errorf("%s has time %v, want %v", name, hdr.ModTime, created)
		}
	}
	if hdr := got["entry"]; hdr == nil || hdr.Typeflag != tar.TypeSymlink || hdr.Linkname != "app" {
		t.Errorf("entry is not a symlink to app: %+v", hdr)
	}
}

func TestTheSameInputsGiveTheSameDigest(t *testing.T) {
	staged := stageTree(t)
	work := t.TempDir()
	first, err := build(options(filepath.Join(work, "a.tar"), staged))
	must(t, err)
	// Later file times on the staging host must not matter: layers carry the fixed creation time.
	later := time.Now().Add(time.Hour)
	must(t, os.Chtimes(filepath.Join(staged, "app"), later, later))
	second, err := build(options(filepath.Join(work, "b.tar"), staged))
	must(t, err)
	if first != second {
		t.Errorf("two builds of the same inputs: %s and %s", first, second)
	}

	changed := options(filepath.Join(work, "c.tar"), staged)
	changed.Config.Labels = map[string]string{"org.opencontainers.image.version": "2"}
	third, err := build(changed)
	must(t, err)
	if third == first {
		t.Errorf("a changed label kept the digest %s", first)
	}
}

func keys(m map[string]*tar.Header) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return strings.Join(ks, " ")
}
