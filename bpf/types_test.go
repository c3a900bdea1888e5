package bpf

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// fnNames is a hand-kept copy of enum fn in kvh.bpf.c, indexed by the fn an
// event carries (from 1): it must name the same functions in the same order,
// or events are reported under another function's name.
func TestFnNamesMatchBPFEnum(t *testing.T) {
	src, err := os.ReadFile("kvh.bpf.c")
	if err != nil {
		t.Fatal(err)
	}
	enum := regexp.MustCompile(`(?s)\benum fn \{(.*?)\};`).FindSubmatch(src)
	if enum == nil {
		t.Fatal("kvh.bpf.c has no enum fn { ... };")
	}
	entry := regexp.MustCompile(`^FN_(\w+)(?:\s*=\s*(\w+))?$`)
	var names []string
	for i, item := range strings.Split(string(enum[1]), ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		m := entry.FindStringSubmatch(item)
		if m == nil {
			t.Fatalf("enum fn entry %q is not FN_<name> [= value]", item)
		}
		// The loader indexes fnNames by value-1: the values must run 1, 2, ...
		switch {
		case i == 0 && m[2] != "1":
			t.Fatalf("enum fn starts with %s = %q, want = 1", m[1], m[2])
		case i > 0 && m[2] != "":
			t.Fatalf("enum fn sets %s = %s: fnNames assumes consecutive values", m[1], m[2])
		}
		names = append(names, m[1])
	}
	if !slices.Equal(names, fnNames) {
		t.Fatalf("enum fn in kvh.bpf.c and fnNames differ:\n  C:  %q\n  Go: %q", names, fnNames)
	}
}
