package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"go.starlark.net/starlark"
	"go.yaml.in/yaml/v3"
)

// decodeYAMLDocs splits a YAML stream into its non-empty documents.
func decodeYAMLDocs(text string) ([]any, error) {
	dec := yaml.NewDecoder(strings.NewReader(text))
	var docs []any
	for {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

// toStarlark converts decoded YAML into Starlark values, as Tilt's decode_yaml_stream does.
func toStarlark(v any) (starlark.Value, error) {
	switch v := v.(type) {
	case nil:
		return starlark.None, nil
	case bool:
		return starlark.Bool(v), nil
	case int:
		return starlark.MakeInt(v), nil
	case uint64:
		return starlark.MakeUint64(v), nil
	case float64:
		return starlark.Float(v), nil
	case string:
		return starlark.String(v), nil
	case []any:
		list := make([]starlark.Value, len(v))
		for i, e := range v {
			sv, err := toStarlark(e)
			if err != nil {
				return nil, err
			}
			list[i] = sv
		}
		return starlark.NewList(list), nil
	case map[string]any:
		d := starlark.NewDict(len(v))
		for k, e := range v {
			sv, err := toStarlark(e)
			if err != nil {
				return nil, err
			}
			if err := d.SetKey(starlark.String(k), sv); err != nil {
				return nil, err
			}
		}
		return d, nil
	default:
		return nil, fmt.Errorf("YAML value of type %T is not supported", v)
	}
}

// parseObjects reads the Kubernetes objects of a YAML stream: identity, and what resource assembly needs.
func parseObjects(text, origin string) ([]*object, error) {
	docs, err := decodeYAMLDocs(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", origin, err)
	}
	var objs []*object
	for _, d := range docs {
		m, ok := d.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: a document is not a mapping", origin)
		}
		o := &object{
			apiVersion: str(m, "apiVersion"),
			kind:       str(m, "kind"),
			name:       str(m, "metadata", "name"),
			namespace:  str(m, "metadata", "namespace"),
			origin:     origin,
		}
		if o.kind == "" || o.name == "" {
			return nil, fmt.Errorf("%s: an object without kind or metadata.name", origin)
		}
		var podSpec, podMeta map[string]any
		switch strings.ToLower(o.kind) {
		case "pod":
			podSpec, podMeta = mapAt(m, "spec"), mapAt(m, "metadata")
		case "cronjob":
			podSpec, podMeta = mapAt(m, "spec", "jobTemplate", "spec", "template", "spec"), mapAt(m, "spec", "jobTemplate", "spec", "template", "metadata")
		case "service":
			o.selector = stringMap(mapAt(m, "spec", "selector"))
		default:
			if workloadKinds[strings.ToLower(o.kind)] {
				podSpec, podMeta = mapAt(m, "spec", "template", "spec"), mapAt(m, "spec", "template", "metadata")
			}
		}
		if podSpec != nil {
			o.podLabels = stringMap(mapAt(podMeta, "labels"))
			for _, key := range []string{"initContainers", "containers"} {
				list, _ := podSpec[key].([]any)
				for _, ctr := range list {
					if cm, ok := ctr.(map[string]any); ok {
						o.images = append(o.images, str(cm, "image"))
					}
				}
			}
		}
		objs = append(objs, o)
	}
	return objs, nil
}

// setNamespace puts namespace on every object that has none but Namespaces, as Tilt's helm() does.
func setNamespace(text, namespace string) (string, error) {
	docs, err := decodeYAMLDocs(text)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	for _, d := range docs {
		m, ok := d.(map[string]any)
		if ok && str(m, "kind") != "Namespace" && str(m, "metadata", "namespace") == "" {
			if meta := mapAt(m, "metadata"); meta != nil {
				meta["namespace"] = namespace
			}
		}
		if err := enc.Encode(d); err != nil {
			return "", err
		}
	}
	if err := enc.Close(); err != nil {
		return "", err
	}
	return out.String(), nil
}

func mapAt(m map[string]any, path ...string) map[string]any {
	for _, p := range path {
		if m == nil {
			return nil
		}
		m, _ = m[p].(map[string]any)
	}
	return m
}

func str(m map[string]any, path ...string) string {
	if len(path) == 0 {
		return ""
	}
	parent := mapAt(m, path[:len(path)-1]...)
	if parent == nil {
		return ""
	}
	s, _ := parent[path[len(path)-1]].(string)
	return s
}

func stringMap(m map[string]any) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = fmt.Sprint(v)
	}
	return out
}
