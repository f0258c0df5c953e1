// Command imagebuild assembles a container image from layers and a config, without a Docker engine or a
// registry, and writes it as an OCI image layout in a tar archive that `ctr images import` reads.
//
//	imagebuild build -ref localhost/standin/pause:3.10 -o pause.tar -user 65535:65535 \
//	    -entrypoint /pause -layer staged-dir/ [-layer rootfs.tar ...]
//	imagebuild inspect pause.tar     print the reference, digests and config of an archive
//
// Each -layer is a directory (its tree becomes one layer: modes and owners as staged, times fixed) or a tar
// file (a rootfs as mmdebstrap writes it), in order, lowest first. The archive's index.json names the image
// with both annotations containerd knows: io.containerd.image.name (the full reference, which `ctr images
// import` uses) and org.opencontainers.image.ref.name (the tag, as the OCI layout spec has it). Times are fixed
// (-created, default SOURCE_DATE_EPOCH or the epoch), so the same inputs give the same digest.
package main

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The annotations on the index.json descriptor that name an image. containerd's importer reads the first;
// the OCI image layout spec defines the second (a tag, or a full reference for tools that accept one).
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = runBuild(os.Args[2:])
	case "inspect":
		if len(os.Args) != 3 {
			usage()
		}
		err = runInspect(os.Args[2], os.Stdout)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: imagebuild build -ref REF -o OUT.tar [-layer DIR|TAR]... [config flags]\n       imagebuild inspect ARCHIVE.tar")
	os.Exit(2)
}

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// buildOptions is everything `build` takes: where to write, what to layer and the image config.
type buildOptions struct {
	Ref     string
	Out     string
	Layers  []string
	Created time.Time
	Arch    string
	Config  v1.Config
}

func runBuild(args []string) error {
	fl := flag.NewFlagSet("build", flag.ContinueOnError)
	var o buildOptions
	var layers, entrypoint, cmd, env, labels, expose, volumes list
	var created string
	fl.StringVar(&o.Ref, "ref", "", "image reference, e.g. localhost/standin/pause:3.10 (required)")
	fl.StringVar(&o.Out, "o", "", "archive to write (required)")
	fl.Var(&layers, "layer", "a directory or a tar file to add as a layer (repeatable, lowest first)")
	fl.StringVar(&created, "created", os.Getenv("SOURCE_DATE_EPOCH"), "creation time: unix seconds or RFC 3339 (default SOURCE_DATE_EPOCH, else 0)")
	fl.StringVar(&o.Arch, "arch", runtime.GOARCH, "architecture of the image")
	fl.StringVar(&o.Config.User, "user", "", "user[:group] the process runs as")
	fl.Var(&entrypoint, "entrypoint", "entrypoint argument (repeatable)")
	fl.Var(&cmd, "cmd", "default argument (repeatable)")
	fl.Var(&env, "env", "KEY=value (repeatable)")
	fl.StringVar(&o.Config.WorkingDir, "workdir", "", "working directory")
	fl.Var(&labels, "label", "key=value (repeatable)")
	fl.Var(&expose, "expose", "port[/proto] (repeatable)")
	fl.Var(&volumes, "volume", "path declared a volume (repeatable)")
	fl.StringVar(&o.Config.StopSignal, "stop-signal", "", "signal that stops the container, e.g. SIGINT")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if o.Ref == "" || o.Out == "" || fl.NArg() != 0 {
		return errors.New("build needs -ref and -o, and takes no positional arguments")
	}
	var err error
	if o.Created, err = parseTime(created); err != nil {
		return err
	}
	o.Layers = layers
	o.Config.Entrypoint = entrypoint
	o.Config.Cmd = cmd
	o.Config.Env = env
	if len(labels) > 0 {
		o.Config.Labels = map[string]string{}
		for _, kv := range labels {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("label %q: want key=value", kv)
			}
			o.Config.Labels[k] = v
		}
	}
	if len(expose) > 0 {
		o.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range expose {
			if !strings.Contains(p, "/") {
				p += "/tcp"
			}
			o.Config.ExposedPorts[p] = struct{}{}
		}
	}
	if len(volumes) > 0 {
		o.Config.Volumes = map[string]struct{}{}
		for _, v := range volumes {
			o.Config.Volumes[v] = struct{}{}
		}
	}
	digest, err := build(o)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", o.Out, o.Ref, digest)
	return nil
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("created %q: want unix seconds or RFC 3339", s)
	}
	return t.UTC(), nil
}

// build writes the image o describes to o.Out and returns its manifest digest.
func build(o buildOptions) (v1.Hash, error) {
	ref, err := name.NewTag(o.Ref, name.StrictValidation)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("reference %q: %w (want repository:tag)", o.Ref, err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(o.Out), ".imagebuild-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(tmp)

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for i, src := range o.Layers {
		layer, err := openLayer(src, filepath.Join(tmp, fmt.Sprintf("layer-%d.tar", i)), o.Created)
		if err != nil {
			return v1.Hash{}, fmt.Errorf("layer %s: %w", src, err)
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:     layer,
			MediaType: types.OCILayer,
			History:   v1.History{Created: v1.Time{Time: o.Created}, CreatedBy: "imagebuild: " + filepath.Base(src)},
		})
		if err != nil {
			return v1.Hash{}, fmt.Errorf("layer %s: %w", src, err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = o.Arch
	cf.Config = o.Config
	cf.Created = v1.Time{Time: o.Created}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return v1.Hash{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, err
	}

	dir := filepath.Join(tmp, "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		annotationContainerdName: ref.Name(),
		annotationRefName:        ref.TagStr(),
	})); err != nil {
		return v1.Hash{}, fmt.Errorf("writing the layout: %w", err)
	}
	part := o.Out + ".part"
	if err := tarDir(dir, part, o.Created, false); err != nil {
		return v1.Hash{}, err
	}
	return digest, os.Rename(part, o.Out)
}

// openLayer returns src as a layer: a tar file as it is, a directory as a tar written to scratch first.
func openLayer(src, scratch string, created time.Time) (v1.Layer, error) {
	st, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		if err := tarDir(src, scratch, created, true); err != nil {
			return nil, err
		}
		src = scratch
	}
	// Compressed once and kept: otherwise the digest and the write would each gzip the whole layer.
	return tarball.LayerFromFile(src, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
}

// tarDir writes the tree under dir to the tar file out in lexical order, every time set to created. As a
// layer (keepOwners), entries keep their modes and numeric owners and carry no user or group names, so the
// staging host's /etc/passwd never leaks in; the layout archive itself is written root-owned, 0644 and 0755.
func tarDir(dir, out string, created time.Time, keepOwners bool) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	walkErr := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		} else if !info.Mode().IsRegular() && !info.IsDir() {
			return fmt.Errorf("%s: only files, directories and symlinks can be staged", path)
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = created, time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if !keepOwners {
			hdr.Uid, hdr.Gid = 0, 0
			hdr.Mode = 0o644
			if info.IsDir() {
				hdr.Mode = 0o755
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	err = errors.Join(walkErr, tw.Close(), f.Close())
	if err != nil {
		os.Remove(out)
	}
	return err
}

// runInspect prints what an archive holds: per image, its name annotations, digest, layers and config.
func runInspect(archive string, w io.Writer) error {
	tmp, err := os.MkdirTemp("", "imagebuild-inspect-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := untar(archive, tmp); err != nil {
		return err
	}
	p, err := layout.FromPath(tmp)
	if err != nil {
		return err
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	type report struct {
		Annotations map[string]string `json:"annotations"`
		Digest      string            `json:"digest"`
		MediaType   types.MediaType   `json:"mediaType"`
		Layers      []string          `json:"layers"`
		Size        int64             `json:"compressedSize"`
		Config      *v1.ConfigFile    `json:"config"`
	}
	var out []report
	for _, desc := range im.Manifests {
		img, err := idx.Image(desc.Digest)
		if err != nil {
			return err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return err
		}
		ls, err := img.Layers()
		if err != nil {
			return err
		}
		r := report{Annotations: desc.Annotations, Digest: desc.Digest.String(), MediaType: desc.MediaType, Config: cf}
		for _, l := range ls {
			d, err := l.Digest()
			if err != nil {
				return err
			}
			sz, err := l.Size()
			if err != nil {
				return err
			}
			mt, _ := l.MediaType()
			r.Layers = append(r.Layers, fmt.Sprintf("%s %s %d", d, mt, sz))
			r.Size += sz
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// untar extracts the regular files and directories of archive under dir (an OCI layout holds nothing else).
func untar(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.Clean("/"+hdr.Name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			out, err := os.Create(target)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if err := errors.Join(err, out.Close()); err != nil {
				return err
			}
		}
	}
}
