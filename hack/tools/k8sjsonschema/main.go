// Command k8sjsonschema writes the JSON schemas kubeconform validates against, offline, from the
// Kubernetes OpenAPI v2 document (api/openapi-spec/swagger.json of the k8s.io/kubernetes module) and
// from CustomResourceDefinition files: one standalone, strict file per kind, named the way kubeconform's
// default schema location template expects ({kind}[-{group}]-{version}.json, lower case).
//
// It does what yannh/kubernetes-json-schema's openapi2jsonschema does: references are kept but resolved
// within the file, objects with declared properties reject unknown ones, and int-or-string and quantity
// fields accept both forms.
//
//	k8sjsonschema -swagger swagger.json [-crd servicemonitors.yaml]... -out dir
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

type crdFlags []string

func (c *crdFlags) String() string     { return strings.Join(*c, ",") }
func (c *crdFlags) Set(v string) error { *c = append(*c, v); return nil }

func main() {
	swagger := flag.String("swagger", "", "Kubernetes OpenAPI v2 document")
	out := flag.String("out", "", "directory to write the schemas into")
	var crds crdFlags
	flag.Var(&crds, "crd", "CustomResourceDefinition YAML file (repeatable)")
	flag.Parse()
	if *swagger == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	n, err := run(*swagger, crds, *out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "k8sjsonschema:", err)
		os.Exit(1)
	}
	fmt.Printf("k8sjsonschema: %d schemas in %s\n", n, *out)
}

type node = map[string]any

func run(swaggerPath string, crds []string, out string) (int, error) {
	b, err := os.ReadFile(swaggerPath)
	if err != nil {
		return 0, err
	}
	var doc struct {
		Definitions map[string]node `json:"definitions"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return 0, fmt.Errorf("%s: %w", swaggerPath, err)
	}
	if len(doc.Definitions) == 0 {
		return 0, fmt.Errorf("%s: no definitions", swaggerPath)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return 0, err
	}

	written := 0
	for name, def := range doc.Definitions {
		gvks, _ := def["x-kubernetes-group-version-kind"].([]any)
		if len(gvks) != 1 {
			continue // not a kind, or an options type shared by many (DeleteOptions…)
		}
		gvk := gvks[0].(node)
		group, version, kind := gvk["group"].(string), gvk["version"].(string), gvk["kind"].(string)

		schema := strict(def).(node)
		defs := node{}
		for dep := range closure(name, doc.Definitions) {
			if dep != name {
				defs[dep] = strict(doc.Definitions[dep])
			}
		}
		if len(defs) > 0 {
			schema["definitions"] = defs
		}
		pinKind(schema, group, version, kind)
		if err := write(out, group, version, kind, schema); err != nil {
			return written, err
		}
		written++
	}

	for _, path := range crds {
		n, err := writeCRD(path, out)
		if err != nil {
			return written, fmt.Errorf("%s: %w", path, err)
		}
		written += n
	}
	return written, nil
}

// closure returns the definitions reachable from name through $ref, name included.
func closure(name string, defs map[string]node) map[string]bool {
	seen := map[string]bool{}
	var visit func(any)
	visit = func(v any) {
		switch v := v.(type) {
		case node:
			if ref, ok := v["$ref"].(string); ok {
				dep := strings.TrimPrefix(ref, "#/definitions/")
				if !seen[dep] {
					seen[dep] = true
					visit(defs[dep])
				}
			}
			for _, x := range v {
				visit(x)
			}
		case []any:
			for _, x := range v {
				visit(x)
			}
		}
	}
	seen[name] = true
	visit(defs[name])
	return seen
}

// strict returns a copy of an OpenAPI schema that rejects unknown properties and accepts what the
// API server accepts for int-or-string and quantity.
func strict(v any) any {
	switch v := v.(type) {
	case node:
		if v["format"] == "int-or-string" || v["x-kubernetes-int-or-string"] == true {
			return node{"oneOf": []any{node{"type": "string"}, node{"type": "integer"}}}
		}
		if ref, _ := v["$ref"].(string); ref == "#/definitions/io.k8s.apimachinery.pkg.api.resource.Quantity" {
			return node{"oneOf": []any{node{"type": "string"}, node{"type": "number"}}}
		}
		out := node{}
		for k, x := range v {
			if k == "x-kubernetes-group-version-kind" {
				continue
			}
			out[k] = strict(x)
		}
		_, hasProps := v["properties"]
		_, hasAdditional := v["additionalProperties"]
		if hasProps && !hasAdditional && v["x-kubernetes-preserve-unknown-fields"] != true {
			out["additionalProperties"] = false
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = strict(x)
		}
		return out
	default:
		return v
	}
}

// pinKind makes apiVersion and kind required and exact, as the API server would.
func pinKind(schema node, group, version, kind string) {
	apiVersion := version
	if group != "" {
		apiVersion = group + "/" + version
	}
	props, _ := schema["properties"].(node)
	if props == nil {
		return
	}
	props["apiVersion"] = node{"type": "string", "enum": []any{apiVersion}}
	props["kind"] = node{"type": "string", "enum": []any{kind}}
}

func writeCRD(path, out string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var crd struct {
		Kind string `json:"kind"`
		Spec struct {
			Group string `json:"group"`
			Names struct {
				Kind string `json:"kind"`
			} `json:"names"`
			Versions []struct {
				Name   string `json:"name"`
				Schema struct {
					OpenAPIV3Schema node `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &crd); err != nil {
		return 0, err
	}
	if crd.Kind != "CustomResourceDefinition" || len(crd.Spec.Versions) == 0 {
		return 0, errors.New("not a CustomResourceDefinition with versions")
	}
	for _, v := range crd.Spec.Versions {
		schema := strict(v.Schema.OpenAPIV3Schema).(node)
		props, _ := schema["properties"].(node)
		if props != nil {
			if _, ok := props["metadata"]; ok {
				props["metadata"] = node{"type": "object"} // ObjectMeta is validated by the API server, not the CRD
			}
		}
		pinKind(schema, crd.Spec.Group, v.Name, crd.Spec.Names.Kind)
		if err := write(out, crd.Spec.Group, v.Name, crd.Spec.Names.Kind, schema); err != nil {
			return 0, err
		}
	}
	return len(crd.Spec.Versions), nil
}

// write names the file the way kubeconform's schema location template does: group's first label.
func write(dir, group, version, kind string, schema node) error {
	name := strings.ToLower(kind)
	if group != "" {
		name += "-" + strings.ToLower(strings.Split(group, ".")[0])
	}
	name += "-" + strings.ToLower(version) + ".json"
	b, err := json.Marshal(schema)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name), b, 0o644)
}
