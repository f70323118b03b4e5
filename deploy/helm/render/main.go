// A minimal Helm-compatible renderer, for checking deploy/helm/herald where the helm binary
// cannot be installed (it is not in the registries this project's CI reaches). It implements
// what the chart uses: Go templates with sprig, `include`, `toYaml`, `fail`, `required`,
// `.Values` (values.yaml deep-merged with `--set a.b=c`), `.Chart` and `.Release`.
// Real deployments use `helm install`; deploy/helm/check.sh uses this.
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: render CHART_DIR [--set key=value]...")
		os.Exit(2)
	}
	dir := os.Args[1]
	kindsOnly := false
	values := map[string]interface{}{}
	must(readYAML(filepath.Join(dir, "values.yaml"), &values))
	for i := 2; i < len(os.Args); i++ {
		if os.Args[i] == "--kinds" {
			kindsOnly = true
			continue
		}
		if os.Args[i] != "--set" || i+1 >= len(os.Args) {
			fail("unknown argument " + os.Args[i])
		}
		i++
		kv := strings.SplitN(os.Args[i], "=", 2)
		if len(kv) != 2 {
			fail("--set wants key=value: " + os.Args[i])
		}
		set(values, strings.Split(kv[0], "."), parseScalar(kv[1]))
	}
	chart := map[string]interface{}{}
	must(readYAML(filepath.Join(dir, "Chart.yaml"), &chart))
	ctx := map[string]interface{}{
		"Values":  values,
		"Chart":   map[string]interface{}{"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
		"Release": map[string]interface{}{"Name": "herald", "Namespace": "default", "Service": "Helm"},
	}
	root := template.New("chart")
	funcs := sprig.TxtFuncMap()
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var b bytes.Buffer
		err := root.ExecuteTemplate(&b, name, data)
		return b.String(), err
	}
	funcs["toYaml"] = func(v interface{}) string {
		out, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(out), "\n")
	}
	funcs["fail"] = func(msg string) (string, error) { return "", fmt.Errorf("%s", msg) }
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	root.Funcs(funcs)
	files, _ := filepath.Glob(filepath.Join(dir, "templates", "*"))
	sort.Strings(files)
	for _, f := range files {
		text, err := os.ReadFile(f)
		must(err)
		_, err = root.New(filepath.Base(f)).Parse(string(text))
		must(err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		if strings.HasPrefix(name, "_") {
			continue
		}
		var b bytes.Buffer
		if err := root.ExecuteTemplate(&b, name, ctx); err != nil {
			fail(err.Error())
		}
		if strings.TrimSpace(b.String()) == "" {
			continue
		}
		out := strings.TrimSpace(b.String())
		// Every document must be valid YAML with a kind and a name.
		dec := yaml.NewDecoder(strings.NewReader(out))
		for {
			var doc map[string]interface{}
			if err := dec.Decode(&doc); err != nil {
				if err.Error() == "EOF" {
					break
				}
				fail(name + ": invalid YAML: " + err.Error())
			}
			if doc == nil {
				continue
			}
			meta, _ := doc["metadata"].(map[string]interface{})
			if doc["kind"] == nil || doc["apiVersion"] == nil || meta == nil || meta["name"] == nil {
				fail(name + ": a document without apiVersion, kind or metadata.name")
			}
			if kindsOnly {
				fmt.Printf("%s %s\n", doc["kind"], meta["name"])
			}
		}
		if !kindsOnly {
			fmt.Printf("---\n# Source: herald/templates/%s\n%s\n", name, out)
		}
	}
}

func readYAML(path string, into interface{}) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return yaml.Unmarshal(b, into)
}

func set(m map[string]interface{}, path []string, v interface{}) {
	for _, k := range path[:len(path)-1] {
		next, ok := m[k].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[k] = next
		}
		m = next
	}
	m[path[len(path)-1]] = v
}

func parseScalar(s string) interface{} {
	if n, err := strconv.Atoi(s); err == nil {
		return n
	}
	if b, err := strconv.ParseBool(s); err == nil {
		return b
	}
	return s
}

func must(err error) {
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "render: "+msg)
	os.Exit(1)
}
