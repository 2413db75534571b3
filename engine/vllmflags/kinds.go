package vllmflags

import "strings"

// storeTrue are flags that take no value although they have no --no- twin
// (argparse's store_true), across the extracted versions.
var storeTrue = map[string]bool{
	"--help":                          true,
	"--headless":                      true,
	"--grpc":                          true,
	"--disable-log-stats":             true,
	"--aggregate-engine-logging":      true,
	"--disable-mm-preprocessor-cache": true,
	"--enable-multimodal-encoder-data-parallel": true,
}

// multi are flags that take one or more values (argparse's nargs='+'):
// vLLM gives every list-typed argument that shape.
var multi = map[string]bool{
	"--served-model-name":       true,
	"--api-key":                 true,
	"--lora-modules":            true,
	"--allowed-origins":         true,
	"--allowed-methods":         true,
	"--allowed-headers":         true,
	"--allowed-media-domains":   true,
	"--cudagraph-capture-sizes": true,
	"--cuda-graph-sizes":        true,
	"--collect-detailed-traces": true,
	"--logits-processors":       true,
	"--ignore-patterns":         true,
}

// aliases maps vLLM's short option strings to the long flag they stand for.
var aliases = map[string]string{
	"-h":   "--help",
	"-q":   "--quantization",
	"-tp":  "--tensor-parallel-size",
	"-pp":  "--pipeline-parallel-size",
	"-dp":  "--data-parallel-size",
	"-dpn": "--data-parallel-rank",
	"-dpr": "--data-parallel-start-rank",
	"-dpl": "--data-parallel-size-local",
	"-dpa": "--data-parallel-address",
	"-dpp": "--data-parallel-rpc-port",
	"-dpb": "--data-parallel-backend",
	"-dph": "--data-parallel-hybrid-lb",
	"-dpe": "--data-parallel-external-lb",
	"-dcp": "--decode-context-parallel-size",
	"-pcp": "--prefill-context-parallel-size",
	"-ep":  "--enable-expert-parallel",
	"-cc":  "--compilation-config",
	"-ac":  "--attention-config",
	"-asc": "--api-server-count",
	"-n":   "--nnodes",
	"-r":   "--node-rank",
}

// Canonical returns the long flag a short alias stands for (for example
// "-tp" → "--tensor-parallel-size"), so that a parser can key values by one
// name; any other flag is returned unchanged.
func (s *Set) Canonical(flag string) string {
	name, _, _ := strings.Cut(flag, "=")
	if long, ok := aliases[name]; ok && s.flags[long] {
		return long
	}
	return name
}

// Aliases lists the short option strings of flag (a long flag) that the set
// accepts, so that error messages can name an argument the way argparse
// does ("--tensor-parallel-size/-tp").
func (s *Set) Aliases(flag string) []string {
	var out []string
	for short, long := range aliases {
		if long == flag && s.flags[short] {
			out = append(out, short)
		}
	}
	return out
}

// Boolean reports whether flag takes no value: a --no- form, a flag that has
// a --no- twin in the set (argparse's BooleanOptionalAction), or one of
// vLLM's store_true flags. A parser needs this to know whether the next
// argument belongs to the flag.
func (s *Set) Boolean(flag string) bool {
	name := s.Canonical(flag)
	if !s.flags[name] {
		return false
	}
	if storeTrue[name] {
		return true
	}
	if strings.HasPrefix(name, "--no-") {
		return true
	}
	return strings.HasPrefix(name, "--") && s.flags["--no-"+name[2:]]
}

// Multi reports whether flag takes one or more values (argparse's
// nargs='+'), such as --served-model-name a b: a parser must keep taking
// values until the next option.
func (s *Set) Multi(flag string) bool {
	name := s.Canonical(flag)
	return s.flags[name] && multi[name]
}
