// Command helmcheck lints and renders the jobpipe chart with Helm's own code, at the version
// pinned in go.mod, and decodes every rendered object strictly against the API types the
// cluster will read it with: Kubernetes (k8s.io/api), KEDA (ScaledObject,
// TriggerAuthentication) and the Prometheus operator (ServiceMonitor, PrometheusRule).
//
// It exists because no Kubernetes cluster runs on the project's machines: an unknown or
// misspelt field, which an API server would reject (or silently drop), must fail a test here.
//
//	helmcheck helm lint CHART -f VALUES          # any helm command, as Helm's CLI runs it
//	helmcheck helm template NAME CHART -f VALUES
//	helmcheck decode [--keda-scalers JSON] [--json-out OUT] FILE...
//	                                             # strict decoding of multi-document YAML; OUT:
//	                                             # the objects as one JSON array, for tests
//
// KEDA's trigger metadata and authentication parameters are string maps in its Go types, so
// with --keda-scalers (schema/generated/scalers-schema.json of the pinned KEDA module) each
// trigger's metadata keys, allowed values and each TriggerAuthentication parameter are checked
// against the scaler's own parameter list too.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	helmcmd "helm.sh/helm/v4/pkg/cmd"
	"helm.sh/helm/v4/pkg/kube"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// scalers: KEDA's parameters of each scaler type, by name (nil: not checked).
var scalers map[string]map[string]scalerParameter

type scalerParameter struct {
	Name          string   `json:"name"`
	Metadata      bool     `json:"metadataVariableReadable"`
	Env           bool     `json:"envVariableReadable"`
	Auth          bool     `json:"triggerAuthenticationVariableReadable"`
	AllowedValues []string `json:"allowedValue"`
}

func loadScalers(path string) (map[string]map[string]scalerParameter, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var schema struct {
		Scalers []struct {
			Type       string            `json:"type"`
			Parameters []scalerParameter `json:"parameters"`
		} `json:"scalers"`
	}
	if err := yaml.Unmarshal(raw, &schema); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	byType := map[string]map[string]scalerParameter{}
	for _, scaler := range schema.Scalers {
		byType[scaler.Type] = map[string]scalerParameter{}
		for _, parameter := range scaler.Parameters {
			byType[scaler.Type][parameter.Name] = parameter
		}
	}
	if len(byType) == 0 {
		return nil, fmt.Errorf("%s: no scaler", path)
	}
	return byType, nil
}

// authParameters: every parameter a TriggerAuthentication may set for some scaler.
func authParameter(name string) bool {
	for _, parameters := range scalers {
		if parameter, ok := parameters[name]; ok && parameter.Auth {
			return true
		}
	}
	return false
}

func checkKeda(obj runtime.Object) string {
	switch typed := obj.(type) {
	case *kedav1alpha1.ScaledObject:
		for _, trigger := range typed.Spec.Triggers {
			parameters, ok := scalers[trigger.Type]
			if !ok {
				return fmt.Sprintf("trigger type %q is not a KEDA scaler", trigger.Type)
			}
			for key, value := range trigger.Metadata {
				parameter, ok := parameters[key]
				if base, fromEnv := strings.CutSuffix(key, "FromEnv"); !ok && fromEnv {
					if parameter, ok = parameters[base]; ok && !parameter.Env {
						ok = false
					}
				} else if ok && !parameter.Metadata {
					return fmt.Sprintf("trigger %s: %q is read from a TriggerAuthentication, not metadata", trigger.Type, key)
				}
				if !ok {
					return fmt.Sprintf("trigger %s: unknown metadata %q", trigger.Type, key)
				}
				if len(parameter.AllowedValues) > 0 && !contains(parameter.AllowedValues, value) {
					return fmt.Sprintf("trigger %s: %s=%q is not one of %v", trigger.Type, key, value, parameter.AllowedValues)
				}
			}
		}
	case *kedav1alpha1.TriggerAuthentication:
		var names []string
		for _, ref := range typed.Spec.SecretTargetRef {
			names = append(names, ref.Parameter)
		}
		for _, ref := range typed.Spec.ConfigMapTargetRef {
			names = append(names, ref.Parameter)
		}
		for _, name := range names {
			if !authParameter(name) {
				return fmt.Sprintf("parameter %q is not one any KEDA scaler reads from a TriggerAuthentication", name)
			}
		}
	}
	return ""
}

func contains(values []string, value string) bool {
	for _, allowed := range values {
		if allowed == value {
			return true
		}
	}
	return false
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: helmcheck helm ARGS... | helmcheck decode FILE...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "helm":
		os.Exit(runHelm(os.Args[2:]))
	case "decode":
		os.Exit(runDecode(os.Args[2:]))
	default:
		fmt.Fprintf(os.Stderr, "helmcheck: unknown command %q (helm, decode)\n", os.Args[1])
		os.Exit(2)
	}
}

// runHelm runs Helm's CLI in this process, as cmd/helm's main does.
func runHelm(args []string) int {
	kube.ManagedFieldsManager = "helm"
	cmd, err := helmcmd.NewRootCmd(os.Stdout, args, helmcmd.SetupLogging)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helm:", err)
		return 1
	}
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		var cerr helmcmd.CommandError
		if errors.As(err, &cerr) {
			return cerr.ExitCode
		}
		return 1
	}
	return 0
}

func newScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme, kedav1alpha1.AddToScheme, monitoringv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	return scheme, nil
}

func runDecode(args []string) int {
	scheme, err := newScheme()
	if err != nil {
		fmt.Fprintln(os.Stderr, "decode:", err)
		return 1
	}
	var files []string
	jsonOut := ""
	for i := 0; i < len(args); i++ {
		if args[i] == "--json-out" && i+1 < len(args) {
			jsonOut = args[i+1]
			i++
			continue
		}
		if args[i] == "--keda-scalers" && i+1 < len(args) {
			if scalers, err = loadScalers(args[i+1]); err != nil {
				fmt.Fprintln(os.Stderr, "decode:", err)
				return 1
			}
			i++
			continue
		}
		files = append(files, args[i])
	}
	failed, objects := 0, 0
	var decoded []json.RawMessage
	for _, file := range files {
		docs, problems := decodeFile(scheme, file)
		objects += len(docs)
		decoded = append(decoded, docs...)
		for _, problem := range problems {
			fmt.Fprintf(os.Stderr, "%s: %s\n", file, problem)
			failed++
		}
	}
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "decode: %d problem(s) in %d object(s)\n", failed, objects)
		return 1
	}
	if objects == 0 {
		fmt.Fprintln(os.Stderr, "decode: no object found")
		return 1
	}
	if jsonOut != "" {
		all, err := json.Marshal(decoded)
		if err == nil {
			err = os.WriteFile(jsonOut, all, 0o644)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "decode:", err)
			return 1
		}
	}
	fmt.Printf("decode: %d object(s) decoded strictly, no unknown field\n", objects)
	return 0
}

// decodeFile decodes every document of a multi-document YAML file into the Go type its
// apiVersion and kind name, refusing unknown and duplicate fields.
func decodeFile(scheme *runtime.Scheme, file string) ([]json.RawMessage, []string) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, []string{err.Error()}
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	var problems []string
	var objects []json.RawMessage
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return objects, append(problems, err.Error())
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		asJSON, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return objects, append(problems, err.Error())
		}
		objects = append(objects, asJSON)
		if problem := decodeObject(scheme, doc); problem != "" {
			problems = append(problems, problem)
		}
	}
	return objects, problems
}

func decodeObject(scheme *runtime.Scheme, doc []byte) string {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return fmt.Sprintf("not YAML: %v", err)
	}
	name := fmt.Sprintf("%s %s/%s", head.APIVersion, head.Kind, head.Metadata.Name)
	gv, err := schema.ParseGroupVersion(head.APIVersion)
	if err != nil || head.Kind == "" {
		return fmt.Sprintf("%s: no apiVersion/kind", name)
	}
	obj, err := scheme.New(gv.WithKind(head.Kind))
	if err != nil {
		return fmt.Sprintf("%s: a kind no known API has (%v)", name, err)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return fmt.Sprintf("%s: %v", name, err)
	}
	if scalers != nil {
		if problem := checkKeda(obj); problem != "" {
			return fmt.Sprintf("%s: %s", name, problem)
		}
	}
	return ""
}

func stripComments(doc []byte) []byte {
	var kept []string
	for _, line := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			kept = append(kept, line)
		}
	}
	return []byte(strings.Join(kept, "\n"))
}
